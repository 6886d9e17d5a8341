#!/usr/bin/env bash
# The NEON kernels' correctness proof on an x86 machine: cross-compiles ggml (from the pinned llama-cpp-python sdist)
# and libturbosparse for aarch64 with Debian's cross compiler, then runs tests/native/kernel_check.c under
# qemu-aarch64 twice: on a CPU with the dot product extension (-cpu max: the NEON_DOTPROD and NEON kernels) and on
# one without (-cpu cortex-a53: the plain NEON kernels). Exits non-zero on any kernel outside its error bound.
# Not part of the default test run: the first run took 38 minutes on the shared 2-core machine (load ~11: a 10-minute
# sdist download, 20 minutes of ggml cross-build), later runs only the two emulated checks (2-6 minutes each).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$SECONDS

llama_version=0.3.36
cache="${TURBOSPARSE_CACHE:-$HOME/.cache/turbosparse}/neon"
jobs=${JOBS:-2}
mkdir -p "$cache"

# --- tools: Debian's aarch64 cross compiler and user-mode qemu -------------------------------------------------
missing=()
for tool in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu aarch64-linux-gnu-g++:g++-aarch64-linux-gnu \
            qemu-aarch64:qemu-user cmake:cmake; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test_neon: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

# --- ggml from the llama-cpp-python sdist this project pins ----------------------------------------------------
sdist="$cache/llama_cpp_python-$llama_version.tar.gz"
if [ ! -f "$sdist" ]; then
    echo "test_neon: downloading the llama-cpp-python $llama_version sdist" >&2
    rm -rf "$cache/download"
    python3 -m pip download -q "llama-cpp-python==$llama_version" --no-deps --no-binary :all: -d "$cache/download"
    mv "$cache/download/llama_cpp_python-$llama_version.tar.gz" "$sdist"
    rmdir "$cache/download"
fi
src="$cache/llama_cpp_python-$llama_version"
if [ ! -f "$src/vendor/llama.cpp/ggml/include/ggml.h" ]; then
    rm -rf "$src" && tar xzf "$sdist" -C "$cache"
fi
llama_src="$src/vendor/llama.cpp"
ggml_build="$cache/build-ggml-$llama_version"
# through llama.cpp's top level (ggml alone wants files the sdist leaves out), building only the ggml libraries;
# Armv8.0 code, so that the same ggml runs on both emulated CPUs
echo "test_neon: cross-compiling ggml (the first time: about 20 minutes on 2 cores)" >&2
cmake -S "$llama_src" -B "$ggml_build" -Wno-dev \
    -DCMAKE_TOOLCHAIN_FILE="$repo/scripts/aarch64-toolchain.cmake" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a -DGGML_OPENMP=OFF -DGGML_LLAMAFILE=OFF \
    -DGGML_CCACHE=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF >/dev/null
cmake --build "$ggml_build" -j "$jobs" --target ggml ggml-base ggml-cpu >/dev/null
ggml_lib=$(dirname "$(find "$ggml_build" -name 'libggml-base.so' -print -quit)")
ggml_version=$(sed -n 's/^set(PACKAGE_VERSION "\([0-9.]*\)")/\1/p' "$ggml_build/ggml/ggml-config-version.cmake")

# --- libturbosparse and the kernel check ------------------------------------------------------------------------
echo "test_neon: cross-compiling libturbosparse and tests/native/kernel_check.c" >&2
ts_build="$cache/build-turbosparse"
cmake -S "$repo" -B "$ts_build" -DCMAKE_TOOLCHAIN_FILE="$repo/scripts/aarch64-toolchain.cmake" \
    -DTS_GGML_INCLUDE_DIR="$llama_src/ggml/include" -DTS_GGML_LIB_DIR="$ggml_lib" -DTS_GGML_VERSION="$ggml_version" \
    >/dev/null
cmake --build "$ts_build" -j "$jobs" >/dev/null
aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -Werror -I"$repo/ggml_ops/include" -I"$llama_src/ggml/include" \
    "$repo/tests/native/kernel_check.c" -L"$ts_build" -lturbosparse -L"$ggml_lib" -lggml-base -lm \
    -Wl,-rpath,"$ts_build:$ggml_lib" -o "$ts_build/kernel_check"

# --- run on an emulated CPU with and one without the dot product extension ---------------------------------------
status=0
for cpu in max cortex-a53; do
    echo "== qemu-aarch64 -cpu $cpu"
    log="$ts_build/kernel_check-$cpu.log"
    if ! qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$ts_build/kernel_check" | tee "$log"; then
        status=1
    fi
    # the emulated CPU must have been seen as it is, or the run tested other kernels than claimed
    expected="generic neon neon_dotprod"
    [ "$cpu" = cortex-a53 ] && expected="generic neon"
    if ! grep -qx "instruction sets this CPU runs: $expected" "$log"; then
        echo "test_neon: on -cpu $cpu the library saw other instruction sets than: $expected" >&2
        status=1
    fi
done
echo "test_neon: $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status

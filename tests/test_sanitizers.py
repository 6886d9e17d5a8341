"""The C library under AddressSanitizer and UndefinedBehaviorSanitizer: a sanitized build of libturbosparse
runs the tests that exercise its C code (loader, graph, kernels) in a child pytest."""

from __future__ import annotations

import subprocess
import sys

from sanitized import ROOT, build, environment

SANITIZED_TESTS = [
    "tests/test_model_errors.py",
    "tests/test_split_gguf.py::test_hand_written_splits_load_and_wrong_sets_are_refused_by_name",
    "tests/test_engine_reference.py",
    "tests/test_quantize.py",
    "tests/test_axpy_rows.py",
    "tests/test_dot_rows.py",
    "tests/test_rows_matmul.py",
    "tests/test_split_rows.py",
    "tests/test_sparse_ffn.py",
    "tests/test_ffn_thresholds.py",
    "tests/test_batch_decode.py",
    "tests/test_sliding_window_cache.py",
    "tests/test_seq_state.py",
    "tests/test_flash_attention.py",
    "tests/test_moe_engine.py",
    "tests/test_grouped_ffn.py",
    "tests/test_devices.py::test_the_cpu_is_always_a_device",  # device lookup and the list in its error message
    "tests/test_devices.py::test_an_unknown_device_is_refused_with_the_list",
]


def test_c_code_is_clean_under_asan_and_ubsan() -> None:
    env = environment(build())
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SANITIZED_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " passed" in out.stdout

"""The turbosparse command line, run as users run it."""

from __future__ import annotations

import subprocess
import sys


def turbosparse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300)


def test_run_streams_text_and_prints_timings(smollm2_path) -> None:
    out = turbosparse(
        "run", "-m", str(smollm2_path), "-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is Paris")
    assert "decode: 7 tokens" in out.stderr and "tok/s" in out.stderr


def test_run_chat_with_default_model() -> None:
    out = turbosparse("run", "-m", "default", "--chat", "-p", "Say hello.", "-n", "8", "-s", "1", "-t", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_errors_are_one_line_and_nonzero(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all, just some bytes")
    out = turbosparse("run", "-m", str(bad), "-p", "x")
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"turbosparse run: error: {bad}: not a GGUF file: magic is 'not ', expected 'GGUF' (or PowerInfer 'PWRI')"
    )


def test_help() -> None:
    for args in (["--help"], ["run", "--help"], ["convert", "--help"]):
        out = turbosparse(*args)
        assert out.returncode == 0 and "usage: turbosparse" in out.stdout

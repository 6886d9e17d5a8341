"""ruff keeps the Python code clean and formatted; vermin keeps it within the oldest Python pyproject.toml allows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["python", "predictor_train", "convert", "tests"]


def test_ruff_check_and_format() -> None:
    check = subprocess.run([sys.executable, "-m", "ruff", "check", *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *PATHS], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout


def test_no_feature_newer_than_the_oldest_python_allowed() -> None:
    # `from typing import Self` (3.11) once kept `turbosparse serve` from importing on Python 3.10; vermin has no
    # __main__, so its script beside this interpreter
    oldest = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    out = subprocess.run(
        [Path(sys.executable).with_name("vermin"), f"-t={oldest}-", "--violations", "--eval-annotations", "--no-tips",
         *PATHS, "scripts"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

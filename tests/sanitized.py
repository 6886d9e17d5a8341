"""The ASan/UBSan build of libturbosparse and the environment a child process runs it in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "sanitize"


def runtime(name: str) -> str:
    """Path of a gcc sanitizer runtime (libasan.so, libubsan.so) to LD_PRELOAD into an unsanitized Python."""
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(path):
        raise RuntimeError(f"gcc has no {name}: install the compiler's sanitizer runtimes")
    return path


def build() -> Path:
    """Configures (once) and builds the sanitized library; returns its path."""
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(BUILD), f"-DPython_EXECUTABLE={sys.executable}", "-DTS_SANITIZE=ON",
         "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(BUILD), "-j2"], check=True, capture_output=True)
    return BUILD / "libturbosparse.so"


def environment(lib: Path, *, max_allocation_mb: int | None = None) -> dict[str, str]:
    """os.environ plus what runs `lib` under the sanitizers: the runtimes preloaded, abort on the first report.
    max_allocation_mb: one allocation above it is a report (a size field asking for too much)."""
    asan = "detect_leaks=0:abort_on_error=1"  # the Python interpreter itself is not leak-clean
    if max_allocation_mb is not None:
        asan += f":max_allocation_size_mb={max_allocation_mb}"
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=f"{runtime('libasan.so')}:{runtime('libubsan.so')}",
        ASAN_OPTIONS=asan,
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        TURBOSPARSE_LIB=str(lib),
    )
    return env

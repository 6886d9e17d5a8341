"""What bench reports about the CPU, from /proc/cpuinfo of both kinds the kernels are built for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from turbosparse.bench.runner import code_stamp, cpu_from_cpuinfo, machine_stamp

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx fma f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
"""

AARCH64 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0c
"""


def test_x86_model_and_kernel_flags() -> None:
    assert cpu_from_cpuinfo(X86) == ("AMD EPYC 7B13", "avx2 fma f16c")


def test_x86_family_and_model_follow_the_name() -> None:
    # one virtual machine name, several generations: AMD EPYC family 25 (Zen 3) and 26 (Zen 5) were both seen
    cpuinfo = "cpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512f avx512_vnni\n"
    assert cpu_from_cpuinfo(cpuinfo) == ("AMD EPYC (family 26 model 2)", "avx2 avx512f avx512_vnni")


def test_aarch64_ids_and_dot_product_feature() -> None:
    assert cpu_from_cpuinfo(AARCH64) == ("aarch64 implementer 0x41 part 0xd0c", "asimd asimddp")


def test_this_machine_is_named() -> None:
    stamp = machine_stamp()
    assert stamp["cpu"] and stamp["kernel_isas"]
    # where the sparse rows can sit in huge pages (THP always / madvise) or not
    assert stamp["huge_pages"] in ("always", "madvise", "never", "unavailable")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="no git on this machine")
def test_the_commit_says_when_the_code_differs_from_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # git must not find a repository above tmp_path, nor one named by the environment
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert code_stamp(tmp_path, None) == "unknown"  # no checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "kernel.c").write_text("int a;\n")
    _git(tmp_path, "add", "kernel.c")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "a")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert code_stamp(tmp_path, None) == head
    (tmp_path / "kernel.c").write_text("int b;\n")
    assert code_stamp(tmp_path, None) == f"{head}-dirty"
    assert code_stamp(tmp_path, "/tmp/lib-other.so") == f"{head}-dirty, library /tmp/lib-other.so"

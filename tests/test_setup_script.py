"""scripts/setup.sh, the README's first step, run with a stand-in Python and pip (nothing installed) and with the
tools a Mac has: shasum instead of GNU sha256sum, no tar (macOS's bsdtar refuses GNU tar's --wildcards)."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SDIST_TOP = "llama_cpp_python-0.3.36"
# every command setup.sh runs on the CPU build's path, but sha256sum and tar
MAC_TOOLS = ["bash", "dirname", "find", "sort", "xargs", "cut", "cat", "grep", "uname", "mktemp", "rm", "mv", "ls"]

# stands in for .venv/bin/python: real Python for -c and scripts, pip calls logged and answered
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then
    echo "pip $*" >> "$PIP_LOG"
    case "$3" in
        download) cp "$FAKE_SDIST" "$(echo "$*" | sed 's/.* -d //')"/ ;;
        wheel) w=$(echo "$*" | sed 's/.* -w //') && mkdir -p "$w" && touch "$w"/llama_cpp_python-0.3.36-py3-none.whl ;;
    esac
    exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def sdist_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


CONVERTER_FILES = {
    f"{SDIST_TOP}/vendor/llama.cpp/convert_hf_to_gguf.py": b"# converter\n",
    f"{SDIST_TOP}/vendor/llama.cpp/conversion/__init__.py": b"# conversion\n",
    f"{SDIST_TOP}/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"# gguf\n",
    f"{SDIST_TOP}/vendor/llama.cpp/src/llama.cpp": b"// not the converter\n",
    f"{SDIST_TOP}/vendor/llama.cpp/../../escape.py": b"# outside\n",
}


def unpack(sdist: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """scripts/unpack_llama_converter.py, run as setup.sh runs it."""
    script = ROOT / "scripts" / "unpack_llama_converter.py"
    return subprocess.run([sys.executable, script, sdist, dest], capture_output=True, text=True)


def test_the_converter_is_unpacked_alone_and_safely(tmp_path: Path) -> None:
    sdist = tmp_path / "s.tar.gz"
    sdist.write_bytes(sdist_bytes(CONVERTER_FILES, {f"{SDIST_TOP}/vendor/llama.cpp/conversion/link.py": "/etc/passwd"}))
    dest = tmp_path / "cache" / "converter"
    dest.mkdir(parents=True)
    (dest / "stale.py").write_text("from an older unpack")
    assert unpack(sdist, dest).returncode == 0
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert (dest / "convert_hf_to_gguf.py").read_bytes() == b"# converter\n"
    assert not (tmp_path / "escape.py").exists() and not (tmp_path / "cache" / "converter.tmp").exists()


def test_an_sdist_without_the_converter_is_named(tmp_path: Path) -> None:
    sdist = tmp_path / "other.tar.gz"
    sdist.write_bytes(sdist_bytes({"pkg-1.0/setup.py": b""}))
    out = unpack(sdist, tmp_path / "converter")
    assert out.returncode == 1
    assert re.search(r"other\.tar\.gz: no vendor/llama\.cpp/convert_hf_to_gguf\.py in it", out.stderr)
    assert not (tmp_path / "converter").exists()


def checkout_copy(tmp_path: Path) -> Path:
    """The files setup.sh reads, in a folder of their own (it works in the folder above its own)."""
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "unpack_llama_converter.py"):
        shutil.copy2(ROOT / "scripts" / name, copy / "scripts" / name)
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_python_version_is_checked_before_anything_is_made(tmp_path: Path) -> None:
    oldest = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"sys.version_info < (3, {oldest})" in (ROOT / "scripts" / "setup.sh").read_text()
    copy = checkout_copy(tmp_path)
    old = executable(tmp_path / "python3.9", "#!/bin/sh\necho 3.9.6\nexit 1\n")  # as the check's -c answers
    out = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=copy, env={**os.environ, "PYTHON": str(old)}, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert f"setup: turbosparse needs Python >= 3.{oldest}; {old} is 3.9.6 (name another with PYTHON=" in out.stderr
    assert not (copy / ".venv").exists()


@pytest.mark.skipif(shutil.which("shasum") is None, reason="no shasum here (macOS's stand-in for sha256sum)")
def test_setup_runs_with_a_macs_tools_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    copy = checkout_copy(tmp_path)
    venv_bin = copy / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    executable(venv_bin / "python", FAKE_PYTHON)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in [*MAC_TOOLS, "shasum", "sed", "cp", "mkdir", "touch"]:
        (tools / tool).symlink_to(shutil.which(tool))
    sdist = tmp_path / f"{SDIST_TOP}.tar.gz"
    sdist.write_bytes(sdist_bytes(CONVERTER_FILES))
    cache, log = tmp_path / "cache", tmp_path / "pip.log"
    env = {"PATH": str(tools), "HOME": str(tmp_path), "TURBOSPARSE_CACHE": str(cache), "PIP_LOG": str(log),
           "FAKE_SDIST": str(sdist), "REAL_PYTHON": sys.executable}  # fmt: skip

    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stderr.rstrip().endswith("setup: done")
    assert (cache / "llama-cpp-converter-0.3.36" / "convert_hf_to_gguf.py").read_bytes() == b"# converter\n"
    calls = log.read_text().splitlines()
    assert any(" wheel " in c and "llama-cpp-python==0.3.36" in c for c in calls)
    assert "--no-build-isolation .[train,test,server]" in calls[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", (copy / ".venv" / ".turbosparse-sources").read_text().strip())

    second = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True)
    assert (second.returncode, second.stderr) == (0, "")
    assert log.read_text().splitlines() == calls

"""Unpacks llama.cpp's HF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) from a
llama-cpp-python sdist into a folder, for the tests that compare llama.cpp's conversions with ours
(scripts/setup.sh calls it). Python's tarfile rather than tar: GNU tar needs --wildcards for member patterns,
which macOS's bsdtar refuses.

    python scripts/unpack_llama_converter.py SDIST.tar.gz DEST
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path, PurePosixPath

CONVERTER = "convert_hf_to_gguf.py"
PACKAGES = ("conversion", "gguf-py")  # what the converter imports


def converter_path(member: tarfile.TarInfo) -> PurePosixPath | None:
    """A member's path under vendor/llama.cpp/ when it is part of the converter, else None."""
    parts = PurePosixPath(member.name).parts
    if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or ".." in parts:
        return None
    inside = PurePosixPath(*parts[3:])
    return inside if str(inside) == CONVERTER or inside.parts[0] in PACKAGES else None


def unpack(sdist: Path, dest: Path) -> None:
    """Writes the converter's files to dest (replaced whole: a temporary folder renamed at the end)."""
    partial = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        chosen = [(m, p) for m in tar.getmembers() if m.isfile() and (p := converter_path(m)) is not None]
        if not any(str(p) == CONVERTER for _, p in chosen):
            raise SystemExit(f"{sdist}: no vendor/llama.cpp/{CONVERTER} in it (is it a llama-cpp-python sdist?)")
        for member, inside in chosen:
            target = partial.joinpath(*inside.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help="llama_cpp_python-<version>.tar.gz")
    parser.add_argument("dest", type=Path, help="the folder to write (replaced)")
    args = parser.parse_args(argv)
    unpack(args.sdist, args.dest)


if __name__ == "__main__":
    main()

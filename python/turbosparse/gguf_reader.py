"""gguf-py's GGUFReader (the pinned `gguf` package) for the commands that read a file's tensors in Python (calibrate,
bench, convert's re-quantization), with a clear error where it cannot: llama.cpp's types newer than the package
(the engine itself reads them through its own C reader); and the files of a split model."""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import gguf

from turbosparse.errors import ModelLoadError

_UNKNOWN_TYPE = re.compile(r"(\d+)\)? is not a valid GGMLQuantizationType")


def architecture(reader: gguf.GGUFReader) -> str | None:
    """The file's general.architecture (the prefix of its hyperparameters' keys), None when it has none."""
    field = reader.get_field("general.architecture")
    return None if field is None else str(field.contents())


def file_magic(path: str | os.PathLike[str]) -> bytes:
    """The first four bytes of a regular file (GGUF, PowerInfer's PWRI, ...); b"" for anything else (a FIFO is not
    opened: its open would wait for a writer)."""
    try:
        if not Path(path).is_file():
            return b""
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def read_gguf(path: str | Path, error: type[Exception] = ModelLoadError) -> gguf.GGUFReader:
    """The reader of path; error(why) when it cannot be read."""
    if not Path(path).is_file():  # a FIFO would block the reader; a folder or nothing is said plainly
        raise error(f"{path}: {'not a regular file' if Path(path).exists() else 'no such file'}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # whatever gguf-py trips on in a damaged file: IndexError, struct.error, numpy's errors
        unknown = _UNKNOWN_TYPE.search(str(exc))
        if unknown is not None:
            try:
                package = f"the gguf package {version('gguf')}"
            except PackageNotFoundError:  # gguf-py imported from a source tree
                package = "the gguf package"
            raise error(
                f"{path}: a tensor of ggml type {unknown.group(1)}, newer than {package} "
                "knows: this command cannot read the file (turbosparse run / serve can; llama-quantize can give "
                "its tensors another type)"
            ) from None
        raise error(f"{path}: not a readable GGUF file (damaged or cut short?): {exc}") from None


SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT = "split.count", "split.no", "split.tensors.count"


def _split_key(reader: gguf.GGUFReader, key: str, path: str | Path, error: type[Exception], default: int | None) -> int:
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise error(f"{path}: missing key '{key}' (a split model's file)")
        return default
    value = field.contents()
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{path}: metadata key '{key}' must be an integer, got {value!r}")
    return value


_SPLIT_NAME = re.compile(r"(?P<prefix>.+)-\d{5}-of-(?P<count>\d{5})\.gguf")


def split_file_name(prefix: str, no: int, count: int) -> str:
    """File no (from 1) of a model split into count files, as llama-gguf-split and gguf-py name them."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def split_files_named(path: Path) -> list[Path]:
    """The files there of the split model that path's name says it belongs to (PREFIX-0000k-of-0000N.gguf), path
    among them; [path] for any other name. By name only: nothing is read."""
    named = _SPLIT_NAME.fullmatch(path.name)
    if named is None:
        return [path]
    count = int(named["count"])
    others = [path.with_name(split_file_name(named["prefix"], k, count)) for k in range(1, count + 1)]
    return [path, *(f for f in others if f != path and f.exists())]


def read_splits(path: str | Path, error: type[Exception] = ModelLoadError) -> list[gguf.GGUFReader]:
    """The readers of every file of the model at path: [path's] for a whole file; for the first file of a split model
    (PREFIX-00001-of-0000N.gguf, as llama-gguf-split and gguf-py write them), all N in order, found by that name and
    checked as llama.cpp's loader (and turbosparse's) checks them. Their keys are the first file's; their tensors are
    theirs together."""
    first = read_gguf(path, error)
    count = _split_key(first, SPLIT_COUNT, path, error, default=1)
    if count <= 1:
        return [first]
    no = _split_key(first, SPLIT_NO, path, error, default=None)
    if count > 99999:
        raise error(f"{path}: {SPLIT_COUNT} {count} is out of range")
    if no != 0:
        raise error(
            f"{path}: file {no + 1} of a model split into {count} files ({SPLIT_NO}): load the first, the file named "
            f"...-00001-of-{count:05d}.gguf"
        )
    suffix = split_file_name("", 1, count)
    if len(str(path)) <= len(suffix) or not str(path).endswith(suffix):
        raise error(f"{path}: the first of {count} split files must be named PREFIX{suffix} (the others are found by "
                    "that name, as llama.cpp finds them)")  # fmt: skip
    prefix = str(path)[: -len(suffix)]
    readers, owner = [first], {t.name: str(path) for t in first.tensors}
    for k in range(1, count):
        other = split_file_name(prefix, k + 1, count)
        reader = read_gguf(other, error)
        if (other_no := _split_key(reader, SPLIT_NO, other, error, default=None)) != k:
            raise error(f"{other}: {SPLIT_NO} is {other_no}, expected {k} (file {k + 1} of the {count} split files "
                        f"of {path})")  # fmt: skip
        for t in reader.tensors:
            if t.name in owner:
                raise error(f"{other}: tensor '{t.name}' is in {owner[t.name]} too")
            owner[t.name] = other
        readers.append(reader)
    expected = _split_key(first, SPLIT_TENSORS_COUNT, path, error, default=None)
    if expected != len(owner):
        raise error(f"{path}: {SPLIT_TENSORS_COUNT} is {expected} but the {count} files hold {len(owner)} tensors")
    return readers


def read_model(
    path: str | Path, error: type[Exception] = ModelLoadError
) -> tuple[gguf.GGUFReader, list[gguf.ReaderTensor]]:
    """The reader of the model's (first) file, whose keys are the model's, and the tensors of all its files
    (read_splits)."""
    readers = read_splits(path, error)
    return readers[0], [t for r in readers for t in r.tensors]

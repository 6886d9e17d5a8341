"""Copying a GGUF file's metadata, and a whole file with turbosparse keys added (`turbosparse calibrate`'s output):
every other key as it is, every tensor byte for byte, through the shared atomic writer; a split model's files are
read together and written as one file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from turbosparse import gguf_reader
from turbosparse.constants import KEY_FORMAT_VERSION
from turbosparse.convert.arch.base import ROLE_MATRIX, TensorSpec
from turbosparse.convert.writer import add_turbosparse_keys, write_gguf
from turbosparse.errors import ConvertError
from turbosparse.gguf_reader import SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT, read_model

# written by the writer itself (header counts, architecture, alignment of its own data section), and a split model's
# (its copy is one file)
_WRITER_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.alignment",
                SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS_COUNT)  # fmt: skip


def architecture(reader: gguf.GGUFReader, path: Path) -> str:
    arch = gguf_reader.architecture(reader)
    if arch is None:
        raise ConvertError(f"{path}: missing key 'general.architecture'")
    return arch


def _field_value(field: gguf.ReaderField) -> tuple[Any, gguf.GGUFValueType | None]:
    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], sub  # raw bytes: token texts round-trip exactly
        return field.contents(), sub
    if main == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), None
    return field.contents(), None


def copy_fields(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, skip: Iterable[str] = ()) -> None:
    """Every key of reader except the writer's own and those in skip, with its value type."""
    skipped = set(_WRITER_KEYS) | set(skip)
    for key, field in reader.fields.items():
        if key in skipped:
            continue
        value, sub = _field_value(field)
        writer.add_key_value(key, value, field.types[0], sub_type=sub)


def _raw_loader(tensor: gguf.ReaderTensor):
    def load() -> np.ndarray:
        return np.asarray(tensor.data).view(np.uint8).reshape(-1)

    return load


def copy_with_keys(
    src: Path, out: Path, keys: dict[str, Any], *, drop: Iterable[str] = (), progress: bool = False
) -> Path:
    """out = src with the turbosparse keys `keys` set (added, or replacing the same keys) and the keys in `drop`
    left out (a split src as one file); atomic."""
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise ConvertError(f"{src}: writing into the input file itself")
    reader, tensors = read_model(src, ConvertError)
    arch = architecture(reader, src)
    specs, types = [], []
    for t in tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne -> numpy order
        specs.append(TensorSpec(t.name, shape, ROLE_MATRIX, _raw_loader(t), f"{src}: tensor '{t.name}'", encoded=True))
        types.append(gguf.GGMLQuantizationType(t.tensor_type))

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        copy_fields(reader, writer, skip=(KEY_FORMAT_VERSION, *keys, *drop))
        add_turbosparse_keys(writer, keys)

    return write_gguf(out, specs, types, add_metadata, arch=arch, progress=progress)

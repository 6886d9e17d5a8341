"""Lazy access to a checkpoint's tensors: names and shapes up front, data one tensor at a time.

Safetensors (one file, or shards listed by model.safetensors.index.json): safetensors' own `safe_open` validates
each file's header (offsets, sizes, dtypes) and lists its tensors; the data is read through a read-only
numpy memmap at the header's offsets, because numpy has no bfloat16 and safe_open's numpy backend refuses BF16.
BF16 becomes float32 by widening the 16 bits, exactly. PyTorch .bin checkpoints go through
`torch.load(mmap=True, weights_only=True)` and need torch (the `train` extra).

Every tensor comes out as float32 in numpy orientation (HF's [out, in]); peak memory is about one tensor.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from turbosparse.errors import ConvertError, extra_install

# safetensors dtype name -> (numpy dtype of the stored bits, whether those bits are bfloat16)
_SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, bool]] = {
    "F32": (np.dtype("<f4"), False),
    "F16": (np.dtype("<f2"), False),
    "BF16": (np.dtype("<u2"), True),
    "F64": (np.dtype("<f8"), False),
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: bfloat16 is the top half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class TensorSource(Protocol):
    """What an architecture class reads: tensor names, shapes, and float32 data on demand."""

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def load(self, name: str) -> np.ndarray: ...

    def where(self, name: str) -> Path: ...


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


class SafetensorsSource:
    """Tensors of one or more .safetensors files, opened lazily (header now, data on load)."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._entries: dict[str, _Entry] = {}
        for file in files:
            for name, entry in _read_safetensors_header(file).items():
                if name in self._entries:
                    raise ConvertError(f"{file}: tensor '{name}' is also in {self._entries[name].file}")
                self._entries[name] = entry

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def where(self, name: str) -> Path:
        return self._entries[name].file

    def load(self, name: str) -> np.ndarray:
        e = self._entries[name]
        stored, is_bf16 = _SAFETENSORS_DTYPES[e.dtype]
        count = int(np.prod(e.shape, dtype=np.int64))
        try:
            raw = np.memmap(e.file, dtype=stored, mode="r", offset=e.begin, shape=(count,))
        except (OSError, ValueError) as exc:
            raise ConvertError(f"{e.file}: cannot read tensor '{name}': {exc}") from None
        data = bf16_to_f32(raw) if is_bf16 else np.asarray(raw, dtype=np.float32)
        del raw
        return data.reshape(e.shape)


def _read_safetensors_header(file: Path) -> dict[str, _Entry]:
    """Names, dtypes, shapes and absolute offsets of a safetensors file, validated by safetensors itself."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{file}: not a readable safetensors file: {exc}") from None
    with open(file, "rb") as fp:
        (n_header,) = struct.unpack("<Q", fp.read(8))
        header = json.loads(fp.read(n_header))
    data_start = 8 + n_header
    entries: dict[str, _Entry] = {}
    for name in keys:
        info = header[name]
        dtype = info["dtype"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConvertError(f"{file}: tensor '{name}' has dtype {dtype}; only F32, F16, BF16, F64 are read")
        begin, end = info["data_offsets"]
        entries[name] = _Entry(file, dtype, tuple(int(d) for d in info["shape"]), data_start + begin, data_start + end)
    return entries


def torch_load(torch: Any, file: Path) -> object:
    """torch.load of a weights-only pickle: memory-mapped where the file is torch's zip format (since torch 1.6),
    read whole where it is the older one, which cannot be mapped."""
    return torch.load(str(file), map_location="cpu", mmap=zipfile.is_zipfile(file), weights_only=True)


class TorchBinSource:
    """Tensors of PyTorch pickles (pytorch_model.bin or its shards), memory-mapped by torch."""

    def __init__(self, files: Iterable[Path]) -> None:
        try:
            import torch
        except ImportError:
            raise ConvertError(
                f"PyTorch .bin checkpoints need torch ({extra_install('train')}), or a conversion to safetensors"
            ) from None
        self._torch = torch
        self._tensors: dict[str, object] = {}
        self._files: dict[str, Path] = {}
        for file in files:
            try:
                state = torch_load(torch, file)
            except Exception as exc:  # torch raises many kinds on a bad pickle
                raise ConvertError(f"{file}: not a readable PyTorch checkpoint: {exc}") from None
            if not isinstance(state, dict):
                raise ConvertError(f"{file}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                self._tensors[name] = tensor
                self._files[name] = file

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)  # type: ignore[attr-defined]

    def where(self, name: str) -> Path:
        return self._files[name]

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        return tensor.to(self._torch.float32).numpy()  # type: ignore[attr-defined]


def checkpoint_files(source: Path) -> list[Path]:
    """What a conversion reads, which its output must not replace: a GGUF file itself, or every file of a
    checkpoint folder (weights, config, tokenizer)."""
    if source.is_dir():
        return [f for f in source.iterdir() if f.is_file()]
    return [source] if source.is_file() else []


def open_checkpoint(model_dir: Path) -> TensorSource:
    """The tensors of an HF checkpoint directory: safetensors preferred, then PyTorch .bin (sharded or not)."""
    for index_name, source_cls in (
        ("model.safetensors.index.json", SafetensorsSource),
        ("pytorch_model.bin.index.json", TorchBinSource),
    ):
        index = model_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConvertError(f"{index}: unreadable shard index: {exc}") from None
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ConvertError(f"{index}: weight_map is not an object of tensor name -> shard file name")
            files = sorted({model_dir / f for f in weight_map.values()})
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise ConvertError(f"{index}: shard {missing[0].name} is missing")
            return source_cls(files)
    # model*.safetensors as llama.cpp's converter reads them: an adapter_model.safetensors beside them is another
    # model's (any other name is taken where no model*.safetensors is there)
    single = sorted(model_dir.glob("model*.safetensors")) or sorted(model_dir.glob("*.safetensors"))
    if single:
        return SafetensorsSource(single)
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if bins:
        return TorchBinSource(bins)
    raise ConvertError(f"{model_dir}: no model.safetensors(.index.json) or pytorch_model.bin weights")

"""Importance matrices (llama.cpp's `llama-imatrix` files): per weight matrix, the mean square of each input column's
activation over calibration text. ggml's quantizers weigh each weight's rounding error by it, so that the columns
the model's activations lean on are stored more accurately (as `llama-quantize --imatrix` does).

Both of llama.cpp's formats are read: GGUF (`general.type` "imatrix"; per matrix `NAME.in_sum2`, ne [n_per_row,
n_mat], and `NAME.counts`, ne [1, n_mat]: raw sums and token counts, n_mat > 1 for stacked experts) and the legacy
`.dat` (per matrix the mean times the number of chunks, and that number). The GGUF format is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np

from turbosparse.convert.arch.base import TensorSpec
from turbosparse.convert.writer import partial_path
from turbosparse.errors import ConvertError

logger = logging.getLogger(__name__)

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"

# the least weight of a column, relative to its matrix's mean (ImportanceMatrix.for_tensor)
IMPORTANCE_FLOOR = 1e-3

# what llama-quantize records in a file quantized with an importance matrix
KEY_QUANTIZE_FILE = "quantize.imatrix.file"
KEY_QUANTIZE_DATASET = "quantize.imatrix.dataset"
KEY_QUANTIZE_ENTRIES = "quantize.imatrix.entries_count"
KEY_QUANTIZE_CHUNKS = "quantize.imatrix.chunks_count"


@dataclass(frozen=True)
class ImportanceMatrix:
    """The mean square activation of each matrix's input columns: name -> float32 [n_mat, n_per_row]."""

    path: Path
    means: Mapping[str, np.ndarray]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0

    def for_tensor(self, name: str, shape: Sequence[int]) -> np.ndarray | None:
        """The importance of tensor `name` (numpy shape [rows, n] or [n_mat, rows, n]): float32 [n] or [n_mat, n];
        None where the file has no entry for it. ConvertError where the entry does not fit the tensor."""
        means = self.means.get(name)
        if means is None:
            return None
        n = int(shape[-1])
        n_expected = 1 if len(shape) == 2 else int(shape[0])
        if means.shape == (1, n_expected * n):  # a legacy .dat entry of stacked experts: one flat array
            means = means.reshape(n_expected, n)
        n_mat, n_got = means.shape
        if n_got != n or (n_mat != n_expected and n_mat != 1):
            raise ConvertError(
                f"{self.path}: entry '{name}' holds {n_mat} x {n_got} values; tensor '{name}' of shape {list(shape)} "
                f"needs {n_expected} x {n} (an importance matrix of another model?)"
            )
        if not np.all(np.isfinite(means)) or np.any(means < 0):
            raise ConvertError(f"{self.path}: entry '{name}' holds negative or non-finite values")
        if not np.any(means > 0):  # no activation reached it: nothing to weigh by
            return None
        # A column no calibration token reached (a neuron that never fired, in a sparse model) would weigh nothing,
        # and a block of them quantize to zeros; a floor keeps such weights from being thrown away.
        means = np.maximum(means, IMPORTANCE_FLOOR * means.mean(axis=-1, keepdims=True)).astype(np.float32)
        if len(shape) == 2:
            return means[0]
        return np.broadcast_to(means, (n_expected, n)).copy()


def read_imatrix(path: str | os.PathLike[str]) -> ImportanceMatrix:
    """Reads a llama.cpp importance matrix file (GGUF or legacy .dat). ConvertError naming the file if malformed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read the importance matrix: {e.strerror}") from e
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> ImportanceMatrix:
    try:
        return _imatrix_of(gguf.GGUFReader(str(path)), path)
    except ConvertError:
        raise
    except Exception as e:  # gguf-py raises ValueError, struct.error, ... on a damaged file, some as a field is read
        raise ConvertError(f"{path}: not a readable GGUF file: {e}") from e


def _imatrix_of(reader: gguf.GGUFReader, path: Path) -> ImportanceMatrix:
    kind = reader.get_field(KEY_TYPE)
    if kind is None or kind.contents() != "imatrix":
        raise ConvertError(f"{path}: a GGUF file, but not an importance matrix ({KEY_TYPE} is not 'imatrix')")
    tensors = {t.name: t for t in reader.tensors}
    means: dict[str, np.ndarray] = {}
    for tname, t in tensors.items():
        if tname.endswith(SUFFIX_COUNTS) and tname[: -len(SUFFIX_COUNTS)] + SUFFIX_SUMS not in tensors:
            raise ConvertError(
                f"{path}: tensor '{tname}' has no '{tname[: -len(SUFFIX_COUNTS)]}{SUFFIX_SUMS}' beside it"
            )
        if not tname.endswith(SUFFIX_SUMS):
            continue
        name = tname[: -len(SUFFIX_SUMS)]
        counts_t = tensors.get(name + SUFFIX_COUNTS)
        if counts_t is None:
            raise ConvertError(f"{path}: tensor '{tname}' has no '{name}{SUFFIX_COUNTS}' beside it")
        for tensor in (t, counts_t):
            if gguf.GGMLQuantizationType(tensor.tensor_type) != gguf.GGMLQuantizationType.F32:
                raise ConvertError(f"{path}: tensor '{tensor.name}' is {tensor.tensor_type.name}, expected F32")
        with np.errstate(invalid="ignore", over="ignore"):  # damaged values: for_tensor refuses non-finite ones
            counts = np.array(counts_t.data, dtype=np.float64).reshape(-1)
            sums = np.array(t.data, dtype=np.float64).reshape(-1)
        if len(counts) == 0 or sums.size == 0 or sums.size % len(counts) != 0:
            raise ConvertError(
                f"{path}: tensor '{tname}' ({sums.size} values) does not divide into {len(counts)} counts"
            )
        means[name] = _means(sums.reshape(len(counts), -1), counts)
    return ImportanceMatrix(path, means, _datasets(reader, path), _chunk_count(reader, path))


def _datasets(reader: gguf.GGUFReader, path: Path) -> tuple[str, ...]:
    field = reader.get_field(KEY_DATASETS)
    if field is None:
        return ()
    value = field.contents()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConvertError(f"{path}: key '{KEY_DATASETS}' is not an array of strings")
    return tuple(value)


def _chunk_count(reader: gguf.GGUFReader, path: Path) -> int:
    field = reader.get_field(KEY_CHUNK_COUNT)
    if field is None:
        return 0
    value = field.contents()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConvertError(f"{path}: key '{KEY_CHUNK_COUNT}' is not a count")
    return value


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums / counts per matrix; a matrix no token reached (an expert never chosen) weighs every column alike."""
    out = np.ones_like(sums, dtype=np.float32)
    seen = counts > 0
    with np.errstate(over="ignore"):  # past float32's range: infinite, which for_tensor refuses
        out[seen] = (sums[seen] / counts[seen, None]).astype(np.float32)
    return out


def _read_legacy(path: Path) -> ImportanceMatrix:
    with open(path, "rb") as f:  # read as it is parsed: a wrong file fails at its first implausible field
        return _parse_legacy(path, f)


def _parse_legacy(path: Path, f: BinaryIO) -> ImportanceMatrix:
    def take(fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) < size:
            raise ConvertError(f"{path}: neither GGUF nor a complete legacy .dat importance matrix ({what} missing)")
        return struct.unpack(fmt, data)

    (n_entries,) = take("<i", "entry count")
    if not 0 < n_entries < 1 << 20:
        raise ConvertError(f"{path}: neither GGUF nor a legacy .dat importance matrix (entry count {n_entries})")
    means: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        (length,) = take("<i", f"entry {i}'s name length")
        if not 0 < length < 4096:
            raise ConvertError(f"{path}: entry {i} has a name of {length} bytes")
        name = take(f"<{length}s", f"entry {i}'s name")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii", f"entry '{name}''s counts")
        if not 0 < nval < 1 << 30:
            raise ConvertError(f"{path}: entry '{name}' has {nval} values")
        values = np.array(take(f"<{nval}f", f"entry '{name}''s values"), dtype=np.float64)
        means[name] = (values / ncall if ncall > 0 else values).astype(np.float32)[None, :]
    tail = f.read(4)
    chunks = struct.unpack("<i", tail)[0] if len(tail) == 4 else 0
    datasets: tuple[str, ...] = ()
    head = f.read(4)
    if len(head) == 4 and 0 < (length := struct.unpack("<i", head)[0]) < 1 << 16:
        datasets = (f.read(length).decode("utf-8", "replace"),)
    return ImportanceMatrix(path, means, datasets, max(chunks, 0))


def write_imatrix(
    path: str | os.PathLike[str],
    sums: Mapping[str, np.ndarray],
    counts: Mapping[str, np.ndarray],
    *,
    datasets: Sequence[str],
    chunk_count: int,
    chunk_size: int,
) -> Path:
    """Writes llama.cpp's GGUF importance matrix (sums[name]: [n_mat, n_per_row] squared activations summed over
    counts[name]: [n_mat] tokens), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    writer = gguf.GGUFWriter(str(tmp), arch="")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix's files name no architecture
    try:
        writer.add_string(KEY_TYPE, "imatrix")
        if datasets:  # gguf-py writes no empty array
            writer.add_array(KEY_DATASETS, list(datasets))
        writer.add_uint32(KEY_CHUNK_COUNT, chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, chunk_size)
        for name in sorted(sums):
            writer.add_tensor(name + SUFFIX_SUMS, np.ascontiguousarray(sums[name], dtype=np.float32))
            writer.add_tensor(name + SUFFIX_COUNTS, np.asarray(counts[name], dtype=np.float32).reshape(-1, 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def with_importance(specs: list[TensorSpec], imatrix: ImportanceMatrix) -> list[TensorSpec]:
    """specs, each matrix with an entry in imatrix given that entry as its importance (checked against its shape)."""
    out, used = [], 0
    for spec in specs:
        if len(spec.shape) >= 2 and not spec.encoded:
            importance = imatrix.for_tensor(spec.name, spec.shape)
            if importance is not None:
                used += 1
                spec = dataclasses.replace(spec, importance=importance)
        out.append(spec)
    logger.info("%s: importance for %d of %d matrices", imatrix.path, used, len(imatrix.means))
    if used == 0:
        raise ConvertError(f"{imatrix.path}: no entry names a tensor of this model (another model's matrix?)")
    return out


def quantize_keys(imatrix: ImportanceMatrix) -> dict[str, tuple[object, gguf.GGUFValueType]]:
    """The keys llama-quantize writes into a file quantized with `imatrix`."""
    keys: dict[str, tuple[object, gguf.GGUFValueType]] = {
        KEY_QUANTIZE_FILE: (str(imatrix.path), gguf.GGUFValueType.STRING),
        KEY_QUANTIZE_ENTRIES: (len(imatrix.means), gguf.GGUFValueType.UINT32),
    }
    if imatrix.datasets:
        keys[KEY_QUANTIZE_DATASET] = (imatrix.datasets[0], gguf.GGUFValueType.STRING)
    if imatrix.chunk_count > 0:
        keys[KEY_QUANTIZE_CHUNKS] = (imatrix.chunk_count, gguf.GGUFValueType.UINT32)
    return keys

"""The shared GGUF writer: metadata, then tensors one at a time (load -> quantize -> write -> free), into a
temporary file beside the output that replaces it only when complete.

Peak memory is about one tensor as float32 plus its quantized copy: tensor infos (name, shape, type, byte size)
are known before any data is read, so the header is written first and the data streams after it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from turbosparse.binding import quantize, type_info
from turbosparse.constants import (
    ARCHITECTURE,
    FORMAT_VERSION,
    KEY_ACT_THRESHOLDS,
    KEY_ACTIVATION_RATES,
    KEY_CALIBRATED_DOWN_RATES,
    KEY_CALIBRATED_SPARSITY,
    KEY_CALIBRATED_UP_RATES,
    KEY_DOWN_COLUMNS_SCALED,
    KEY_DOWN_LAYOUT,
    KEY_FFN_ACT_SCALES,
    KEY_FFN_ACTIVATION,
    KEY_FFN_GATE_SCALES,
    KEY_FORMAT_VERSION,
    KEY_GATE_THRESHOLDS,
    KEY_GROUP_RECALL,
    KEY_GROUP_SIZE,
    KEY_GROUP_TOP_K,
    KEY_PREDICTED_RATES,
    KEY_PREDICTOR_INPUT,
    KEY_PREDICTOR_RANKS,
    KEY_PREDICTOR_THRESHOLD,
    KEY_SOURCE,
)
from turbosparse.convert.arch.base import TensorSpec
from turbosparse.convert.hparams import HParams
from turbosparse.errors import ConvertError

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType

# value types of the turbosparse keys (docs/gguf-format.md)
_KEY_TYPES: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {
    KEY_FORMAT_VERSION: (VT.UINT32, None),
    KEY_FFN_ACTIVATION: (VT.STRING, None),
    KEY_DOWN_LAYOUT: (VT.STRING, None),
    KEY_SOURCE: (VT.STRING, None),
    KEY_PREDICTOR_INPUT: (VT.STRING, None),
    KEY_PREDICTOR_THRESHOLD: (VT.FLOAT32, None),
    KEY_PREDICTOR_RANKS: (VT.ARRAY, VT.UINT32),
    KEY_ACTIVATION_RATES: (VT.ARRAY, VT.FLOAT32),
    KEY_PREDICTED_RATES: (VT.ARRAY, VT.FLOAT32),
    KEY_GATE_THRESHOLDS: (VT.ARRAY, VT.FLOAT32),
    KEY_ACT_THRESHOLDS: (VT.ARRAY, VT.FLOAT32),
    KEY_CALIBRATED_SPARSITY: (VT.FLOAT32, None),
    KEY_CALIBRATED_UP_RATES: (VT.ARRAY, VT.FLOAT32),
    KEY_CALIBRATED_DOWN_RATES: (VT.ARRAY, VT.FLOAT32),
    KEY_FFN_GATE_SCALES: (VT.ARRAY, VT.FLOAT32),
    KEY_FFN_ACT_SCALES: (VT.ARRAY, VT.FLOAT32),
    KEY_DOWN_COLUMNS_SCALED: (VT.UINT32, None),
    KEY_GROUP_SIZE: (VT.UINT32, None),
    KEY_GROUP_TOP_K: (VT.ARRAY, VT.UINT32),
    KEY_GROUP_RECALL: (VT.ARRAY, VT.FLOAT32),
}


def tensor_nbytes(shape: Sequence[int], qtype: Q) -> int:
    info = type_info(int(qtype))
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * info.row_bytes(int(shape[-1]))


def encode(data: np.ndarray, qtype: Q, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., n] -> the bytes (or float32 array) GGUF stores for qtype, by ggml's own quantizers; importance
    ([n], or [n_expert, n] for data [n_expert, rows, n]) weighs each row element's rounding error."""
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if importance is None:
        return quantize(data, int(qtype))
    if importance.ndim == 1:
        return quantize(data, int(qtype), imatrix=importance)
    return np.stack([quantize(d, int(qtype), imatrix=w) for d, w in zip(data, importance, strict=True)])


def add_llama_hparams(writer: gguf.GGUFWriter, hp: HParams) -> None:
    """llama.cpp's standard llama.* keys."""
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_vocab_size(hp.vocab_size)
    if hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if hp.rope_linear_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp.rope_linear_factor)
    if hp.n_expert > 0:
        writer.add_expert_count(hp.n_expert)
        writer.add_expert_used_count(hp.n_expert_used)


def add_turbosparse_keys(writer: gguf.GGUFWriter, values: dict[str, Any]) -> None:
    """turbosparse.* keys with the value types the format fixes."""
    writer.add_uint32(KEY_FORMAT_VERSION, FORMAT_VERSION)
    for key, value in values.items():
        vtype, sub = _KEY_TYPES[key]
        writer.add_key_value(key, value, vtype, sub_type=sub)


def check_output_path(
    out_path: Path, error: type[Exception] = ConvertError, *, inputs: Sequence[str | os.PathLike[str]] = ()
) -> None:
    """error(why) where out_path cannot become a file (a directory, under a file, a device or FIFO the new file would
    replace, one of the inputs): said before the work, not after it."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise error(f"{out_path}: is a directory; the output is a file (e.g. {out_path / 'model.gguf'})")
    if out_path.exists() and not out_path.is_file():
        raise error(f"{out_path}: is not a regular file (a device, FIFO or socket), which the output would replace")
    for source in inputs:
        if out_path.exists() and os.path.exists(source) and os.path.samefile(out_path, source):
            raise error(f"{out_path}: is an input file itself ({source}); write to another path")
    for folder in out_path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise error(f"{out_path}: cannot be written, {folder} is not a directory")
            return


def partial_path(out_path: Path) -> Path:
    """Where a writer puts the file until it is whole: beside it (the rename stays on one file system), hidden, its
    name within 255 bytes whatever the output's (a character cut in two is left out)."""
    stem = os.fsencode(out_path.name)[:150].decode("utf-8", errors="ignore")
    return out_path.with_name(f".{stem}.{os.getpid()}.partial")


@contextlib.contextmanager
def _writing(out_path: Path) -> Iterator[None]:
    """A failed write of the output said with its path (numpy's own message names neither the file nor the cause)."""
    try:
        yield
    except OSError as exc:
        # numpy's short write ("N requested and M written") carries no errno: a full disk, almost always
        hint = ": is the disk full?" if exc.errno in (errno.ENOSPC, errno.EDQUOT, None) else ""
        raise ConvertError(f"{out_path}: writing failed ({exc.strerror or exc}){hint}") from None


def check_loaded(spec: TensorSpec, data: np.ndarray) -> None:
    """The values a tensor's spec promised: its shape, and no NaN or infinity (which a forward pass turns into NaN
    logits from the first token that meets them; llama-quantize refuses such blocks too)."""
    where = spec.origin or spec.name
    if data.shape != tuple(spec.shape):
        raise ConvertError(f"{where}: loaded shape {list(data.shape)}, expected {list(spec.shape)}")
    # a float64 sum of float32 values cannot overflow, so it is finite exactly when every value is
    if np.isfinite(data.sum(dtype=np.float64)):
        return
    bad = ~np.isfinite(data)
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), data.shape))
    raise ConvertError(
        f"{where}: {int(bad.sum())} of {data.size} values are NaN or infinite (the first at {list(first)}); "
        "the checkpoint is damaged or was saved from a diverged run"
    )


def write_gguf(
    out_path: Path,
    specs: Sequence[TensorSpec],
    types: Sequence[Q],
    add_metadata: Callable[[gguf.GGUFWriter], None],
    *,
    arch: str = ARCHITECTURE,
    progress: bool = False,
) -> Path:
    """Writes the file atomically: nothing at out_path unless every tensor was written."""
    out_path = Path(out_path)
    check_output_path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(out_path)
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        add_metadata(writer)
        sizes = []
        for spec, qtype in zip(specs, types, strict=True):
            nbytes = tensor_nbytes(spec.shape, qtype)
            sizes.append(nbytes)
            writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        with _writing(out_path):
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=out_path.name, disable=not progress)
        with bar:
            for spec, qtype, nbytes in zip(specs, types, sizes, strict=True):
                bar.set_postfix_str(f"{spec.name} {qtype.name}", refresh=False)
                data = spec.load()
                if not spec.encoded:
                    check_loaded(spec, data)
                stored = data if spec.encoded else encode(data, qtype, spec.importance)
                del data
                if stored.nbytes != nbytes:
                    raise RuntimeError(f"{spec.name}: {stored.nbytes} bytes encoded, {nbytes} planned")
                with _writing(out_path):
                    writer.write_tensor_data(stored)
                del stored
                bar.update(nbytes)
        with _writing(out_path):
            writer.close()
            os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        with contextlib.suppress(OSError):  # gone, or never made: the error being raised is the one to say
            tmp.unlink()
        raise
    logger.info("wrote %s (%d tensors)", out_path, len(specs))
    return out_path

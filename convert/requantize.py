"""Re-quantizing an existing turbosparse (or plain llama) GGUF: every key copied, every tensor dequantized by
ggml and quantized again under the quant policy. Quantized inputs carry their quantization noise along."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import gguf
import numpy as np

from turbosparse.binding import dequantize
from turbosparse.constants import (
    KEY_DOWN_COLUMNS_SCALED,
    KEY_DOWN_LAYOUT,
    KEY_FFN_ACTIVATION,
    TENSOR_FFN_GATE_INP,
    TENSOR_POWERINFER_FC1,
    TENSOR_POWERINFER_FC2,
    TENSOR_PRED_FC1,
    TENSOR_PRED_FC1_EXPS,
    TENSOR_PRED_FC2,
    TENSOR_PRED_FC2_EXPS,
    TENSOR_PRED_GROUPS,
)
from turbosparse.convert.arch.base import (
    ROLE_EMBD,
    ROLE_MATRIX,
    ROLE_NORM,
    ROLE_OUTPUT,
    ROLE_PREDICTOR,
    ROLE_ROUTER,
    TensorSpec,
)
from turbosparse.convert.copy import architecture, copy_fields
from turbosparse.convert.imatrix import (
    KEY_QUANTIZE_CHUNKS,
    KEY_QUANTIZE_DATASET,
    KEY_QUANTIZE_ENTRIES,
    KEY_QUANTIZE_FILE,
    ImportanceMatrix,
    quantize_keys,
    with_importance,
)
from turbosparse.convert.neuron_order import neuron_axis, stores_quantization_order
from turbosparse.convert.quant_policy import QuantPolicy, file_type
from turbosparse.convert.writer import write_gguf
from turbosparse.errors import ConvertError
from turbosparse.gguf_reader import read_model

logger = logging.getLogger(__name__)

_PREDICTORS = (
    TENSOR_PRED_FC1,
    TENSOR_PRED_FC2,
    TENSOR_PRED_GROUPS,
    TENSOR_PRED_FC1_EXPS,
    TENSOR_PRED_FC2_EXPS,
    TENSOR_POWERINFER_FC1,
    TENSOR_POWERINFER_FC2,
)
_FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
_PREDICTOR_SUFFIXES = tuple(n.format(0).split(".", 2)[2] for n in _PREDICTORS)
_ROUTER_SUFFIX = TENSOR_FFN_GATE_INP.format(0).split(".", 2)[2]


def _role(name: str, n_dims: int) -> str:
    if n_dims == 1:
        return ROLE_NORM
    if name == "token_embd.weight":
        return ROLE_EMBD
    if name == "output.weight":
        return ROLE_OUTPUT
    suffix = name.split(".", 2)[2] if name.startswith("blk.") and name.count(".") >= 2 else ""
    if suffix in _PREDICTOR_SUFFIXES:
        return ROLE_PREDICTOR
    if suffix == _ROUTER_SUFFIX:
        return ROLE_ROUTER  # F32, as a direct conversion and llama-quantize keep it
    return ROLE_MATRIX


def _loader(tensor: gguf.ReaderTensor, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
        if qtype == gguf.GGMLQuantizationType.F32:
            return np.array(tensor.data, dtype=np.float32).reshape(shape)
        raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        return dequantize(raw, int(qtype), shape[-1]).reshape(shape)

    return load


def _may_be_reordered(reader: gguf.GGUFReader, arch: str) -> bool:
    """Whether the converter may have stored this file's neurons sorted (older files do not record it; since
    2026-12-04 every file it sorted, or ordered by a group plan, says turbosparse.down_columns_scaled)."""

    def key(name: str):
        field = reader.get_field(name)
        return field.contents() if field is not None else None

    n_expert = key(gguf.Keys.LLM.EXPERT_COUNT.format(arch=arch))
    sorted_by_default = stores_quantization_order(key(KEY_FFN_ACTIVATION), n_expert or 0, key(KEY_DOWN_LAYOUT))
    return sorted_by_default or bool(key(KEY_DOWN_COLUMNS_SCALED))


def requantize(
    src: Path,
    out: Path,
    outtype: str,
    *,
    pred_type: str | None = None,
    imatrix: ImportanceMatrix | None = None,
    progress: bool = False,
) -> Path:
    if src.resolve() == Path(out).resolve():
        raise ConvertError(f"{src}: re-quantizing into the input file itself")
    reader, tensors = read_model(src, ConvertError)
    arch = architecture(reader, src)
    names = {t.name for t in tensors}
    policy = QuantPolicy.from_names(outtype, pred_type, tied="output.weight" not in names)
    specs, types = [], []
    for t in tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne -> numpy order
        spec = TensorSpec(t.name, shape, _role(t.name, len(shape)), _loader(t, shape), f"{src}: tensor '{t.name}'")
        specs.append(spec)
        types.append(policy.type_for(spec.role, shape))
    weights = [t for t, spec in zip(tensors, specs, strict=True) if spec.role != ROLE_PREDICTOR]
    quantized = sorted({t.tensor_type.name for t in weights if t.tensor_type not in _FLOAT_TYPES})
    if quantized:  # llama-quantize asks for --allow-requantize here
        logger.warning("%s: its weights are already quantized (%s): %s starts from their rounded values, and is no "
                       "closer to the original model than the file is", src, ", ".join(quantized), outtype)  # fmt: skip
    if imatrix is not None:
        specs = with_importance(specs, imatrix)
        if _may_be_reordered(reader, arch):
            # the converter may have sorted this file's neurons (convert/neuron_order.py) and the file does not say
            # how: an entry for the standard down's columns, measured in the checkpoint's order, would misweigh them
            specs = [dataclasses.replace(s, importance=None) if neuron_axis(s.name) == 1 else s for s in specs]
            logger.info("%s: ReLU-family FFN: the standard down matrices quantize without importance", src)

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        # the source's own record of an importance matrix no longer describes the new quantization
        imatrix_record = (KEY_QUANTIZE_FILE, KEY_QUANTIZE_DATASET, KEY_QUANTIZE_ENTRIES, KEY_QUANTIZE_CHUNKS)
        copy_fields(reader, writer, skip=("general.file_type", *imatrix_record))
        writer.add_file_type(file_type(policy.outtype))
        if imatrix is not None:
            for key, (value, vtype) in quantize_keys(imatrix).items():
                writer.add_key_value(key, value, vtype)

    return write_gguf(out, specs, types, add_metadata, arch=arch, progress=progress)

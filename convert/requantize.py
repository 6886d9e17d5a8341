"""Re-quantizing an existing turbosparse (or plain llama) GGUF: every key copied, every tensor dequantized by
ggml and quantized again under the quant policy. Quantized inputs carry their quantization noise along."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..binding import dequantize
from ..constants import TENSOR_POWERINFER_FC1, TENSOR_POWERINFER_FC2, TENSOR_PRED_FC1, TENSOR_PRED_FC2
from ..errors import ConvertError
from .arch.base import ROLE_EMBD, ROLE_MATRIX, ROLE_NORM, ROLE_OUTPUT, ROLE_PREDICTOR, TensorSpec
from .quant_policy import QuantPolicy, file_type
from .writer import write_gguf

_SKIPPED_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.file_type")
_PREDICTOR_SUFFIXES = tuple(
    n.format(0).split(".", 2)[2]
    for n in (TENSOR_PRED_FC1, TENSOR_PRED_FC2, TENSOR_POWERINFER_FC1, TENSOR_POWERINFER_FC2)
)


def _role(name: str, n_dims: int) -> str:
    if n_dims == 1:
        return ROLE_NORM
    if name == "token_embd.weight":
        return ROLE_EMBD
    if name == "output.weight":
        return ROLE_OUTPUT
    if name.startswith("blk.") and name.split(".", 2)[2] in _PREDICTOR_SUFFIXES:
        return ROLE_PREDICTOR
    return ROLE_MATRIX


def _loader(tensor: gguf.ReaderTensor, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
        if qtype == gguf.GGMLQuantizationType.F32:
            return np.array(tensor.data, dtype=np.float32).reshape(shape)
        raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
        return dequantize(raw, int(qtype), shape[-1]).reshape(shape)

    return load


def _field_value(field: gguf.ReaderField):
    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], sub  # raw bytes: token texts round-trip exactly
        return field.contents(), sub
    if main == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), None
    return field.contents(), None


def requantize(src: Path, out: Path, outtype: str, *, pred_type: str | None = None, progress: bool = False) -> Path:
    if src.resolve() == Path(out).resolve():
        raise ConvertError(f"{src}: re-quantizing into the input file itself")
    try:
        reader = gguf.GGUFReader(str(src))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{src}: not a readable GGUF file: {exc}") from None
    arch_field = reader.get_field("general.architecture")
    if arch_field is None:
        raise ConvertError(f"{src}: missing key 'general.architecture'")
    arch = arch_field.contents()
    names = {t.name for t in reader.tensors}
    policy = QuantPolicy.from_names(outtype, pred_type, tied="output.weight" not in names)
    specs, types = [], []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne -> numpy order
        spec = TensorSpec(t.name, shape, _role(t.name, len(shape)), _loader(t, shape), f"{src}: tensor '{t.name}'")
        specs.append(spec)
        types.append(policy.type_for(spec.role, shape))

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        for key, field in reader.fields.items():
            if key in _SKIPPED_KEYS:
                continue
            value, sub = _field_value(field)
            writer.add_key_value(key, value, field.types[0], sub_type=sub)
        writer.add_file_type(file_type(policy.outtype))

    return write_gguf(out, specs, types, add_metadata, arch=arch, progress=progress)

"""Which ggml type each tensor is stored in.

- 1-D tensors (norms, biases) and mixture-of-experts routers (`ffn_gate_inp`): F32, always.
- The output head (output.weight, or token_embd when the embeddings are tied and it doubles as the head): the
  outtype for f32 / f16 / bf16 / q8_0; Q6_K for every other quantized outtype (llama.cpp's llama-quantize habit:
  the head is the most quantization-sensitive matrix).
- token_embd (untied) and every other matrix: the outtype.
- Predictors: --pred-type when given; else the outtype when it is f32 / f16 / bf16; else Q8_0 (a predictor's
  errors turn into missed neurons, and it is small).
- A row length (ggml ne0) that is not a multiple of the chosen type's block falls back along
  Q2_K, Q3_K -> IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0 (all 32-wide blocks, as llama.cpp's quantizer
  does), and any 32-wide type -> F16 (block 1) when even 32 does not divide the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from turbosparse.binding import type_info
from turbosparse.convert.arch.base import ROLE_BIAS, ROLE_EMBD, ROLE_NORM, ROLE_OUTPUT, ROLE_PREDICTOR, ROLE_ROUTER
from turbosparse.errors import ConvertError

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# --outtype name -> (tensor type, general.file_type)
OUTTYPES: dict[str, tuple[Q, FT]] = {
    "f32": (Q.F32, FT.ALL_F32),
    "f16": (Q.F16, FT.MOSTLY_F16),
    "bf16": (Q.BF16, FT.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, FT.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, FT.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, FT.MOSTLY_Q5_1),
    "q2_k": (Q.Q2_K, FT.MOSTLY_Q2_K),
    "q3_k": (Q.Q3_K, FT.MOSTLY_Q3_K_S),  # uniform Q3_K is llama.cpp's "S" mix
    "q4_k": (Q.Q4_K, FT.MOSTLY_Q4_K_S),
    "q5_k": (Q.Q5_K, FT.MOSTLY_Q5_K_S),
    "q6_k": (Q.Q6_K, FT.MOSTLY_Q6_K),
}
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
_FALLBACK: dict[Q, Q] = {
    Q.Q2_K: Q.IQ4_NL,
    Q.Q3_K: Q.IQ4_NL,
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
}


def parse_type(name: str) -> Q:
    try:
        return OUTTYPES[name.lower()][0]
    except KeyError:
        raise ConvertError(f"unknown type '{name}' (expected one of {', '.join(OUTTYPES)})") from None


def fit_row(qtype: Q, row_length: int) -> Q:
    """qtype, or the fallback whose block divides row_length."""
    while row_length % type_info(qtype).block_size != 0:
        qtype = _FALLBACK.get(qtype, Q.F16)
    return qtype


@dataclass(frozen=True)
class QuantPolicy:
    outtype: Q
    pred_type: Q | None = None  # None: Q8_0, or the outtype when it is a float type
    tied_embeddings: bool = False

    @classmethod
    def from_names(cls, outtype: str, pred_type: str | None = None, *, tied: bool = False) -> QuantPolicy:
        return cls(parse_type(outtype), parse_type(pred_type) if pred_type else None, tied)

    def type_for(self, role: str, shape: tuple[int, ...]) -> Q:
        if role in (ROLE_NORM, ROLE_BIAS, ROLE_ROUTER) or len(shape) == 1:
            return Q.F32
        if role == ROLE_PREDICTOR:
            chosen = self.pred_type or (self.outtype if self.outtype in FLOAT_TYPES else Q.Q8_0)
        elif role == ROLE_OUTPUT or (role == ROLE_EMBD and self.tied_embeddings):
            chosen = self.outtype if self.outtype in (*FLOAT_TYPES, Q.Q8_0) else Q.Q6_K
        else:
            chosen = self.outtype
        return fit_row(chosen, shape[-1])


def file_type(outtype: Q) -> FT:
    for qtype, ftype in OUTTYPES.values():
        if qtype == outtype:
            return ftype
    return FT.GUESSED

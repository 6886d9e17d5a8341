"""Choosing each layer's predictor rank and threshold: the cheapest run-time cost that reaches a recall target.

Cost per token and layer, in bytes read at the target quantization (decoding is memory-bound):
predictor weights (hidden*rank + rank*n_ff) + predicted-active FFN neurons (pred_rate * n_ff * 3 * hidden:
a gate row, an up row and a down column each).

Thresholds are searched on a grid of strictly negative values only: the GGUF stores one global threshold, and
a layer threshold t < 0 is folded into the predictor by scaling fc2 by GLOBAL_THRESHOLD / t (export.py), which
keeps `logit >= t` exactly and needs t to share the global threshold's sign.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from turbosparse.predictor_train.modeling import Predictor

GLOBAL_THRESHOLD = -1.0


def bytes_per_weight(quant: str) -> float:
    """Bytes per weight of a ggml type by name ("q4_0"), block scales included: gguf-py's copy of ggml's sizes."""
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[quant.upper()]]
    except KeyError:
        raise ValueError(f"unknown quant {quant!r}: not a ggml type name") from None
    return size / block


DEFAULT_THRESHOLDS = tuple(float(t) for t in -np.geomspace(0.02, 12.0, 64))


@dataclass(frozen=True)
class CostModel:
    hidden: int
    n_ff: int
    quant: str = "q8_0"

    def __post_init__(self) -> None:
        bytes_per_weight(self.quant)

    @property
    def bytes_per_weight(self) -> float:
        return bytes_per_weight(self.quant)

    def predictor_bytes(self, rank: int) -> float:
        return (self.hidden * rank + rank * self.n_ff) * self.bytes_per_weight

    def ffn_bytes(self, active_rate: float) -> float:
        return active_rate * self.n_ff * 3 * self.hidden * self.bytes_per_weight

    def cost(self, rank: int, predicted_rate: float) -> float:
        return self.predictor_bytes(rank) + self.ffn_bytes(predicted_rate)


@dataclass(frozen=True)
class Candidate:
    """One trained predictor measured on validation data at every threshold of a grid."""

    rank: int
    thresholds: tuple[float, ...]
    recall: tuple[float, ...]
    predicted_rate: tuple[float, ...]
    precision: tuple[float, ...]
    true_rate: float


@dataclass(frozen=True)
class Choice:
    rank: int
    threshold: float
    recall: float
    precision: float
    predicted_rate: float
    true_rate: float
    cost_bytes: float
    predictor_bytes: float
    met_target: bool


@torch.no_grad()
def measure(
    pred: Predictor, x: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> Candidate:
    """Recall, predicted-active rate and precision of pred on (x, y) at each threshold."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on the number of examples: {x.shape[0]} vs {y.shape[0]}")
    logits = pred(x)
    if logits.shape != y.shape:
        raise ValueError(f"predictor output {tuple(logits.shape)} does not match the mask {tuple(y.shape)}")
    n_true = float(y.sum())
    rec, rate, prec = [], [], []
    for t in thresholds:
        flagged = logits >= t
        hits = float((flagged & y).sum())
        n_flag = float(flagged.sum())
        rec.append(hits / max(n_true, 1.0))
        rate.append(n_flag / y.numel())
        prec.append(hits / max(n_flag, 1.0))
    return Candidate(pred.fc1.weight.shape[0], tuple(thresholds), tuple(rec), tuple(rate), tuple(prec),
                     n_true / y.numel())  # fmt: skip


def choose(candidates: Sequence[Candidate], recall_target: float, cost: CostModel) -> Choice:
    """The (rank, threshold) of least cost whose recall reaches the target; if none does, the highest recall
    (met_target False)."""
    if not candidates:
        raise ValueError("no candidate predictors to choose from")
    best: Choice | None = None
    fallback: Choice | None = None
    for c in candidates:
        for t, r, pr, p in zip(c.thresholds, c.recall, c.predicted_rate, c.precision, strict=True):
            if t >= 0:
                continue
            ch = Choice(c.rank, t, r, p, pr, c.true_rate, cost.cost(c.rank, pr), cost.predictor_bytes(c.rank),
                        r >= recall_target)  # fmt: skip
            if ch.met_target and (best is None or ch.cost_bytes < best.cost_bytes):
                best = ch
            if fallback is None or (ch.recall, -ch.cost_bytes) > (fallback.recall, -fallback.cost_bytes):
                fallback = ch
    if best is not None:
        return best
    if fallback is None:
        raise ValueError("no negative threshold in the candidates' grids")
    return fallback

"""Token sampling over logits, in llama.cpp's default order: penalties, top-k, top-p, min-p, temperature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at
    seed: int | None = None  # None: a fresh random seed

    def __post_init__(self) -> None:
        if self.top_p <= 0.0:
            raise ValueError(f"top_p must be > 0 (>= 1 turns it off), got {self.top_p}")
        if self.min_p > 1.0:
            raise ValueError(f"min_p must be <= 1, got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class Sampler:
    """Picks the next token from a logits vector; holds the random generator of one generation."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def _penalize(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        p = self.params
        if p.repeat_penalty == 1.0 or p.repeat_last_n == 0 or not history:
            return logits
        recent = np.unique(np.asarray(history[-p.repeat_last_n :], dtype=np.int64))
        out = logits.copy()
        vals = out[recent]
        out[recent] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        return out

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        logits = self._penalize(np.asarray(logits, dtype=np.float64), history)
        if p.temperature <= 0.0:
            return int(np.argmax(logits))
        ids = np.argsort(-logits, kind="stable")
        if p.top_k > 0:
            ids = ids[: p.top_k]
        vals = logits[ids]
        if p.top_p < 1.0:
            probs = _softmax(vals)
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0:
            probs = _softmax(vals)
            mask = probs >= p.min_p * probs[0]
            ids, vals = ids[mask], vals[mask]
        probs = _softmax(vals / p.temperature)
        return int(ids[self._rng.choice(len(ids), p=probs)])

"""Perplexity in torch, dense or with predictor masks applied, and per-layer activation statistics.

Fixed protocol for the numbers we report: the first `n_tokens` tokens of the evaluation text (no special
tokens), cut into non-overlapping windows of `window` tokens, each evaluated from an empty context;
PPL = exp(mean next-token NLL over all predicted positions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from turbosparse.errors import TrainingError
from turbosparse.predictor_train.modeling import DReluMLP, Predictor


@dataclass(frozen=True)
class EvalConfig:
    n_tokens: int = 4096
    window: int = 512


@dataclass
class MaskStats:
    """Per layer counts gathered while predictor masks were applied."""

    true_active: np.ndarray  # [n_layer] neurons with a non-zero activation (before masking)
    predicted_active: np.ndarray  # [n_layer] neurons the predictor flagged
    hits: np.ndarray  # [n_layer] neurons both active and flagged
    tokens: int
    n_ff: int

    def rates(self) -> dict[str, list[float]]:
        denom = self.tokens * self.n_ff
        return {
            "true_active": (self.true_active / denom).tolist(),
            "predicted_active": (self.predicted_active / denom).tolist(),
            "recall": (self.hits / np.maximum(self.true_active, 1)).tolist(),
        }


def eval_windows(ids: Sequence[int], cfg: EvalConfig) -> list[torch.Tensor]:
    ids = list(ids)[: cfg.n_tokens]
    if len(ids) < 2:
        raise TrainingError("evaluation text too short")
    return [torch.tensor([ids[i : i + cfg.window]]) for i in range(0, len(ids), cfg.window) if len(ids[i:]) > 1]


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, ids: Sequence[int], cfg: EvalConfig) -> float:
    nll, n = 0.0, 0
    model.eval()
    for x in eval_windows(ids, cfg):
        out = model(x).logits[0, :-1].float()
        nll += float(F.cross_entropy(out, x[0, 1:], reduction="sum"))
        n += x.shape[1] - 1
    return math.exp(nll / n)


def predictor_input(h: torch.Tensor, kind: str) -> torch.Tensor:
    """The engine's predictor input: `residual` h as is, `residual_rmsnorm` h / rms(h) without a weight."""
    if kind == "residual":
        return h
    if kind == "residual_rmsnorm":
        return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)
    raise ValueError(f"unknown predictor input {kind!r} (residual | residual_rmsnorm)")


@contextmanager
def predictor_masks(
    model: LlamaForCausalLM, predictors: Sequence[Predictor | None], threshold: float, input_kind: str
) -> Iterator[MaskStats]:
    """While active, every DReluMLP with a predictor keeps only the neurons its predictor flags
    (logit >= threshold, predictor reading the residual before the FFN norm), as sparse decoding does."""
    layers = model.model.layers
    if len(predictors) != len(layers):
        raise ValueError(f"{len(predictors)} predictors for {len(layers)} layers")
    n_ff = model.config.intermediate_size
    stats = MaskStats(np.zeros(len(layers)), np.zeros(len(layers)), np.zeros(len(layers)), 0, n_ff)
    residual: dict[int, torch.Tensor] = {}
    handles = []

    def save_residual(i: int):
        def hook(_m, args):
            residual[i] = args[0]

        return hook

    def apply_mask(i: int, pred: Predictor):
        def hook(_m, args):
            act = args[0]
            mask = pred(predictor_input(residual.pop(i), input_kind)) >= threshold
            active = act != 0
            stats.true_active[i] += float(active.sum())
            stats.predicted_active[i] += float(mask.sum())
            stats.hits[i] += float((active & mask).sum())
            if i == 0:
                stats.tokens += act.shape[0] * act.shape[1]
            return (act * mask.to(act.dtype),)

        return hook

    for i, (layer, pred) in enumerate(zip(layers, predictors, strict=True)):
        if pred is None:
            continue
        if not isinstance(layer.mlp, DReluMLP):
            raise ValueError(f"layer {i}: predictor masks need a dReLU FFN")
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(save_residual(i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(apply_mask(i, pred)))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def activation_rates(model: LlamaForCausalLM, ids: Sequence[int], cfg: EvalConfig) -> list[float]:
    """Per layer share of FFN neurons with a non-zero activation over the evaluation windows."""
    counts = torch.zeros(len(model.model.layers), dtype=torch.float64)
    total = [0]
    handles = []
    for i, layer in enumerate(model.model.layers):

        def hook(_m, args, i=i):
            counts[i] += float((args[0] != 0).sum())
            if i == 0:
                total[0] += args[0].numel()

        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    try:
        for x in eval_windows(ids, cfg):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return (counts / max(total[0], 1)).tolist()


@torch.no_grad()
def answer_agreement(model: LlamaForCausalLM, answers: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict:
    """Teacher-forced on (prompt, answer) token pairs: the share of answer tokens that are the model's own top-1
    prediction, and the perplexity of the answers (each pair evaluated from an empty context)."""
    agree = total = 0
    nll = 0.0
    model.eval()
    for prompt, answer in answers:
        if not prompt or not answer:
            continue
        x = torch.tensor([[*prompt, *answer]])
        logits = model(x).logits[0, len(prompt) - 1 : -1].float()
        target = x[0, len(prompt) :]
        agree += int((logits.argmax(-1) == target).sum())
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        total += len(answer)
    if total == 0:
        raise TrainingError("no answer tokens to evaluate")
    return {"top1_agreement": agree / total, "perplexity": math.exp(nll / total), "tokens": total}

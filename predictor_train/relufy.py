"""SwiGLU -> dReLU ("relufication"): swap the FFN activation, then recover the original model's behaviour.

The student's FFN is down(relu(gate x + b_gate) * relu(up x)) + b_down: dReLU with a per-neuron threshold
(-b_gate >= 0) and an output intercept. Two stages, cheap enough for a 2-core CPU on a 135M model:

1. Sequential layer-wise fit. Teacher (the original model) and student advance through the layers together on
   calibration sequences. At layer l the student's FFN reads the student's own post-attention residual m_s and is
   fitted so that the residual after the layer equals the teacher's: target y = teacher_out_l - m_s, so errors
   from earlier layers are corrected rather than compounded.
   - Sign-aware swap: silu(g)*u keeps the part of a neuron where u < 0, relu(g)*relu(u) drops it. Per neuron we
     keep the half (u > 0 or u < 0) that carries more of the output energy: flipping the signs of up row j and
     down column j turns relu(g)*relu(-u)*(-d_j) into the kept half.
   - Thresholds (when max_active < 1): where a layer has more active neurons than max_active, every neuron drops
     the same share of its active tokens, those with the smallest gate values, through its gate bias.
   - Down matrix and intercept in closed form (ridge regression on the dReLU activations; held-out sequences pick
     the ridge strength).
2. End-to-end distillation: KL from the teacher's next-token distribution (its top_k tokens plus one bucket for
   the rest of the vocabulary) to the student's, training the FFN weights and down intercepts; the thresholds stay.

Under torchrun every rank takes its share of the sequences and per-rank sums are all-reduced (distributed.py),
so N ranks compute what one process computes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from turbosparse.errors import TrainingError
from turbosparse.predictor_train.distributed import SINGLE, Dist
from turbosparse.predictor_train.layers import attention_half, causal_mask, embed, position_embeddings
from turbosparse.predictor_train.modeling import DReluMLP

log = logging.getLogger(__name__)


@dataclass
class RelufyConfig:
    seq_len: int = 256  # tokens per calibration sequence
    layerwise_seqs: int = 128  # sequences held in memory for stage 1
    ridges: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)  # candidate ridge strengths, relative to mean diag(A^T A)
    val_every: int = 8  # every val_every-th sequence is held out to choose the ridge strength
    max_active: float = 1.0  # cap on each layer's share of active neurons, reached with thresholds (1.0: none)
    finetune_steps: int = 60  # end-to-end KL steps (0 skips stage 2)
    finetune_batch: int = 8  # sequences per step
    finetune_lr: float = 1e-4
    finetune_warmup: int = 5
    top_k: int = 32  # teacher tokens per position the end-to-end KL matches (the rest is one bucket)
    flip_signs: bool = True
    seed: int = 0


@dataclass
class LayerFit:
    layer: int
    ridge: float  # the ridge strength the held-out sequences chose
    val_mse: float  # held-out MSE of the fitted FFN output against its target
    target_var: float  # variance of the target, for scale
    active_plain: float  # share of neurons with relu(g)*relu(u) != 0 before thresholds
    active: float  # ... after thresholds
    flipped: float  # share of neurons whose up/down signs were flipped


@dataclass
class RelufyResult:
    layers: list[LayerFit] = field(default_factory=list)
    finetune_losses: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _check_swiglu(model: LlamaForCausalLM) -> None:
    if any(isinstance(layer.mlp, DReluMLP) for layer in model.model.layers):
        raise TrainingError("the model is already dReLU: relufy takes a SwiGLU (silu-gated) model")
    act = getattr(model.config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise TrainingError(f"relufy takes a SwiGLU model, this one has hidden_act={act!r}")


def drelu_student(teacher: LlamaForCausalLM) -> LlamaForCausalLM:
    """A copy of the teacher whose FFNs are DReluMLPs with the teacher's matrices and zero biases."""
    student = copy.deepcopy(teacher)
    cfg = student.config
    cfg.hidden_act, cfg.mlp_bias = "relu", True
    for layer in student.model.layers:
        old = layer.mlp
        new = DReluMLP(cfg.hidden_size, cfg.intermediate_size, bias=True).to(old.gate_proj.weight)
        with torch.no_grad():
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(new, name).weight.copy_(getattr(old, name).weight)
                getattr(new, name).bias.zero_()
        layer.mlp = new
    return student


# ---- stage 1 pieces -------------------------------------------------------------------------------------------
def flip_decision(g: torch.Tensor, u: torch.Tensor, dist: Dist) -> torch.Tensor:
    """[n_ff] bool: neurons whose u < 0 half carries more of silu(g)*u's energy than the u > 0 half."""
    sg = F.silu(g)
    energy = torch.stack([(sg * torch.relu(u)).pow(2).sum(0), (sg * torch.relu(-u)).pow(2).sum(0)]).double()
    dist.sum(energy)
    return energy[1] > energy[0]


def gate_thresholds(g: torch.Tensor, u: torch.Tensor, max_active: float, dist: Dist,
                    iters: int = 40) -> tuple[torch.Tensor, float, float]:  # fmt: skip
    """Per-neuron thresholds t >= 0 (bias -t on the gate) so that the layer's share of active neurons
    (g > t and u > 0) is at most max_active: each neuron keeps the same share of its active tokens, those with
    the largest gate. Bisection on counts summed over ranks. Returns (t, share before, share after)."""
    n_ff = g.shape[1]
    g_active = torch.where(u > 0, g, torch.full_like(g, -math.inf))
    counts = dist.sum(torch.stack([(g_active > 0).sum(0), torch.full((n_ff,), g.shape[0])]).double())
    active, tokens = counts[0], counts[1]
    before = float(active.sum() / tokens.sum())
    t = torch.zeros(n_ff, dtype=g.dtype, device=g.device)
    if before <= max_active:
        return t, before, before
    want = active * (max_active / before)  # tokens each neuron keeps
    hi = dist.max(g_active.clamp(min=0).amax(0))  # every neuron's largest gate value
    lo = t.clone()
    for _ in range(iters):
        mid = (lo + hi) / 2
        kept = dist.sum((g_active > mid).sum(0).double())
        too_many = kept > want
        lo, hi = torch.where(too_many, mid, lo), torch.where(too_many, hi, mid)
    kept = dist.sum((g_active > hi).sum(0).double())
    return hi, before, float(kept.sum() / tokens.sum())


def solve_down(a: torch.Tensor, y: torch.Tensor, val: torch.Tensor, ridges: Sequence[float],
               dist: Dist) -> tuple[torch.Tensor, torch.Tensor, float, float]:  # fmt: skip
    """down [hidden, n_ff] and intercept [hidden] minimising ||a down^T + b - y||^2 + lambda ||down||^2 (the
    intercept unpenalised), lambda = r * mean diag(a^T a). With several candidates r, the held-out rows (val, a
    bool mask over rows) choose it; the final solution uses every row. Returns (down, b, r, held-out MSE)."""
    x = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)

    def normal_equations(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = x[rows], y[rows]  # products in float32 (twice the speed), solved in float64
        return dist.sum((xs.T @ xs).double()), dist.sum((xs.T @ ys).double())

    def solve(gram: torch.Tensor, rhs: torch.Tensor, r: float) -> torch.Tensor:
        reg = torch.full((gram.shape[0],), r * float(gram.diagonal()[:-1].mean()) + 1e-8, dtype=gram.dtype,
                         device=gram.device)  # fmt: skip
        reg[-1] = 0.0
        return torch.linalg.solve(gram + torch.diag(reg), rhs)  # [n_ff + 1, hidden]

    gram_fit, rhs_fit = normal_equations(~val)
    gram_val, rhs_val = normal_equations(val)
    best, best_mse = ridges[0], math.nan
    if len(ridges) > 1 and float(gram_val[-1, -1]) > 0:  # [-1, -1] counts the held-out rows
        xv, yv = x[val].double(), y[val].double()  # few rows
        scores = {}
        for r in ridges:
            sse = dist.sum(((xv @ solve(gram_fit, rhs_fit, r)) - yv).pow(2).sum().reshape(1))
            scores[r] = float(sse) / (float(gram_val[-1, -1]) * y.shape[1])
        best = min(scores, key=scores.__getitem__)
        best_mse = scores[best]
    w = solve(gram_fit + gram_val, rhs_fit + rhs_val, best).to(a.dtype)
    return w[:-1].T.contiguous(), w[-1].contiguous(), best, best_mse


@torch.no_grad()
def fit_layer(mlp: DReluMLP, teacher_mlp, z: torch.Tensor, y: torch.Tensor, val: torch.Tensor, cfg: RelufyConfig,
              dist: Dist) -> tuple[torch.Tensor, LayerFit]:  # fmt: skip
    """Fits one student FFN on inputs z [n, hidden] to targets y [n, hidden]; returns its output and the fit."""
    w_gate, w_up = teacher_mlp.gate_proj.weight, teacher_mlp.up_proj.weight
    g, u = z @ w_gate.T, z @ w_up.T
    flip = flip_decision(g, u, dist) if cfg.flip_signs else torch.zeros(g.shape[1], dtype=torch.bool, device=g.device)
    sign = 1.0 - 2.0 * flip.to(g.dtype)
    u *= sign
    t, plain, active = gate_thresholds(g, u, cfg.max_active, dist)
    a = torch.relu(g - t).mul_(torch.relu(u))
    del g, u
    down, b, ridge, val_mse = solve_down(a, y, val, cfg.ridges, dist)
    mlp.gate_proj.weight.copy_(w_gate)
    mlp.gate_proj.bias.copy_(-t)
    mlp.up_proj.weight.copy_(w_up * sign[:, None])
    mlp.up_proj.bias.zero_()
    mlp.down_proj.weight.copy_(down)
    mlp.down_proj.bias.copy_(b)
    var = dist.sum(
        torch.stack([y.double().sum(), y.double().pow(2).sum(), torch.tensor(float(y.numel()))]).to(y.device)
    )
    target_var = float(var[1] / var[2] - (var[0] / var[2]) ** 2)
    return a @ down.T + b, LayerFit(-1, ridge, val_mse, target_var, plain, active, float(flip.float().mean()))


def layerwise_fit(teacher: LlamaForCausalLM, student: LlamaForCausalLM, seqs: torch.Tensor, val: torch.Tensor,
                  cfg: RelufyConfig, dist: Dist) -> list[LayerFit]:  # fmt: skip
    """Stage 1 on this rank's sequences seqs [n_seq, seq_len]; val [n_seq] marks the held-out ones."""
    fits: list[LayerFit] = []
    with torch.no_grad():
        x_t = embed(teacher, seqs)
        x_s = x_t.clone()
        rope = position_embeddings(teacher, x_t)
        mask = causal_mask(x_t)
        val_rows = val[:, None].expand(seqs.shape).flatten()
    bar = tqdm(range(len(student.model.layers)), desc="relufy: layer-wise fit", unit="layer", disable=not dist.is_main)
    for i in bar:
        lt, ls = teacher.model.layers[i], student.model.layers[i]
        with torch.no_grad():
            m_t = attention_half(lt, x_t, rope, mask)
            x_t = m_t + lt.mlp(lt.post_attention_layernorm(m_t))
            m_s = attention_half(ls, x_s, rope, mask)
            z = ls.post_attention_layernorm(m_s).flatten(0, 1)
            out, fit = fit_layer(ls.mlp, lt.mlp, z, (x_t - m_s).flatten(0, 1), val_rows, cfg, dist)
            x_s = m_s + out.view_as(m_s)
        fit.layer = i
        fits.append(fit)
        log.info("layer %d: active %.3f -> %.3f, ridge %g, held-out mse %.4g (target var %.4g)", i, fit.active_plain,
                 fit.active, fit.ridge, fit.val_mse, fit.target_var)  # fmt: skip
    return fits


# ---- stage 2 --------------------------------------------------------------------------------------------------
@dataclass
class DistillBatch:
    """Token rows and, per position but the last, the teacher's top-k next tokens and their log-probabilities."""

    ids: torch.Tensor  # [b, t] long
    top_ids: torch.Tensor  # [b, t - 1, k] long
    top_logp: torch.Tensor  # [b, t - 1, k] float
    mask: torch.Tensor  # [b, t - 1] float: 1 where the position counts


# distillation targets for the global sequence indices given (a rank passes its share)
Targets = Callable[[list[int]], DistillBatch]


def teacher_targets(teacher: LlamaForCausalLM, seqs: torch.Tensor, top_k: int) -> Targets:
    """Targets computed by a torch teacher on token rows seqs [n_seq, seq_len]."""

    @torch.no_grad()
    def batch(idx: list[int]) -> DistillBatch:
        ids = seqs[idx]
        logp = F.log_softmax(teacher(ids).logits[:, :-1].float(), dim=-1)
        top_logp, top_ids = logp.topk(top_k, dim=-1)
        return DistillBatch(ids, top_ids, top_logp, torch.ones(ids.shape[0], ids.shape[1] - 1))

    return batch


def top_k_kl(logits: torch.Tensor, batch: DistillBatch) -> torch.Tensor:
    """Per position KL(teacher || student) over the teacher's top-k tokens plus one bucket for the rest of the
    vocabulary [b, t - 1]; logits [b, t - 1, vocab] are the student's."""
    s_top = logits.gather(-1, batch.top_ids) - torch.logsumexp(logits, -1, keepdim=True)
    p = batch.top_logp.exp()
    p_rest = (1 - p.sum(-1)).clamp(min=0)
    q_rest = (1 - s_top.exp().sum(-1)).clamp(min=1e-6)
    return (p * (batch.top_logp - s_top)).sum(-1) + p_rest * (p_rest.clamp(min=1e-12).log() - q_rest.log())


def finetune_kl(student: LlamaForCausalLM, targets: Targets, n_seqs: int, cfg: RelufyConfig,
                dist: Dist) -> list[float]:  # fmt: skip
    """Stage 2: AdamW on the FFN weights and down intercepts, cosine schedule; every rank draws the same global
    batch and computes its share, gradients are summed, and the Adam states are sharded over the ranks
    (ZeroRedundancyOptimizer). Returns the KL per step."""
    if cfg.finetune_steps <= 0:
        return []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for p in student.parameters():
        p.requires_grad_(False)
    params = []
    for layer in student.model.layers:
        mlp = layer.mlp
        for tensor in (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, mlp.down_proj.bias):
            if tensor is not None:
                tensor.requires_grad_(True)
                params.append(tensor)
    adam = {"lr": cfg.finetune_lr, "betas": (0.9, 0.95), "weight_decay": 0.0}
    if dist.world > 1:  # each rank keeps the Adam states of its share of the parameters only
        from torch.distributed.optim import ZeroRedundancyOptimizer

        opt: torch.optim.Optimizer = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **adam)
    else:
        opt = torch.optim.AdamW(params, **adam)
    device = params[0].device
    losses: list[float] = []
    student.train()
    try:
        bar = tqdm(range(cfg.finetune_steps), desc="relufy: end-to-end KL", unit="step", disable=not dist.is_main)
        for step in bar:
            warm = min(1.0, (step + 1) / max(1, cfg.finetune_warmup))
            lr = cfg.finetune_lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.finetune_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, n_seqs, (min(cfg.finetune_batch, n_seqs),), generator=gen).tolist()
            mine = idx[dist.rank :: dist.world]
            opt.zero_grad(set_to_none=False)
            sums = torch.zeros(2, dtype=torch.float64, device=device)  # KL sum, positions
            if mine:
                b = targets(mine)
                b = DistillBatch(*(t.to(device) for t in (b.ids, b.top_ids, b.top_logp, b.mask)))
                kl = top_k_kl(student(b.ids).logits[:, :-1].float(), b) * b.mask
                sums += torch.stack([kl.sum().detach().double(), b.mask.sum().double()])
                kl.sum().backward()
            dist.sum(sums)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.sum(p.grad).div_(float(sums[1]))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(sums[0] / sums[1]))
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
    finally:
        student.eval()
        for p in student.parameters():
            p.requires_grad_(False)
    return losses


def relufy(
    teacher: LlamaForCausalLM,
    seqs: np.ndarray | torch.Tensor,
    cfg: RelufyConfig,
    targets: tuple[Targets, int] | None = None,
    dist: Dist = SINGLE,
) -> tuple[LlamaForCausalLM, RelufyResult]:
    """A dReLU copy of the SwiGLU teacher, fitted on calibration token rows seqs [n_seq, seq_len] (all ranks pass
    the same rows) and distilled end to end on `targets` (a function of global sequence indices and the number of
    sequences), by default the teacher's own top-k on seqs."""
    _check_swiglu(teacher)
    seqs = torch.as_tensor(np.asarray(seqs), dtype=torch.long)
    if seqs.ndim != 2:
        raise ValueError(f"seqs must be [n_seq, seq_len], got shape {tuple(seqs.shape)}")
    torch.manual_seed(cfg.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = drelu_student(teacher)
    device = next(teacher.parameters()).device
    result = RelufyResult()
    t0 = time.perf_counter()
    n = min(cfg.layerwise_seqs, len(seqs))
    mine = dist.mine(n)
    val = torch.tensor([i % cfg.val_every == cfg.val_every - 1 for i in mine], dtype=torch.bool, device=device)
    result.layers = layerwise_fit(teacher, student, seqs[mine].to(device), val, cfg, dist)
    t1 = time.perf_counter()
    fn, n_targets = (
        targets if targets is not None else (teacher_targets(teacher, seqs.to(device), cfg.top_k), len(seqs))
    )
    result.finetune_losses = finetune_kl(student, fn, n_targets, cfg, dist)
    result.seconds = {"layerwise": t1 - t0, "finetune": time.perf_counter() - t1}
    return student.eval(), result

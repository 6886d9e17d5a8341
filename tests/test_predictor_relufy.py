"""Relufy (SwiGLU -> dReLU) and the torch evaluation with predictor masks, on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from turbosparse.predictor_train.distributed import Dist
from turbosparse.predictor_train.evaluate import EvalConfig, perplexity, predictor_input, predictor_masks
from turbosparse.predictor_train.layers import attention_half, causal_mask, embed, position_embeddings
from turbosparse.predictor_train.modeling import DReluMLP, Predictor, to_drelu
from turbosparse.predictor_train.relufy import (
    DistillBatch,
    RelufyConfig,
    flip_decision,
    gate_thresholds,
    relufy,
    solve_down,
    top_k_kl,
)

from tinytorch import tiny_drelu, tiny_swiglu


def kl_to(teacher, student, ids: torch.Tensor) -> float:
    with torch.no_grad():
        t = F.log_softmax(teacher(ids).logits, -1).flatten(0, 1)
        s = F.log_softmax(student(ids).logits, -1).flatten(0, 1)
    return float(F.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_layer_by_layer_forward_equals_the_model() -> None:
    model = tiny_swiglu()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        x = embed(model, ids)
        rope, mask = position_embeddings(model, x), causal_mask(x)
        for layer in model.model.layers:
            h = attention_half(layer, x, rope, mask)
            x = h + layer.mlp(layer.post_attention_layernorm(h))
        assert torch.allclose(model.lm_head(model.model.norm(x)), model(ids).logits, atol=1e-5)


def test_flip_keeps_the_stronger_half_of_each_neuron() -> None:
    teacher = tiny_swiglu().model.layers[0].mlp
    z = torch.randn(500, 32)
    with torch.no_grad():
        g, u = teacher.gate_proj(z), teacher.up_proj(z)
    flip = flip_decision(g, u, Dist())
    assert 0 < flip.float().mean() < 1
    sg = F.silu(g)
    kept_pos = (sg * torch.relu(u)).pow(2).sum(0)
    kept_neg = (sg * torch.relu(-u)).pow(2).sum(0)
    assert torch.equal(flip, kept_neg > kept_pos)


def test_thresholds_cap_the_active_share_and_keep_the_largest_gates() -> None:
    gen = torch.Generator().manual_seed(0)
    g, u = torch.randn(4000, 64, generator=gen), torch.randn(4000, 64, generator=gen)
    t, before, after = gate_thresholds(g, u, 0.10, Dist())
    assert before == pytest.approx(0.25, abs=0.02)  # P(g > 0 and u > 0)
    assert after == pytest.approx(0.10, abs=0.005)
    assert (t > 0).all()
    kept = (g > t) & (u > 0)
    assert float(kept.float().mean()) == pytest.approx(after, abs=1e-6)
    # each neuron keeps its largest gates: every kept gate beats every dropped active one
    active = (g > 0) & (u > 0)
    for j in range(4):
        assert g[kept[:, j], j].min() > g[active[:, j] & ~kept[:, j], j].max()
    # under the cap: no thresholds
    t, before, after = gate_thresholds(g, u, 0.5, Dist())
    assert torch.equal(t, torch.zeros(64)) and before == after


def test_down_solve_is_least_squares_with_an_intercept() -> None:
    gen = torch.Generator().manual_seed(1)
    a, y = torch.rand(400, 24, generator=gen), torch.randn(400, 16, generator=gen) + 3.0
    none = torch.zeros(400, dtype=torch.bool)
    down, b, _, _ = solve_down(a, y, none, (1e-9,), Dist())
    x = torch.cat([a, torch.ones(400, 1)], 1).double()
    best = torch.linalg.lstsq(x, y.double()).solution
    assert torch.allclose(down.T.double(), best[:-1], atol=1e-3) and torch.allclose(b.double(), best[-1], atol=1e-3)


def test_held_out_rows_choose_the_ridge() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(120, 64, generator=gen)
    val = torch.arange(120) % 4 == 3
    noisy = a @ torch.randn(64, 16, generator=gen) * 0.1 + torch.randn(120, 16, generator=gen)
    assert solve_down(a, noisy, val, (1e-6, 10.0), Dist())[2] == 10.0  # mostly noise: overfitting hurts
    clean = a @ torch.randn(64, 16, generator=gen)
    assert solve_down(a, clean, val, (1e-6, 10.0), Dist())[2] == 1e-6  # noiseless: the least regularized fit wins


def test_relufy_gets_closer_to_the_teacher_than_the_naive_swap() -> None:
    teacher = tiny_swiglu(layers=3, init=0.2)  # large weights: a peaked next-token distribution
    seqs = np.random.default_rng(0).integers(0, 64, size=(16, 16))
    cfg = RelufyConfig(layerwise_seqs=16, val_every=4, finetune_steps=15, finetune_batch=4, finetune_lr=3e-3,
                       top_k=8)  # fmt: skip
    student, result = relufy(teacher, seqs, cfg)
    naive = to_drelu(tiny_swiglu(layers=3, init=0.2))
    ids = torch.as_tensor(seqs)
    assert all(isinstance(layer.mlp, DReluMLP) for layer in student.model.layers)
    assert kl_to(teacher, student, ids) < 0.5 * kl_to(teacher, naive, ids)
    assert all(f.val_mse < f.target_var for f in result.layers)
    assert result.finetune_losses[-1] < result.finetune_losses[0]
    assert all(0 < f.active < 1 for f in result.layers)
    with pytest.raises(ValueError, match="already dReLU"):
        relufy(student, seqs, cfg)
    with pytest.raises(ValueError, match=r"\[n_seq, seq_len\]"):
        relufy(tiny_swiglu(), seqs[0], cfg)


def test_relufy_thresholds_reach_the_cap() -> None:
    teacher = tiny_swiglu(layers=2, init=0.2)
    seqs = np.random.default_rng(1).integers(0, 64, size=(16, 16))
    student, result = relufy(teacher, seqs, RelufyConfig(layerwise_seqs=16, max_active=0.1, finetune_steps=0))
    for fit, layer in zip(result.layers, student.model.layers, strict=True):
        assert fit.active_plain > 0.15 and fit.active == pytest.approx(0.1, abs=0.01)
        assert (layer.mlp.gate_proj.bias <= 0).all()  # thresholds only ever silence neurons
    rates = []
    hooks = [lay.mlp.down_proj.register_forward_pre_hook(lambda _m, a: rates.append(float((a[0] != 0).float().mean())))
             for lay in student.model.layers]  # fmt: skip
    with torch.no_grad():
        student(torch.as_tensor(seqs))
    for h in hooks:
        h.remove()
    assert rates == pytest.approx([f.active for f in result.layers], abs=0.01)


def test_top_k_kl_is_the_full_kl_when_k_covers_the_vocabulary() -> None:
    gen = torch.Generator().manual_seed(2)
    t_logits, s_logits = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 5, 12, generator=gen)
    t_logp = F.log_softmax(t_logits, -1)
    full = F.kl_div(F.log_softmax(s_logits, -1), t_logp, log_target=True, reduction="none").sum(-1)
    top_logp, top_ids = t_logp.topk(12, -1)
    batch = DistillBatch(torch.zeros(2, 6, dtype=torch.long), top_ids, top_logp, torch.ones(2, 5))
    assert torch.allclose(top_k_kl(s_logits, batch), full, atol=1e-5)
    # with fewer tokens the rest of the vocabulary is one bucket: KL of the coarser distributions, never more
    top_logp, top_ids = t_logp.topk(3, -1)
    coarse = top_k_kl(s_logits, DistillBatch(batch.ids, top_ids, top_logp, batch.mask))
    assert (coarse >= -1e-6).all() and (coarse <= full + 1e-5).all()


def test_predictor_masks_apply_and_count() -> None:
    model = tiny_drelu(init=0.2)
    ids = np.random.default_rng(0).integers(0, 64, size=200).tolist()
    cfg = EvalConfig(n_tokens=200, window=50)
    dense = perplexity(model, ids, cfg)
    everything = [Predictor(32, 4, 48) for _ in range(2)]
    with predictor_masks(model, everything, -math.inf, "residual") as stats:
        assert perplexity(model, ids, cfg) == pytest.approx(dense, rel=1e-6)
    rates = stats.rates()
    assert rates["recall"] == [1.0, 1.0] and rates["predicted_active"] == [1.0, 1.0]
    assert stats.tokens == 200
    with predictor_masks(model, everything, math.inf, "residual_rmsnorm") as stats:
        assert perplexity(model, ids, cfg) != pytest.approx(dense, rel=1e-3)
    assert stats.rates()["recall"] == [0.0, 0.0]
    assert perplexity(model, ids, cfg) == pytest.approx(dense, rel=1e-6)  # hooks removed
    with pytest.raises(ValueError, match="1 predictors for 2 layers"):
        with predictor_masks(model, everything[:1], 0.0, "residual"):
            pass


def test_rmsnorm_input_is_scale_free() -> None:
    h = torch.randn(3, 32)
    assert torch.allclose(predictor_input(7.0 * h, "residual_rmsnorm"), predictor_input(h, "residual_rmsnorm"),
                          atol=1e-5)  # fmt: skip
    assert torch.allclose(predictor_input(h, "residual_rmsnorm").pow(2).mean(-1), torch.ones(3), atol=1e-4)

"""Relufy (SwiGLU -> dReLU) and the torch evaluation with predictor masks, on tiny random models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from turbosparse.predictor_train.evaluate import EvalConfig, perplexity, predictor_input, predictor_masks
from turbosparse.predictor_train.layers import attention_half, causal_mask, embed, position_embeddings
from turbosparse.predictor_train.modeling import DReluMLP, Predictor, to_drelu
from turbosparse.predictor_train.relufy import RelufyConfig, fit_down_ridge, flip_signs, relufy

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


def test_flip_signs_keeps_the_stronger_half_of_each_neuron() -> None:
    teacher = tiny_swiglu().model.layers[0].mlp
    student = DReluMLP(32, 48)
    student.load_state_dict(teacher.state_dict())
    z = torch.randn(500, 32)
    flipped = flip_signs(student, teacher, z)
    assert 0 < flipped.float().mean() < 1
    with torch.no_grad():
        g, u = teacher.gate_proj(z), teacher.up_proj(z)
        kept = torch.where(flipped, torch.relu(-u), torch.relu(u))
        assert torch.allclose(student.activation(z), torch.relu(g) * kept, atol=1e-6)
        # the flipped down column restores the sign: neuron output = relu(g) * u on its kept half
        ref = (torch.relu(g) * torch.where(flipped, -kept, kept)) @ teacher.down_proj.weight.T
        assert torch.allclose(student(z), ref, atol=1e-5)


def test_ridge_down_is_the_least_squares_solution() -> None:
    mlp = DReluMLP(16, 24)
    z, y = torch.randn(400, 16), torch.randn(400, 16)
    assert fit_down_ridge(mlp, z, y, (1e-9,))[0] == 1e-9
    with torch.no_grad():
        a = mlp.activation(z)
        best = torch.linalg.lstsq(a.double(), y.double()).solution.T.float()
        assert torch.allclose(mlp.down_proj.weight, best, atol=1e-3)


def test_held_out_tokens_choose_the_ridge() -> None:
    torch.manual_seed(0)
    mlp = DReluMLP(16, 64)
    z = torch.randn(120, 16)
    with torch.no_grad():
        y = mlp.activation(z) @ torch.randn(64, 16) * 0.1 + torch.randn(120, 16)  # mostly noise: overfitting hurts
    ridge, val = fit_down_ridge(mlp, z, y, (1e-6, 10.0), val_fraction=0.25)
    assert ridge == 10.0 and val > 0
    ridge, _ = fit_down_ridge(mlp, z, mlp.activation(z).detach() @ torch.randn(64, 16), (1e-6, 10.0), 0.25)
    assert ridge == 1e-6  # noiseless: the least regularized fit wins


def test_relufy_gets_closer_to_the_teacher_than_the_naive_swap() -> None:
    teacher = tiny_swiglu(layers=3, init=0.2)  # large weights: a peaked next-token distribution
    seqs = np.random.default_rng(0).integers(0, 64, size=(16, 16))
    cfg = RelufyConfig(layerwise_seqs=16, layerwise_steps=20, layerwise_batch=128, finetune_steps=15, finetune_batch=4,
                       finetune_lr=3e-3)  # fmt: skip
    student, result = relufy(teacher, seqs, cfg)
    naive = to_drelu(tiny_swiglu(layers=3, init=0.2))
    ids = torch.as_tensor(seqs)
    assert all(isinstance(layer.mlp, DReluMLP) for layer in student.model.layers)
    assert kl_to(teacher, student, ids) < 0.5 * kl_to(teacher, naive, ids)
    assert all(f.mse_final <= f.mse_swap for f in result.layers)
    assert result.finetune_losses[-1] < result.finetune_losses[0]
    assert all(0 < f.active < 1 for f in result.layers)
    with pytest.raises(ValueError, match="already dReLU"):
        relufy(student, seqs, cfg)
    with pytest.raises(ValueError, match=r"\[n_seq, seq_len\]"):
        relufy(tiny_swiglu(), seqs[0], cfg)


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

"""Planning neuron groups from collected activations (predictor_train/groups.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from turbosparse.convert.groups import decode_heads
from turbosparse.predictor_train.collect import CollectConfig, collect
from turbosparse.predictor_train.groups import (
    GroupPlanConfig,
    LayerSample,
    balanced_assign,
    checkpoint_layers,
    coactivation_order,
    fit_group_heads,
    group_counts,
    group_scores,
    plan_from_checkpoint,
    plan_groups,
    recall_by_k,
    smallest_k,
    top_k_for,
)

from hfcheckpoints import N_FF, N_LAYER, bamboo_model, save_checkpoint, tiny_config

RANK = 8


def planted_masks(n_tokens: int = 600, n_ff: int = 128, g: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks where hidden clusters of g neurons (scattered over the neuron axis) fire together; the clusters."""
    rng = np.random.default_rng(seed)
    clusters = rng.permutation(n_ff).reshape(-1, g)
    on = rng.random((n_tokens, len(clusters))) < 0.2  # each token switches some clusters on
    mask = np.zeros((n_tokens, n_ff), dtype=bool)
    for c, members in enumerate(clusters):
        mask[:, members] = on[:, [c]] & (rng.random((n_tokens, g)) < 0.8)
    return mask, clusters


def test_balanced_assign_respects_capacity() -> None:
    sim = np.random.default_rng(1).random((12, 3))
    sim[:, 0] += 5.0  # everyone prefers column 0
    assign = balanced_assign(sim, 4)
    assert np.bincount(assign, minlength=3).tolist() == [4, 4, 4]


def test_coactivation_order_recovers_planted_groups() -> None:
    mask, clusters = planted_masks()
    order = coactivation_order(mask, 32, iterations=10, seed=0)
    assert sorted(order.tolist()) == list(range(128))
    found = {frozenset(order[i : i + 32].tolist()) for i in range(0, 128, 32)}
    assert found == {frozenset(c.tolist()) for c in clusters}
    # in the recovered order a token's active neurons fill few groups; in the scattered order they touch all
    assert (group_counts(mask, order, 32) > 0).mean() < 0.3
    assert (group_counts(mask, np.arange(128), 32) > 0).mean() > 0.5


def test_recall_by_k_and_the_plan() -> None:
    mask, _ = planted_masks(seed=2)
    logits = np.where(mask, 2.0, -2.0) + np.random.default_rng(3).normal(0, 0.5, mask.shape)
    order = coactivation_order(mask, 32, seed=0)
    recall = recall_by_k(group_scores(logits, order, 32), group_counts(mask, order, 32))
    assert np.all(np.diff(recall) >= 0) and recall[-1] == 1.0
    assert smallest_k(recall, 0.0) == 1 and smallest_k(recall, 1.0) <= 4
    config = GroupPlanConfig(group_size=32, recall_target=0.95, fit_tokens=400)
    # the logits as the predictor's output: features = the logits, fc2 = identity (no output energies: summed scores)
    sample = LayerSample(features=logits, fc2=np.eye(128, dtype=np.float32), mask=mask, energy=None)
    plan = plan_groups(2, lambda layer: sample, config)
    assert plan.top_k[0] <= 2 and plan.recall[0] >= 0.95  # about 20% of the clusters fire per token
    assert plan.heads is None
    natural = plan_groups(1, lambda layer: sample, GroupPlanConfig(32, 0.95, reorder=False, fit_tokens=400))
    assert natural.top_k[0] > plan.top_k[0] and natural.order[0] == list(range(128))
    # a sample with nothing left to judge k on: said, not numpy's reshape error
    with pytest.raises(ValueError, match=r"holds \d+ tokens: .* fitted on the first 5000 .*--fit-tokens"):
        plan_groups(1, lambda layer: sample, GroupPlanConfig(32, 0.95, fit_tokens=5000))


def test_fitted_heads_recover_a_linear_share() -> None:
    """Where each token's output energy lies in one group, named by a one-hot feature, the square-rooted shares are
    the features themselves: the heads are the identity map."""
    rng = np.random.default_rng(4)
    which = rng.integers(0, 6, size=500)
    features = np.eye(6, dtype=np.float32)[which]
    energy = features * rng.uniform(0.5, 5.0, size=(500, 1))
    assert np.allclose(fit_group_heads(features, energy, ridge=1e-6), np.eye(6), atol=1e-4)


def test_heads_choose_the_groups_that_carry_the_output() -> None:
    """Clusters of neurons fire together but only some carry output energy on a given token (what a feature of the
    predictor tells); summed logits (fc2 sees only which neurons fire) cannot tell the strong clusters from the
    weak, fitted heads can: they hold more of the output energy in fewer groups."""
    rng = np.random.default_rng(5)
    n_tokens, n_ff, g = 1200, 128, 32
    mask, clusters = planted_masks(n_tokens, n_ff, g, seed=6)
    on = np.stack([mask[:, c].any(axis=1) for c in clusters], axis=1)  # [tokens, 4] cluster fired
    strong = on & (rng.random(on.shape) < 0.5)  # half the fired clusters carry the output
    weight = np.zeros((n_tokens, n_ff), dtype=np.float32)
    for c, members in enumerate(clusters):
        weight[:, members] = np.where(strong[:, [c]], 10.0, 0.1)
    energy = mask * weight
    features = np.concatenate([on, strong], axis=1).astype(np.float32)  # [tokens, 8]
    fc2 = np.zeros((n_ff, 8), dtype=np.float32)
    for c, members in enumerate(clusters):
        fc2[members, c] = 1.0  # logits say which clusters fire, not which carry the output
    config = GroupPlanConfig(group_size=g, recall_target=0.5, fit_tokens=800)
    with_heads = plan_groups(1, lambda layer: LayerSample(features, fc2, mask, energy[:800]), config)
    summed = plan_groups(1, lambda layer: LayerSample(features, fc2, mask, None), config)
    assert with_heads.heads is not None and decode_heads(with_heads.heads).shape == (1, n_ff // g, 8)
    assert with_heads.order == summed.order
    order = np.asarray(with_heads.order[0])
    judged = group_scores(energy[800:], order, g)

    def kept(heads: np.ndarray) -> float:
        return float(recall_by_k(features[800:] @ heads.T, judged)[0])  # energy inside each token's best group

    summed_heads = fc2[order].reshape(n_ff // g, g, 8).sum(axis=1)
    assert kept(decode_heads(with_heads.heads)[0]) > 0.85 and kept(summed_heads) < 0.8  # 0.88 and 0.74


def test_a_checkpoints_plan_fits_heads_to_its_ffn_outputs(tmp_path: Path) -> None:
    """checkpoint_layers: the predictor's hidden layer and each neuron's output energy (a_j |down_j|)^2 of a bamboo
    checkpoint over its collection, against the torch model's own FFN; the plan from it carries fitted heads."""
    model = bamboo_model(tiny_config(64, mlp_bias=True), RANK, seed=3)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", tmp_path, extra_config={"turbosparse": {
        "predictor_input": "residual_rmsnorm"}})  # fmt: skip
    seqs = np.random.default_rng(7).integers(0, 64, size=(6, 16))
    coll = collect(model, seqs, tmp_path / "collect", CollectConfig(ffn_io=True))
    n_layer, layer_data = checkpoint_layers(ckpt, tmp_path / "collect", energy_tokens=40)
    assert n_layer == N_LAYER
    for i, layer in enumerate(model.model.layers):
        sample = layer_data(i)
        with torch.no_grad():
            ffn_in = torch.as_tensor(coll.array(i, "ffn_in").astype(np.float32))
            a = layer.mlp.activation(ffn_in).numpy()
            h = torch.as_tensor(coll.residual(i).astype(np.float32))
            hidden = torch.relu(layer.mlp.predictor.fc1(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)))
        want = (a[:40] * np.linalg.norm(layer.mlp.down_proj.weight.detach().numpy(), axis=0)) ** 2
        assert sample.energy is not None and sample.energy.shape == (40, N_FF)
        np.testing.assert_allclose(sample.energy, want, rtol=2e-2, atol=1e-3 * want.max())
        np.testing.assert_allclose(sample.features, hidden.numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_array_equal(sample.mask, coll.mask(i))
    plan = plan_from_checkpoint(ckpt, tmp_path / "collect", GroupPlanConfig(group_size=32, fit_tokens=40))
    assert plan.heads is not None and decode_heads(plan.heads).shape == (N_LAYER, N_FF // 32, RANK)
    # k for another target under the plan's own scores: the plan's k at its target, fewer groups for less recall
    assert top_k_for(plan, ckpt, tmp_path / "collect", plan.recall_target, 40) == plan.top_k
    fewer = top_k_for(plan, ckpt, tmp_path / "collect", 0.3, 40)
    assert all(a <= b for a, b in zip(fewer, plan.top_k, strict=True)) and fewer != plan.top_k
    summed = plan_from_checkpoint(ckpt, tmp_path / "collect", GroupPlanConfig(group_size=32, fit_tokens=40,
                                                                              heads=False))  # fmt: skip
    assert summed.heads is None and summed.order == plan.order
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu")
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: hidden_act 'silu' is not a ReLU-family FFN"):
        checkpoint_layers(ckpt, tmp_path / "collect", energy_tokens=40)

"""Planning neuron groups from collected activations (predictor_train/groups.py)."""

from __future__ import annotations

import numpy as np

from turbosparse.predictor_train.groups import (
    GroupPlanConfig,
    balanced_assign,
    coactivation_order,
    group_counts,
    group_scores,
    plan_groups,
    recall_by_k,
    smallest_k,
)


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
    plan = plan_groups(2, lambda layer: (logits, mask), config)
    assert plan.top_k[0] <= 2 and plan.recall[0] >= 0.95  # about 20% of the clusters fire per token
    natural = plan_groups(1, lambda layer: (logits, mask), GroupPlanConfig(32, 0.95, reorder=False, fit_tokens=400))
    assert natural.top_k[0] > plan.top_k[0] and natural.order[0] == list(range(128))

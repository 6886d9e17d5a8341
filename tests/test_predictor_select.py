"""Selection: the cheapest (rank, threshold) that reaches the recall target, priced in bytes read per token."""

from __future__ import annotations

import pytest
import torch

from turbosparse.predictor_train.modeling import Predictor
from turbosparse.predictor_train.select import Candidate, CostModel, choose, measure

COST = CostModel(hidden=100, n_ff=400, quant="f16")


def cand(rank: int, points: list[tuple[float, float, float]], true_rate: float = 0.1) -> Candidate:
    """points: (threshold, recall, predicted_rate)."""
    t, r, p = zip(*points, strict=True)
    return Candidate(rank, t, r, p, tuple(true_rate * ri / pi for ri, pi in zip(r, p, strict=True)), true_rate)


def test_cost_model_counts_predictor_and_active_rows() -> None:
    assert COST.predictor_bytes(8) == (100 * 8 + 8 * 400) * 2
    assert COST.ffn_bytes(0.25) == 0.25 * 400 * 3 * 100 * 2
    with pytest.raises(ValueError, match="unknown quant"):
        CostModel(1, 1, "q3_x")


def test_choose_picks_the_cheapest_config_meeting_recall() -> None:
    small = cand(8, [(-0.5, 0.85, 0.15), (-1.0, 0.91, 0.30), (-2.0, 0.97, 0.50)])
    large = cand(64, [(-0.5, 0.92, 0.14), (-1.0, 0.96, 0.20)])
    # rank 8 at -1.0: 8000 + 72000 = 80000 bytes; rank 64 at -0.5: 64000 + 33600 = 97600 bytes
    c = choose([small, large], 0.9, COST)
    assert (c.rank, c.threshold, c.met_target) == (8, -1.0, True)
    assert c.cost_bytes == pytest.approx(COST.cost(8, 0.30))
    # where FFN rows are long (hidden 1000), flagging fewer neurons pays for the larger predictor:
    # rank 8: 22400 + 720000 bytes; rank 64: 179200 + 336000 bytes
    assert choose([small, large], 0.9, CostModel(hidden=1000, n_ff=400, quant="f16")).rank == 64
    # higher target: only the lowest thresholds qualify
    c = choose([small, large], 0.95, COST)
    assert (c.rank, c.threshold) == (64, -1.0)


def test_choose_falls_back_to_the_best_recall_and_skips_non_negative_thresholds() -> None:
    c = choose([cand(8, [(0.0, 0.99, 0.2), (-1.0, 0.80, 0.3), (-2.0, 0.85, 0.5)])], 0.9, COST)
    assert (c.threshold, c.met_target) == (-2.0, False)
    with pytest.raises(ValueError, match="no candidate"):
        choose([], 0.9, COST)


def test_measure_counts_recall_and_rates() -> None:
    p = Predictor(2, 1, 3)
    with torch.no_grad():
        p.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]))
        p.fc2.weight.copy_(torch.tensor([[1.0], [-1.0], [2.0]]))
    x = torch.tensor([[1.0, 0.0], [2.0, 5.0]])  # relu(fc1 x) = 1, 2 -> logits [1,-1,2], [2,-2,4]
    y = torch.tensor([[True, True, False], [True, False, True]])
    m = measure(p, x, y, (-1.5, 0.0))
    assert m.recall == (pytest.approx(1.0), pytest.approx(3 / 4))
    assert m.predicted_rate == (pytest.approx(5 / 6), pytest.approx(4 / 6))
    assert m.true_rate == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="does not match the mask"):
        measure(p, x, y[:, :2])

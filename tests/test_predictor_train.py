"""Predictor training: recall rises on a learnable synthetic task; bad inputs are clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbosparse.predictor_train.select import measure
from turbosparse.predictor_train.train import LayerData, TrainConfig, train_predictor


def synthetic(n: int = 4000, hidden: int = 32, n_ff: int = 64, rank: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Masks that a rank-8 predictor can represent: active where a hidden low-rank ReLU net is > 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, hidden, generator=g)
    w1, w2 = torch.randn(rank, hidden, generator=g), torch.randn(n_ff, rank, generator=g)
    logits = torch.relu(x @ w1.T / hidden**0.5) @ w2.T
    return x.numpy(), (logits > 1.0).numpy()


def test_training_raises_recall_on_a_learnable_task() -> None:
    x, y = synthetic()
    assert 0.1 < y.mean() < 0.5
    data = LayerData.split(x, y, 0.2, "residual")
    cfg = TrainConfig(rank=16, max_steps=400, batch_size=256, lr=1e-2, eval_every=50, patience=4)
    res = train_predictor(data, cfg)
    untrained = train_predictor(data, TrainConfig(rank=16, max_steps=0))
    before = measure(untrained.predictor, data.x_val, data.y_val, (0.0,))
    after = measure(res.predictor, data.x_val, data.y_val, (0.0,))
    assert res.history[-1][1] < res.history[0][1]
    assert after.recall[0] > 0.9
    assert after.recall[0] > before.recall[0] + 0.2
    assert after.precision[0] > y.mean() + 0.2  # far better than flagging at random
    assert after.predicted_rate[0] < 2.5 * after.true_rate


def test_early_stopping_keeps_the_best_and_stops() -> None:
    x, y = synthetic(n=600)
    data = LayerData.split(x, y, 0.5, "residual")
    res = train_predictor(data, TrainConfig(rank=64, max_steps=5000, batch_size=64, lr=3e-2, eval_every=20,
                                            patience=2))  # fmt: skip
    assert res.steps < 5000
    assert res.best_val_loss == min(v for _, v in res.history)


def test_bad_inputs_are_clear_errors() -> None:
    x, y = synthetic(n=100)
    with pytest.raises(ValueError, match="same n"):
        LayerData.split(x[:50], y, 0.1, "residual")
    with pytest.raises(ValueError, match="unknown predictor input"):
        LayerData.split(x, y, 0.1, "normed")
    with pytest.raises(ValueError, match="val_fraction"):
        LayerData.split(x, y, 1.5, "residual")
    with pytest.raises(ValueError, match="rank"):
        train_predictor(LayerData.split(x, y, 0.1, "residual"), TrainConfig(rank=0))

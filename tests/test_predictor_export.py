"""Export: per-layer thresholds folded into one global threshold; bamboo and PowerInfer folders round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from turbosparse.predictor_train.export import (
    PredictorSet,
    fold_thresholds,
    load_bamboo_predictors,
    load_powerinfer,
    save_bamboo,
    save_powerinfer,
)
from turbosparse.predictor_train.modeling import Predictor, load_causal_lm
from turbosparse.predictor_train.select import GLOBAL_THRESHOLD

from tinytorch import save_word_tokenizer, tiny_drelu, tiny_swiglu


def predictors(ranks: tuple[int, ...] = (4, 8), hidden: int = 32, n_ff: int = 48) -> list[Predictor]:
    torch.manual_seed(1)
    return [Predictor(hidden, r, n_ff) for r in ranks]


def test_folding_keeps_every_decision() -> None:
    preds = predictors()
    thresholds = [-0.3, -2.5]
    folded = fold_thresholds(preds, thresholds)
    x = torch.randn(200, 32)
    with torch.no_grad():
        for p, q, t in zip(preds, folded, thresholds, strict=True):
            assert torch.equal(p(x) >= t, q(x) >= GLOBAL_THRESHOLD)
            assert not torch.equal(p(x) >= t, p(x) >= GLOBAL_THRESHOLD)  # the fold did change something
    with pytest.raises(ValueError, match="same sign"):
        fold_thresholds(preds, [-1.0, 0.5])
    with pytest.raises(ValueError, match="2 predictors but 1 thresholds"):
        fold_thresholds(preds, [-1.0])


def test_bamboo_round_trip(tmp_path: Path) -> None:
    model = tiny_drelu()
    save_word_tokenizer(tmp_path / "tok")
    pset = PredictorSet(predictors(), -1.0, "residual_rmsnorm", [0.2, 0.3], [0.35, 0.5])
    save_bamboo(model, pset, tmp_path / "out", tmp_path / "tok")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "bamboo"
    assert config["turbosparse"] == {"predictor_threshold": -1.0, "predictor_input": "residual_rmsnorm",
                                     "activation_rates": [0.2, 0.3], "predicted_rates": [0.35, 0.5]}  # fmt: skip
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    back = load_bamboo_predictors(tmp_path / "out")
    assert (back.threshold, back.input_kind, back.predicted_rates) == (-1.0, "residual_rmsnorm", [0.35, 0.5])
    for p, q in zip(pset.predictors, back.predictors, strict=True):
        assert torch.equal(p.fc1.weight, q.fc1.weight) and torch.equal(p.fc2.weight, q.fc2.weight)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.allclose(load_causal_lm(tmp_path / "out")(ids).logits, model(ids).logits, atol=1e-6)


def test_bamboo_refuses_mismatched_predictors_and_swiglu_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 predictors for a model of 2 layers"):
        save_bamboo(tiny_drelu(), PredictorSet(predictors((4, 4, 4)), -1.0, "residual"), tmp_path)
    with pytest.raises(ValueError, match=r"layer 1: predictor fc1 \(8, 16\)"):
        save_bamboo(tiny_drelu(), PredictorSet([*predictors((4,)), Predictor(16, 8, 48)], -1.0, "residual"), tmp_path)
    with pytest.raises(ValueError, match="needs dReLU FFNs"):
        save_bamboo(tiny_swiglu(), PredictorSet(predictors(), -1.0, "residual"), tmp_path)
    with pytest.raises(ValueError, match="predictor input"):
        PredictorSet(predictors(), -1.0, "normed")
    with pytest.raises(ValueError, match="activation_rates has 1 entries for 2 layers"):
        PredictorSet(predictors(), -1.0, "residual", [0.1])


def test_powerinfer_round_trip_and_errors(tmp_path: Path) -> None:
    pset = PredictorSet(predictors((4, 8, 16)), -1.0, "residual_rmsnorm")
    save_powerinfer(pset, tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.json", "model_0.pt", "model_1.pt", "model_2.pt"]
    state = torch.load(tmp_path / "model_1.pt", weights_only=True)
    assert set(state) == {"fc1.weight", "fc2.weight"} and state["fc1.weight"].shape == (8, 32)
    assert json.loads((tmp_path / "config.json").read_text())["sparse_threshold"] == -1.0
    back = load_powerinfer(tmp_path)
    assert (back.threshold, back.input_kind) == (-1.0, "residual_rmsnorm")
    for p, q in zip(pset.predictors, back.predictors, strict=True):
        assert torch.equal(p.fc2.weight, q.fc2.weight)
    (tmp_path / "model_1.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model_1\.pt is missing"):
        load_powerinfer(tmp_path)
    torch.save({"fc1.weight": torch.zeros(4, 32), "fc2.weight": torch.zeros(48, 5)}, tmp_path / "model_1.pt")
    with pytest.raises(ValueError, match="do not chain"):
        load_powerinfer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a predictor folder"):
        load_powerinfer(tmp_path / "nowhere")

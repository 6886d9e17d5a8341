"""Training every layer's predictor from a collection: train candidate ranks, measure, choose, fold.

Per layer, ranks are tried from small to large; a larger rank is skipped once even a perfect predictor of
that rank (flagging exactly the truly active neurons) would cost more than the best choice so far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from turbosparse.predictor_train.collect import Collection
from turbosparse.predictor_train.distributed import SINGLE, Dist
from turbosparse.predictor_train.export import PredictorSet, fold_thresholds
from turbosparse.predictor_train.modeling import Predictor
from turbosparse.predictor_train.select import (
    DEFAULT_THRESHOLDS,
    GLOBAL_THRESHOLD,
    Candidate,
    Choice,
    CostModel,
    choose,
    measure,
)
from turbosparse.predictor_train.train import LayerData, TrainConfig, train_predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictorTrainConfig:
    recall_target: float = 0.9
    ranks: tuple[int, ...] = (32, 64, 128, 256)
    quant: str = "q8_0"  # ggml type the cost model prices weights at
    val_fraction: float = 0.1
    max_tokens: int | None = None  # use at most this many collected tokens per layer
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TrainedPredictors:
    predictors: PredictorSet  # folded to the global threshold
    choices: list[Choice]
    frontiers: list[list[Candidate]]  # every candidate measured, per layer


def train_layer(
    data: LayerData, cfg: PredictorTrainConfig, cost: CostModel
) -> tuple[Predictor, Choice, list[Candidate]]:
    trained: dict[int, Predictor] = {}
    cands: list[Candidate] = []
    best: Choice | None = None
    true_rate = float(data.y_val.float().mean())
    for rank in sorted(cfg.ranks):
        # no predictor of this rank costs less than its weights plus the truly active neurons
        if best is not None and best.met_target and cost.cost(rank, true_rate) >= best.cost_bytes:
            break
        res = train_predictor(data, replace(cfg.train, rank=rank))
        trained[rank] = res.predictor
        cands.append(measure(res.predictor, data.x_val, data.y_val, DEFAULT_THRESHOLDS))
        best = choose(cands, cfg.recall_target, cost)
    assert best is not None
    return trained[best.rank], best, cands


def train_all(collection: Collection, cfg: PredictorTrainConfig, dist: Dist = SINGLE) -> TrainedPredictors:
    """Every layer's predictor; under torchrun the layers are dealt out over the ranks (each layer's training
    depends only on its own data and seed) and every rank returns the whole set."""
    m = collection.manifest
    cost = CostModel(m.hidden, m.n_ff, cfg.quant)
    n = m.n_tokens if cfg.max_tokens is None else min(cfg.max_tokens, m.n_tokens)
    mine: dict[int, tuple[dict, Choice, list[Candidate]]] = {}
    layers = dist.mine(m.n_layer)
    for i in tqdm(layers, desc="train predictors", unit="layer", disable=not dist.is_main):
        x = np.asarray(collection.residual(i)[:n])
        y = collection.mask(i, slice(0, n))
        data = LayerData.split(x, y, cfg.val_fraction, cfg.train.input_kind, seed=cfg.train.seed + i)
        pred, choice, cands = train_layer(data.to(cfg.train.device), cfg, cost)
        log.info("layer %d: rank %d threshold %.3f recall %.3f predicted %.3f true %.3f", i, choice.rank,
                 choice.threshold, choice.recall, choice.predicted_rate, choice.true_rate)  # fmt: skip
        mine[i] = ({k: v.cpu() for k, v in pred.state_dict().items()}, choice, cands)
    trained = {i: r for part in dist.gather_objects(mine) for i, r in part.items()}  # type: ignore[union-attr]
    preds: list[Predictor] = []
    for i in range(m.n_layer):
        state = trained[i][0]
        pred = Predictor(m.hidden, state["fc1.weight"].shape[0], m.n_ff)
        pred.load_state_dict(state)
        preds.append(pred.eval())
    choices = [trained[i][1] for i in range(m.n_layer)]
    frontiers = [trained[i][2] for i in range(m.n_layer)]
    folded = fold_thresholds(preds, [c.threshold for c in choices], GLOBAL_THRESHOLD)
    pset = PredictorSet(folded, GLOBAL_THRESHOLD, cfg.train.input_kind, [c.true_rate for c in choices],
                        [c.predicted_rate for c in choices])  # fmt: skip
    return TrainedPredictors(pset, choices, frontiers)

"""Training one layer's activation predictor: logits = fc2(relu(fc1(x))), no biases.

Loss: binary cross-entropy per neuron with the positives (active neurons) up-weighted by
(1 - p_j) / p_j, p_j the neuron's active rate on the training split (clipped to [1, max_pos_weight]): at logit
0 the predictor then flags a neuron as soon as it is more likely active than usual, which favours recall;
the threshold is tuned afterwards (select.py). AdamW, fixed seed, early stopping on the validation loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from turbosparse.predictor_train.evaluate import predictor_input
from turbosparse.predictor_train.modeling import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 64
    max_steps: int = 400
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.01
    max_pos_weight: float = 20.0
    eval_every: int = 50
    patience: int = 3  # evaluations without a better validation loss before stopping
    input_kind: str = "residual_rmsnorm"  # what the engine feeds the predictor: residual | residual_rmsnorm
    seed: int = 0
    device: str = "cpu"  # torch device the predictors train on


@dataclass
class TrainResult:
    predictor: Predictor
    steps: int
    best_val_loss: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)


@dataclass(frozen=True)
class LayerData:
    """One layer's examples: x the residual before the FFN norm [n, hidden], y the active mask [n, n_ff]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @staticmethod
    def split(x: np.ndarray, y: np.ndarray, val_fraction: float, input_kind: str, seed: int = 0) -> LayerData:
        """Shuffled train/validation split; x is converted to the predictor's input (float32)."""
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"x [n, hidden] and y [n, n_ff] must have the same n: got {x.shape} and {y.shape}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(1, int(len(x) * val_fraction))
        if len(x) - n_val < 1:
            raise ValueError(f"too few examples ({len(x)}) for a train/validation split")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        xt = predictor_input(torch.as_tensor(np.asarray(x, dtype=np.float32)), input_kind)
        yt = torch.as_tensor(np.asarray(y, dtype=bool))
        val, tr = perm[:n_val], perm[n_val:]
        return LayerData(xt[tr], yt[tr], xt[val], yt[val])

    def to(self, device: str | torch.device) -> LayerData:
        return LayerData(self.x_train.to(device), self.y_train.to(device), self.x_val.to(device), self.y_val.to(device))


def pos_weight(y: torch.Tensor, max_weight: float) -> torch.Tensor:
    p = y.float().mean(0).clamp(min=1e-6)
    return ((1 - p) / p).clamp(1.0, max_weight)


@torch.no_grad()
def _val_loss(pred: Predictor, data: LayerData, pw: torch.Tensor, chunk: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(data.x_val), chunk):
        logits = pred(data.x_val[i : i + chunk])
        total += float(F.binary_cross_entropy_with_logits(logits, data.y_val[i : i + chunk].float(), pos_weight=pw,
                                                          reduction="sum"))  # fmt: skip
    return total / data.y_val.numel()


def train_predictor(data: LayerData, cfg: TrainConfig) -> TrainResult:
    if cfg.rank < 1:
        raise ValueError(f"rank must be >= 1, got {cfg.rank}")
    torch.manual_seed(cfg.seed)
    hidden, n_ff = data.x_train.shape[1], data.y_train.shape[1]
    pred = Predictor(hidden, cfg.rank, n_ff).to(data.x_train.device)
    pw = pos_weight(data.y_train, cfg.max_pos_weight)
    opt = torch.optim.AdamW(pred.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (_val_loss(pred, data, pw), 0, {k: v.clone() for k, v in pred.state_dict().items()})
    history = [(0, best[0])]
    bad = 0
    step = 0
    for step in range(1, cfg.max_steps + 1):
        idx = torch.randint(0, len(data.x_train), (min(cfg.batch_size, len(data.x_train)),), generator=gen)
        idx = idx.to(data.x_train.device)
        loss = F.binary_cross_entropy_with_logits(pred(data.x_train[idx]), data.y_train[idx].float(), pos_weight=pw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = _val_loss(pred, data, pw)
            history.append((step, val))
            if val < best[0]:
                best, bad = (val, step, {k: v.clone() for k, v in pred.state_dict().items()}), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
    pred.load_state_dict(best[2])
    log.debug("rank %d: best validation loss %.4f at step %d of %d", cfg.rank, best[0], best[1], step)
    return TrainResult(pred.eval(), step, best[0], history)

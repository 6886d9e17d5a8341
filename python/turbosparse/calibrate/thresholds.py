"""Per-layer thresholds from the calibration samples (collect.py) for a target sparsity.

Sparsity is the share of up and down rows a token does not read, (skipped up rows + skipped down rows) / 2 n_ff,
averaged over the layers: what the thresholds save in bytes beside the dense gate. Two rules:

- "gate" (CATS): one threshold per layer on |act(gate)|; up and down rows go together.
- "gate+act" (the default): a threshold on |act(gate)| decides which up rows are computed, then one on the
  activation |a_j| decides which down rows are read, so that neurons whose up value turns out small cost no down row.

A layer's choices are pairs (share of up rows, share of down rows) on a grid; each has an error, the share of the
layer's FFN output energy it drops (sum of |a_j|^2 |down_j|^2 over the dropped samples - cross terms neglected).
"uniform" allocation gives every layer the same pair: of the pairs reaching the target, the one of least summed
error. "error" allocation (pipeline.py) measures each layer's effect on the model's output - the KL divergence of the
logits from the dense model's when that layer alone takes the uniform pair - scales the layer's error curve to it,
and picks per layer the pairs that minimise the summed estimated KL for the target mean (a Lagrangian sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from turbosparse.binding import FfnThresholds
from turbosparse.calibrate.collect import LayerSamples
from turbosparse.errors import CalibrationError

Method = Literal["gate", "gate+act"]
Allocation = Literal["error", "uniform"]
METHODS: tuple[Method, ...] = ("gate", "gate+act")
ALLOCATIONS: tuple[Allocation, ...] = ("error", "uniform")
GRID_STEP = 0.025  # shares of rows kept, up and down, are multiples of this
MAX_SPARSITY = 1 - GRID_STEP  # the least a layer keeps is one step of up and down rows


@dataclass(frozen=True)
class Option:
    """One layer's choice: keep `up` of the up rows and `down` of the down rows (shares of the samples)."""

    up: float
    down: float
    gate_threshold: float
    act_threshold: float
    error: float  # share of the layer's FFN output energy dropped

    @property
    def kept(self) -> float:
        """Share of up and down rows read."""
        return (self.up + self.down) / 2


@dataclass(frozen=True)
class Calibration:
    """Thresholds for one target sparsity, with each layer's expected shares of rows read (on the samples)."""

    sparsity: float
    thresholds: FfnThresholds
    up_rates: list[float]
    down_rates: list[float]

    @property
    def kept(self) -> float:
        return float(np.mean([(u + d) / 2 for u, d in zip(self.up_rates, self.down_rates, strict=True)]))

    @classmethod
    def of(cls, sparsity: float, chosen: Sequence[Option]) -> Calibration:
        return cls(
            sparsity=sparsity,
            thresholds=FfnThresholds([o.gate_threshold for o in chosen], [o.act_threshold for o in chosen]),
            up_rates=[float(o.up) for o in chosen],
            down_rates=[float(o.down) for o in chosen],
        )


def _top_threshold(desc: np.ndarray, n_keep: int) -> float:
    """The threshold keeping the n_keep largest values of desc (sorted descending) with '>='; 0 keeps all."""
    if n_keep >= desc.size:
        return 0.0
    if n_keep <= 0:
        return float(np.nextafter(desc[0], np.inf))
    return float(desc[n_keep - 1])


def _grid(top: float) -> np.ndarray:
    """Shares GRID_STEP, 2 GRID_STEP, ... up to top (inclusive)."""
    return np.arange(1, round(top / GRID_STEP) + 1) * GRID_STEP


def layer_options(s: LayerSamples, method: Method) -> list[Option]:
    """Every grid choice for one layer, with its error. "gate": up and down shares equal; "gate+act": down <= up.

    One sort by each score: for a share of up rows (the largest |act(gate)|), the neurons kept for down are the
    largest |a| among them, read off the |a|-sorted order with the gate mask."""
    n = s.gate.size
    energy = s.energy.astype(np.float64)
    total = float(energy.sum())
    norm = 1.0 / total if total > 0 else 0.0
    gates_desc = np.sort(s.gate)[::-1]
    by_value = np.argsort(-s.value, kind="stable")
    gate_v, value_v, energy_v = s.gate[by_value], s.value[by_value], energy[by_value]
    options = []
    for up in _grid(1.0):
        n_up = min(round(float(up) * n), n)
        t_gate = _top_threshold(gates_desc, n_up)
        in_up = gate_v >= t_gate  # in |a| order
        if method == "gate":
            options.append(Option(up, up, t_gate, 0.0, (total - float(energy_v[in_up].sum())) * norm))
            continue
        values = value_v[in_up]
        cum = np.concatenate([[0.0], np.cumsum(energy_v[in_up])])
        for down in _grid(up):
            n_down = min(round(float(down) * n), values.size)
            t_act = 0.0 if n_down >= values.size else _top_threshold(values, n_down)
            options.append(Option(up, down, t_gate, t_act, (total - cum[n_down]) * norm))
    return options


@dataclass
class Planner:
    """Threshold choices for every layer of a model, for any target sparsity."""

    samples: list[LayerSamples]
    method: Method = "gate+act"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"method must be one of {METHODS}, got {self.method!r}")
        self.options = [layer_options(s, self.method) for s in self.samples]

    def uniform(self, sparsity: float) -> list[Option]:
        """The same (up, down) pair in every layer: of the pairs keeping at most 1 - sparsity, the one of least
        summed error (the most rows kept among equals)."""
        _check(sparsity)
        by_pair: dict[tuple[float, float], list[Option]] = {}
        for opts in self.options:
            for o in opts:
                by_pair.setdefault((round(o.up, 6), round(o.down, 6)), []).append(o)
        fitting = [v for v in by_pair.values() if v[0].kept <= 1 - sparsity + 1e-9 and len(v) == len(self.options)]
        if not fitting:
            raise CalibrationError(f"no grid choice keeps at most {1 - sparsity:.3f} of the rows")
        return min(fitting, key=lambda v: (sum(o.error for o in v), -v[0].kept))

    def allocated(self, sparsity: float, weights: Sequence[float]) -> list[Option]:
        """Per layer the option minimising weight * error + lam * kept, lam swept so that the mean kept share is at
        most 1 - sparsity: the least summed weighted error for the target (the layers' curves are near convex)."""
        _check(sparsity)
        if len(weights) != len(self.options) or any(not w >= 0 for w in weights):
            raise CalibrationError(f"expected {len(self.options)} non-negative layer weights, got {list(weights)!r}")
        kept = 1.0 - sparsity
        # the choice is the same for weights at any scale (lam scales with them): at the largest weighted error's,
        # so that the sweep's bracket and resolution suit any model (effects of 1e-25 chose 2.5 % kept for 60 %)
        scale = max(w * max(o.error for o in opts) for w, opts in zip(weights, self.options, strict=True))
        weights = [w / scale for w in weights] if scale > 0 else list(weights)

        def pick(lam: float) -> list[Option]:
            pairs = zip(weights, self.options, strict=True)
            return [min(opts, key=lambda o, w=w: w * o.error + lam * o.kept) for w, opts in pairs]

        def mean_kept(lam: float) -> float:
            return float(np.mean([o.kept for o in pick(lam)]))

        lo, hi = 0.0, 1.0
        while mean_kept(hi) > kept + 1e-9:
            lo, hi = hi, hi * 4
            if hi > 1e15:
                raise CalibrationError(f"no allocation keeps at most {kept:.3f} of the rows")
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mean_kept(mid) > kept + 1e-9 else (lo, mid)
        return pick(hi)


def _check(sparsity: float) -> None:
    if not 0.0 <= sparsity <= MAX_SPARSITY:
        raise CalibrationError(f"sparsity must be in [0, {MAX_SPARSITY}], got {sparsity}")


def layer_weights(reference: Sequence[Option], effect: Sequence[float]) -> list[float] | None:
    """Scales turning each layer's error into its measured effect on the output: effect / the error of the option
    it was measured at (an effect too small to tell from zero counts as a twentieth of the mean). A layer whose
    option dropped nothing gets the largest scale; None when no option dropped anything."""
    floor = 0.05 * float(np.mean(effect)) if len(effect) else 0.0
    weights = [max(e, floor) / o.error if o.error > 0 else None for o, e in zip(reference, effect, strict=True)]
    known = [w for w in weights if w is not None]
    return [w if w is not None else max(known) for w in weights] if known else None


def dense_calibration(n_layer: int) -> Calibration:
    zeros = [0.0] * n_layer
    return Calibration(0.0, FfnThresholds(zeros, list(zeros)), [1.0] * n_layer, [1.0] * n_layer)

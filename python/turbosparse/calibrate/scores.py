"""Per-neuron scales of the threshold scores: what a neuron's activation is worth at the layer's output.

Dropping neuron j from the FFN's output changes it by a_j down_j, of size |a_j| |down_j|. "plain" scores rank
neurons by |act(gate_j)| and |a_j| alone, as if every down column had the same norm; "weighted" scores (WINA-style)
multiply in what the engine cannot see at selection time but the weights fix:

    down row j is read   when |a_j| c_j >= t_act            c_j = |down_j|, the column norm of the down matrix
    up row j is computed when |act(gate_j)| c_j m_j >= t_gate   m_j = E|up_j| on the calibration text: up_j is not
                                                                 known before its row is read

Each layer's scales are divided by their mean (the thresholds then stay on the scale of the plain scores); only their
ratios within a layer change which neurons are kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from turbosparse.binding import FfnScales

Scores = Literal["plain", "weighted"]
SCORES: tuple[Scores, ...] = ("plain", "weighted")


def _unit_mean(scale: np.ndarray) -> np.ndarray:
    """[n_layer, n_ff] divided by each layer's mean (a layer of zeros stays zeros)."""
    mean = scale.mean(axis=1, keepdims=True)
    return (scale / np.where(mean > 0, mean, 1.0)).astype(np.float32)


def score_scales(scores: Scores, down_norms: np.ndarray, mean_abs_up: np.ndarray) -> FfnScales:
    """The engine's scales for a choice of scores; down_norms and mean_abs_up [n_layer, n_ff]."""
    if scores == "plain":
        return FfnScales()
    return FfnScales(gate=_unit_mean(down_norms * mean_abs_up), act=_unit_mean(down_norms))

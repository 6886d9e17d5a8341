"""Like-scaled quant blocks for the two down matrices: the standard down's columns (its blocks run across neurons)
and the transposed down's columns (its blocks run across output dimensions).

The standard down is quantized in blocks of 32 (or 256) neurons along each of its rows, so a neuron whose column is
large sets the scale of its block-mates' weights, which then round coarsely. Whenever the converter chooses the
neurons' order - the default order of a ReLU-family FFN (neuron_order.py) or a group plan's, which puts co-activated
neurons side by side whatever their scale - it also gives every neuron j a positive scale s_j, multiplies down's
column j (and the transposed down's row j) by s_j and divides up's row j (and up's bias) by it:

    down . (act(gate) * up) = (down * s) . (act(gate) * up / s)

for every gated activation here (silu, relu, and dReLU's relu(up / s) = relu(up) / s for s > 0). The FFN is
unchanged, so is which neurons fire (gate and the sign of up are). s_j is the layer's median column root mean square
over column j's, rounded to a power of two (within MAX_SCALE either way; an all-zero column keeps s = 1): a power of
two scales a row's quant blocks exactly - the same codes, each block scale times s - so up and down_t, whose blocks
run along their rows, decode to the same products, and only the standard down's blocks change (exactly unless a
block's fp16 scale falls below fp16's normal range, possible for a row of tiny weights divided by a large s: its
codes then round differently, on a neuron whose down column is small).

Measured on the default model's checkpoint, Q4_0 with its importance matrix, dense perplexity on held-out Macbeth /
news / encyclopedia (README, "Like-scaled down columns"): the default order 167.9 / 310.2 / 143.2 -> 144.4 / 302.4 /
138.2; a G = 32 group plan's order 167.5 / 669.2 / 170.8 -> 151.3 / 307.4 / 141.1. Scales not rounded to a power of
two did as well for the down but changed some of up's codes (ggml's importance-weighted search is exact under powers
of two only), which moved predictor-mode perplexity on encyclopedia from 162.1 to 203.9 (one window of eight);
scaling to the largest |weight| instead of the root mean square made the plan's file worse (191.4 / 410.1 / 200.3).

The transposed down (ffn_down_t, row j = neuron j's output vector), which sparse decoding reads, is blocked along the
output dimensions instead, where a few dimensions of the residual stream carry outsized weights in every neuron's
row. Its column r (output dimension r) is multiplied by a power of two c_r (the median column root mean square over
column r's, as above) and the file holds 1 / c_r per dimension (blk.N.ffn_down_t_scale.weight), by which the engine
multiplies what the transposed down gives (stacked experts share one factor per layer: it applies to their weighted
sum). Default model, Q4_0: exact mode 161.2 / 325.1 / 146.7 -> 152.3 / 292.9 /
136.9, predictor mode 172.0 / 341.2 / 162.1 -> 162.9 / 314.0 / 150.8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from turbosparse.constants import (
    TENSOR_FFN_DOWN,
    TENSOR_FFN_DOWN_T,
    TENSOR_FFN_DOWN_T_EXPS,
    TENSOR_FFN_DOWN_T_SCALE,
)
from turbosparse.convert.arch.base import ROLE_NORM, TensorSpec
from turbosparse.convert.neuron_order import layer_of
from turbosparse.errors import ConvertError

MAX_SCALE = 64.0  # bounds how far an up row moves (a near-dead neuron's down column is near zero)

UP_ROWS = ("blk.{}.ffn_up.weight", "blk.{}.ffn_up.bias")


def column_scales(matrix: np.ndarray) -> np.ndarray:
    """A power of two per column of matrix [rows, columns]: the median column's root mean square over the column's
    (a standard down's columns are its neurons, a transposed down's its output dimensions)."""
    sums = np.zeros(matrix.shape[1])
    for start in range(0, matrix.shape[0], 1024):  # float64 sums without a float64 copy of the whole matrix
        sums += np.square(matrix[start : start + 1024], dtype=np.float64).sum(axis=0)
    rms = np.sqrt(sums / matrix.shape[0])
    live = rms > 0
    scales = np.ones(matrix.shape[1])
    if live.any():
        ratio = np.clip(np.median(rms[live]) / rms[live], 1.0 / MAX_SCALE, MAX_SCALE)
        scales[live] = np.exp2(np.round(np.log2(ratio)))
    return scales.astype(np.float32)


def _rescaled(load: Callable[[], np.ndarray], factor: np.ndarray, axis: int) -> Callable[[], np.ndarray]:
    """load() times factor along axis 0 or the last axis, -1 (a 1-D tensor, a bias, along its only one)."""

    def scaled() -> np.ndarray:
        values = load()
        return values * (factor if values.ndim == 1 or axis != 0 else factor[:, None])

    return scaled


def equalise_down_columns(specs: list[TensorSpec], n_layer: int) -> list[TensorSpec]:
    """specs with every layer's standard down column j times s_j, its transposed down's row j too, and up's row j
    (and bias) divided by s_j; an importance matrix entry of the standard down moves with its column. Layers without
    a standard down are left as they are."""
    by_name = {s.name: s for s in specs}
    factors: dict[str, tuple[np.ndarray, int]] = {}  # tensor name -> (per-neuron factor, neuron axis)
    for layer in range(n_layer):
        down = by_name.get(TENSOR_FFN_DOWN.format(layer))
        if down is None:
            continue
        related = [by_name.get(n.format(layer)) for n in (*UP_ROWS, TENSOR_FFN_DOWN_T)]
        if any(s is not None and s.encoded for s in (down, *related)):
            raise ConvertError(f"{down.origin}: stored bytes cannot be rescaled (convert from the checkpoint)")
        s = column_scales(down.load())
        factors[down.name] = (s, 1)
        factors[TENSOR_FFN_DOWN_T.format(layer)] = (s, 0)
        for name in UP_ROWS:
            factors[name.format(layer)] = (1.0 / s, 0)
    out = []
    for spec in specs:
        if spec.name in factors:
            factor, axis = factors[spec.name]
            importance = spec.importance
            if importance is not None and axis == 1:  # the down's row elements are the neurons' a_j, now a_j / s_j
                importance = importance / np.square(factor)
            spec = dataclasses.replace(spec, load=_rescaled(spec.load, factor, axis), importance=importance)
        out.append(spec)
    return out


def scale_down_t_outputs(specs: list[TensorSpec], n_layer: int) -> list[TensorSpec]:
    """specs with every layer's transposed down's column r times c_r and, after it, the per-dimension factor 1 / c
    that turns its products back into the FFN's (TENSOR_FFN_DOWN_T_SCALE). Stacked experts share one c per layer
    (their rows taken together), so that it also scales their weighted sum."""
    names = {n.format(layer) for layer in range(n_layer) for n in (TENSOR_FFN_DOWN_T, TENSOR_FFN_DOWN_T_EXPS)}
    out = []
    for spec in specs:
        out.append(spec)
        if spec.name not in names:
            continue
        if spec.encoded:
            raise ConvertError(f"{spec.origin}: stored bytes cannot be rescaled (convert from the checkpoint)")
        values = spec.load()
        c = column_scales(values.reshape(-1, values.shape[-1]))
        out[-1] = dataclasses.replace(spec, load=_rescaled(spec.load, c, axis=-1))
        name = TENSOR_FFN_DOWN_T_SCALE.format(layer_of(spec.name))
        out.append(TensorSpec(name, (c.shape[0],), ROLE_NORM, lambda c=c: (1.0 / c).astype(np.float32), spec.origin))
    return out

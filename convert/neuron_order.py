"""Neuron orders of a dense FFN: one permutation per layer, applied to every tensor its neurons index (gate and up rows
and biases, the standard down's columns, the transposed down's and the predictor's rows), which leaves the model's
function unchanged.

The order a converted ReLU-family model gets by default puts neurons with like down columns side by side: the standard
down is quantized in blocks of 32 (or 256) neurons along each of its rows, and one neuron with a column of outsized
weights sets the scale of its block-mates' weights. In the default model's checkpoint order this took the Q4_0 file's
dense perplexity on held-out Macbeth from 84 (its transposed down, blocked per neuron) to 1853; sorted by each
column's largest |weight|, 79 (README, "The default model").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from turbosparse.constants import TENSOR_FFN_DOWN, TENSOR_FFN_DOWN_T, TENSOR_PRED_FC2
from turbosparse.convert.arch.base import TensorSpec
from turbosparse.errors import ConvertError

# per layer, tensors whose rows (axis 0) or columns (axis 1) are the FFN's neurons
NEURON_ROWS = ("blk.{}.ffn_gate.weight", "blk.{}.ffn_up.weight", "blk.{}.ffn_gate.bias", "blk.{}.ffn_up.bias",
               TENSOR_FFN_DOWN_T, TENSOR_PRED_FC2)  # fmt: skip
NEURON_COLUMNS = (TENSOR_FFN_DOWN,)


def layer_of(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def neuron_axis(name: str) -> int | None:
    """The axis of tensor `name` that its layer's neurons index, None for tensors they do not."""
    layer = layer_of(name)
    return next((axis for axis, names in ((0, NEURON_ROWS), (1, NEURON_COLUMNS))
                 if any(name == n.format(layer) for n in names)), None)  # fmt: skip


def _permuted(load: Callable[[], np.ndarray], order: np.ndarray, axis: int) -> Callable[[], np.ndarray]:
    return lambda: np.take(load(), order, axis=axis)


def permute_neurons(specs: list[TensorSpec], orders: Sequence[np.ndarray]) -> list[TensorSpec]:
    """specs with layer l's neurons in orders[l] (new position i holds old neuron orders[l][i])."""
    out = []
    for spec in specs:
        axis = neuron_axis(spec.name)
        if axis is not None:
            if spec.encoded:
                raise ConvertError(f"{spec.origin}: stored bytes cannot be reordered (convert from the checkpoint)")
            order = orders[layer_of(spec.name)]
            importance = spec.importance
            if importance is not None and axis == 1:  # the standard down's row elements are the neurons
                importance = np.take(importance, order, axis=-1)
            spec = dataclasses.replace(spec, load=_permuted(spec.load, order, axis), importance=importance)
        out.append(spec)
    return out


def stores_quantization_order(ffn_activation: str | None, n_expert: int, down_layout: str | None) -> bool:
    """Whether a conversion stores the neurons in quantization_order's order (unless told to keep the checkpoint's or
    given a group plan): a ReLU-family dense FFN that keeps the standard down (the transposed one quantizes each
    neuron's row alone), in every type (so that re-quantizing a float file gives a direct conversion's bytes); SwiGLU
    models keep the order llama.cpp's own converter writes."""
    return ffn_activation in ("reglu", "drelu") and n_expert == 0 and down_layout in ("standard", "both")


def quantization_order(specs: list[TensorSpec], n_layer: int) -> list[np.ndarray] | None:
    """Per layer, the neurons sorted by the largest |weight| of their down column (read from the standard or the
    transposed down); None where a neuron-indexed tensor is stored bytes (which cannot be reordered)."""
    if any(s.encoded and neuron_axis(s.name) is not None for s in specs):
        return None
    by_name = {s.name: s for s in specs}
    orders = []
    for layer in range(n_layer):
        down = by_name.get(TENSOR_FFN_DOWN.format(layer))
        if down is not None:  # [n_embd, n_ff]
            largest = np.abs(down.load()).max(axis=0)
        else:  # [n_ff, n_embd]
            largest = np.abs(by_name[TENSOR_FFN_DOWN_T.format(layer)].load()).max(axis=1)
        orders.append(np.argsort(largest, kind="stable"))
    return orders

"""Neuron groups for the grouped sparse route (ggml_ops/src/grouped_ffn.h), added to a conversion.

Given a group size G and a plan (predictor_train/groups.py writes one from collected activations: a neuron order
and top-k per layer), every layer's neurons are permuted by the plan's order - the rows of gate, up, their biases,
fc2 and down_t, the columns of down: one permutation of the FFN's hidden units, so the dense FFN is unchanged - and
one tensor is added per layer: the group heads (the plan's, fitted to output energies; without them fc2's rows
summed per group). The route reads the standard down
matrix (the pipeline keeps it, and makes its columns like-scaled for the plan's order: down_scales.py). Without a
plan the order is the converter's default (neuron_order.py: a ReLU-family FFN with a standard down sorted for its
quantization) and k per layer spends the neuron predictor's row budget: ceil(predicted rate * n_groups) (a plan
calibrated on activations is better).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turbosparse.constants import (
    KEY_GROUP_RECALL,
    KEY_GROUP_SIZE,
    KEY_GROUP_TOP_K,
    TENSOR_PRED_FC2,
    TENSOR_PRED_GROUPS,
)
from turbosparse.convert.arch.base import ROLE_PREDICTOR, TensorSpec
from turbosparse.convert.neuron_order import layer_of, permute_neurons
from turbosparse.errors import ConvertError

logger = logging.getLogger(__name__)

GROUP_BLOCK = 32  # a group is whole quant blocks of the down's rows


@dataclass(frozen=True)
class NeuronGroups:
    size: int
    top_k: list[int]
    order: list[np.ndarray] | None  # per layer, None: the neurons' order as they come
    recall: list[float] | None = None  # measured by the plan
    heads: np.ndarray | None = None  # [n_layer, n_groups, rank] the plan's; None: fc2 summed per group
    plan: Path | None = None  # the plan file, for errors and the heads' origin

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {KEY_GROUP_SIZE: self.size, KEY_GROUP_TOP_K: self.top_k}
        if self.recall is not None:
            meta[KEY_GROUP_RECALL] = self.recall
        return meta


def check_group_size(size: int, n_ff: int) -> None:
    if size <= 0 or size % GROUP_BLOCK or n_ff % size:
        raise ConvertError(
            f"--groups {size}: the group size must be a multiple of {GROUP_BLOCK} that divides n_ff = {n_ff}"
        )


def encode_heads(heads: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per-layer group heads [n_groups, rank] as a plan stores them: float32 bytes in base64 (as JSON numbers a 7B
    plan's heads would take ~0.3 GB)."""
    stack = np.stack([np.asarray(h, dtype=np.float32) for h in heads]).astype("<f4")
    return {"shape": list(stack.shape), "float32_base64": base64.b64encode(stack.tobytes()).decode("ascii")}


def decode_heads(stored: dict[str, Any]) -> np.ndarray:
    """[n_layer, n_groups, rank] from encode_heads' form (ValueError, KeyError or TypeError if it is not that)."""
    shape = [int(n) for n in stored["shape"]]
    try:
        values = np.frombuffer(base64.b64decode(stored["float32_base64"], validate=True), dtype="<f4")
    except binascii.Error as e:
        raise ValueError(f"heads: not base64 ({e})") from e
    if len(shape) != 3 or values.size != math.prod(shape):
        raise ValueError(f"heads: {values.size} values for the shape {shape}")
    return values.reshape(shape).astype(np.float32)


def load_plan(path: Path, size: int, n_layer: int, n_ff: int) -> NeuronGroups:
    """A plan file (predictor_train/groups.py), checked against the model."""
    check_group_size(size, n_ff)
    try:
        plan = json.loads(Path(path).read_text())
        top_k, order, recall, heads = plan["top_k"], plan["order"], plan.get("recall"), plan.get("heads")
        if plan["group_size"] != size:
            raise ConvertError(f"{path}: planned for groups of {plan['group_size']}, --groups says {size}")
        head_stack = decode_heads(heads) if heads is not None else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{path}: not a group plan ({e})") from e
    if len(top_k) != n_layer or len(order) != n_layer or (head_stack is not None and len(head_stack) != n_layer):
        raise ConvertError(f"{path}: top_k, order and heads need {n_layer} entries (one per layer)")
    orders = [np.asarray(o, dtype=np.int64) for o in order]
    for layer, (k, o) in enumerate(zip(top_k, orders, strict=True)):
        if not 1 <= k <= n_ff // size:
            raise ConvertError(f"{path}: top_k[{layer}] = {k} is out of range (1..{n_ff // size})")
        if o.shape != (n_ff,) or not np.array_equal(np.sort(o), np.arange(n_ff)):
            raise ConvertError(f"{path}: order[{layer}] is not a permutation of the {n_ff} neurons")
    if head_stack is not None and head_stack.shape[1] != n_ff // size:
        raise ConvertError(f"{path}: heads of {head_stack.shape[1]} groups per layer, the model has {n_ff // size}")
    if head_stack is not None and not np.isfinite(head_stack).all():
        raise ConvertError(f"{path}: the heads hold NaN or infinite values")
    return NeuronGroups(size, [int(k) for k in top_k], orders, [float(r) for r in recall] if recall else None,
                        head_stack, Path(path))  # fmt: skip


def budget_groups(size: int, n_ff: int, predicted_rates: Sequence[float] | None, where: str) -> NeuronGroups:
    """The neurons' order as they come, k from the neuron predictor's measured predicted rates."""
    check_group_size(size, n_ff)
    if predicted_rates is None:
        raise ConvertError(f"{where}: --groups without --group-plan needs the predictors' predicted_rates; "
                           "plan the groups with `python -m turbosparse.predictor_train.groups`")  # fmt: skip
    n_groups = n_ff // size
    top_k = [min(n_groups, max(1, math.ceil(r * n_groups))) for r in predicted_rates]
    # the neuron route's row budget holds only if co-activated neurons share groups, which no order but a plan's
    # gives: on the default model this k (39 % of the groups) gave held-out perplexities of 65k-242k
    logger.warning("%s: --groups without --group-plan: k per layer (mean %.1f of %d groups) is the neuron predictor's "
                   "row budget, but without the plan's order most groups hold an active neuron; quality can collapse: "
                   "plan the groups with `python -m turbosparse.predictor_train.groups`", where,
                   sum(top_k) / len(top_k), n_groups)  # fmt: skip
    return NeuronGroups(size, top_k, None)


def summed_heads(fc2: np.ndarray, group_size: int) -> np.ndarray:
    """fc2's rows [n_ff, rank], in the groups' order, summed per group: [n_groups, rank] (a group's score is then the
    sum of its neurons' logits)."""
    return fc2.reshape(-1, group_size, fc2.shape[1]).sum(axis=1)


def _group_heads_loader(fc2: TensorSpec, group_size: int, heads: np.ndarray | None) -> Callable[[], np.ndarray]:
    """The route's group heads [n_groups, rank]: the plan's, or fc2's rows summed per group."""
    if heads is not None:
        return lambda: heads
    return lambda: summed_heads(fc2.load(), group_size)


def add_groups(specs: list[TensorSpec], groups: NeuronGroups, n_layer: int, n_ff: int) -> list[TensorSpec]:
    """specs with the neurons in the plan's order (if it has one) and the group scores added after each layer's
    tensors."""
    out = permute_neurons(specs, groups.order) if groups.order is not None else list(specs)
    by_name = {s.name: s for s in out}
    n_groups = n_ff // groups.size
    for layer in range(n_layer):
        fc2 = by_name.get(TENSOR_PRED_FC2.format(layer))
        if fc2 is None:
            raise ConvertError(f"layer {layer} has no predictor: neuron groups are scored by the predictor")
        rank = fc2.shape[1]
        heads = groups.heads[layer] if groups.heads is not None else None
        if heads is not None and heads.shape[1] != rank:
            raise ConvertError(f"{groups.plan}: the heads take {heads.shape[1]} predictor features, layer {layer}'s "
                               f"predictor has rank {rank}")  # fmt: skip
        origin = f"{groups.plan}: heads[{layer}]" if heads is not None else fc2.origin
        out.append(TensorSpec(TENSOR_PRED_GROUPS.format(layer), (n_groups, rank), ROLE_PREDICTOR,
                              _group_heads_loader(fc2, groups.size, heads), origin))  # fmt: skip
    out.sort(key=lambda s: layer_of(s.name))
    return out

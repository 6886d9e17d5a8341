"""Neuron groups for the grouped sparse route (ggml_ops/src/grouped_ffn.h), planned from collected activations.

The grouped route reads whole groups of G consecutive neurons, the k groups with the highest score, a linear map
of the predictor's hidden layer relu(fc1 . h): ffn_pred_groups [n_groups, rank] . relu(fc1 . h). Three choices
are made here, per layer, from a collection (collect.py: residuals and true activation masks) and the checkpoint:
- the neuron order: co-activated neurons share a group (balanced k-means on the mask columns, cosine similarity;
  each group holds exactly G neurons). One permutation applied to gate, up, down and fc2 rows leaves the dense
  FFN unchanged.
- the group heads (ffn_pred_groups): fitted by least squares to each group's share of the FFN's output energy
  (square root of sum_j (a_j |down_j|)^2 over the group, over the token's total), so the top-k hold the most of
  the output, not the most summed logits. fc2's rows summed per group (what a plan without heads gets; the
  route's first scores) keep the neuron predictor's wide net, which spreads over too many groups: on the default
  model the heads halve the output energy the file's k loses (about 1.2-3 % -> 0.5-1.6 % per layer).
- k: the fewest groups whose top-k by score holds `recall_target` of the truly active neurons.

The plan is a JSON file `turbosparse convert --groups G --group-plan PLAN` applies:
    {"group_size": G, "recall_target": r, "top_k": [k per layer], "order": [[n_ff neuron ids] per layer],
     "rows_read": [k * G / n_ff per layer], "recall": [measured per layer],
     "heads": {"shape": [n_layer, n_groups, rank], "float32_base64": ...} (optional: absent, fc2's rows are summed
     per group; convert/groups.py encodes and decodes them)}
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turbosparse.convert.groups import decode_heads, encode_heads, summed_heads
from turbosparse.predictor_train.collect import Collection
from turbosparse.predictor_train.modeling import is_bamboo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSample:
    """One layer's collected tokens: what the group heads are fitted on and the plan is judged on."""

    features: np.ndarray  # [tokens, rank] the predictor's hidden layer relu(fc1 . h)
    fc2: np.ndarray  # [n_ff, rank]: the neurons' logits are features . fc2^T
    mask: np.ndarray  # [tokens, n_ff] truly active neurons
    energy: np.ndarray | None  # [fit tokens, n_ff] (a_j |down_j|)^2; None: no heads, fc2 summed per group


LayerData = Callable[[int], LayerSample]


@dataclass
class GroupPlanConfig:
    group_size: int = 32
    recall_target: float = 0.9  # share of truly active neurons the chosen groups must hold (calibration tokens)
    reorder: bool = True  # co-activation order; False keeps the checkpoint's neuron order
    heads: bool = True  # fit the group heads to output energies; False: fc2's rows summed per group
    iterations: int = 10  # k-means rounds of the co-activation clustering
    fit_tokens: int = 12288  # tokens the order is fitted on; k is calibrated on the rest of the collection
    seed: int = 0


@dataclass
class GroupPlan:
    group_size: int
    recall_target: float
    top_k: list[int]
    order: list[list[int]]
    rows_read: list[float]
    recall: list[float]
    heads: dict[str, Any] | None = None  # encode_heads' [n_layer, n_groups, rank]; None: fc2 summed per group

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> GroupPlan:
        return cls(**json.loads(Path(path).read_text()))


def balanced_assign(sim: np.ndarray, capacity: int) -> np.ndarray:
    """Each row (neuron) to one column (group), best similarity first, no column taking more than capacity rows."""
    n_rows, n_cols = sim.shape
    assign = np.full(n_rows, -1, dtype=np.int64)
    room = np.full(n_cols, capacity, dtype=np.int64)
    for flat in np.argsort(-sim, axis=None, kind="stable"):
        row, col = divmod(int(flat), n_cols)
        if assign[row] < 0 and room[col] > 0:
            assign[row] = col
            room[col] -= 1
    return assign


def coactivation_order(mask: np.ndarray, group_size: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """A neuron order [n_ff] whose consecutive runs of group_size neurons fire together: balanced k-means of the
    columns of mask [tokens, n_ff] (cosine similarity), groups sorted by size of their centroid."""
    n_ff = mask.shape[1]
    if n_ff % group_size:
        raise ValueError(f"group size {group_size} does not divide n_ff = {n_ff}")
    n_groups = n_ff // group_size
    x = mask.T.astype(np.float32)  # [n_ff, tokens]
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-6
    assign = np.random.default_rng(seed).permutation(n_ff) % n_groups
    for _ in range(iterations):
        centroids = np.zeros((n_groups, x.shape[1]), dtype=np.float32)
        np.add.at(centroids, assign, x)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-6
        new = balanced_assign(x @ centroids.T, group_size)
        if np.array_equal(new, assign):
            break
        assign = new
    return np.argsort(assign, kind="stable")


def group_counts(mask: np.ndarray, order: np.ndarray, group_size: int) -> np.ndarray:
    """Active neurons per group [tokens, n_groups] under the order."""
    m = mask[:, order]
    return m.reshape(m.shape[0], -1, group_size).sum(axis=2)


def group_scores(values: np.ndarray, order: np.ndarray, group_size: int) -> np.ndarray:
    """values [tokens, n_ff] summed per group under the order: [tokens, n_groups]."""
    z = values[:, order]
    return z.reshape(z.shape[0], -1, group_size).sum(axis=2)


def fit_group_heads(features: np.ndarray, group_energy: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Heads [n_groups, rank] whose scores features . heads^T approximate each group's share of the token's output
    energy, square-rooted (least squares, ridge-damped relative to the features' mean square)."""
    x = features.astype(np.float64)
    share = group_energy / np.maximum(group_energy.sum(axis=1, keepdims=True), 1e-30)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += ridge * max(float(np.trace(gram)) / len(gram), 1e-30)
    return np.linalg.solve(gram, x.T @ np.sqrt(share)).T.astype(np.float32)


def recall_by_k(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """recall[k - 1] = share of the active neurons inside each token's top-k groups by score, for k = 1..n_groups."""
    ranked = np.take_along_axis(counts, np.argsort(-scores, axis=1), axis=1)
    return np.cumsum(ranked.sum(axis=0)) / max(int(counts.sum()), 1)


def smallest_k(recall: np.ndarray, target: float) -> int:
    return int(np.argmax(recall >= target)) + 1 if recall[-1] >= target else len(recall)


def plan_groups(
    n_layer: int,
    layer_data: LayerData,
    config: GroupPlanConfig,
) -> GroupPlan:
    """The plan from each layer's sample; heads fitted where the samples have output energies."""
    plan = GroupPlan(config.group_size, config.recall_target, [], [], [], [])
    fitted: list[np.ndarray] = []
    for layer in range(n_layer):
        sample = layer_data(layer)
        n_tokens, n_ff = sample.mask.shape
        if n_tokens <= config.fit_tokens:
            raise ValueError(
                f"the collection holds {n_tokens} tokens: the order and heads are fitted on the first "
                f"{config.fit_tokens} and k is judged on the rest; collect more (train-predictors --tokens) or fit on "
                "fewer (--fit-tokens)"
            )
        fit, judge = slice(0, config.fit_tokens), slice(config.fit_tokens, None)
        order = (
            coactivation_order(sample.mask[fit], config.group_size, config.iterations, config.seed + layer)
            if config.reorder
            else np.arange(n_ff)
        )
        heads = (
            fit_group_heads(sample.features[fit], group_scores(sample.energy[fit], order, config.group_size))
            if sample.energy is not None
            else summed_heads(sample.fc2[order], config.group_size)
        )
        recall = recall_by_k(sample.features[judge] @ heads.T,
                             group_counts(sample.mask[judge], order, config.group_size))  # fmt: skip
        k = smallest_k(recall, config.recall_target)
        plan.top_k.append(k)
        plan.order.append([int(i) for i in order])
        if sample.energy is not None:
            fitted.append(heads)
        plan.rows_read.append(k * config.group_size / n_ff)
        plan.recall.append(float(recall[k - 1]))
        logger.info("layer %d: k = %d of %d groups (rows read %.3f), recall %.3f", layer, k, n_ff // config.group_size,
                    plan.rows_read[-1], plan.recall[-1])  # fmt: skip
    if len(fitted) not in (0, n_layer):
        raise ValueError("output energies were given for some layers only")
    plan.heads = encode_heads(fitted) if fitted else None
    return plan


def rms_normalized(x: np.ndarray, eps: float) -> np.ndarray:
    """x [tokens, n_embd] over its root mean square, in float32 (the FFN's norm before its weight; the predictor's
    input where the checkpoint says residual_rmsnorm)."""
    h = x.astype(np.float32)
    return h / np.sqrt((h * h).mean(-1, keepdims=True) + eps)


def checkpoint_layers(checkpoint: Path, collect_dir: Path, energy_tokens: int = 0) -> tuple[int, LayerData]:
    """(n_layer, layer -> LayerSample) for an HF checkpoint with embedded predictors and its collection; the output
    energies of the first energy_tokens tokens (0: none, no heads), which need a ReLU-family FFN: bamboo's dReLU
    relu(gate) * relu(up), or ReLU-Llama's relu(gate) * up."""
    from safetensors import safe_open

    hf = json.loads((checkpoint / "config.json").read_text())
    kind = (hf.get("turbosparse") or {}).get("predictor_input", "residual")
    eps = float(hf.get("rms_norm_eps", 1e-6))  # the converter's default too
    drelu = is_bamboo(hf)
    if energy_tokens > 0 and not drelu and hf.get("hidden_act") != "relu":
        raise ValueError(f"{checkpoint / 'config.json'}: hidden_act {hf.get('hidden_act')!r} is not a ReLU-family "
                         "FFN; the group heads need one (plan with --summed-scores)")  # fmt: skip
    collection = Collection(collect_dir)
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no .safetensors files")

    def tensor(name: str, required: bool = True) -> np.ndarray | None:
        for f in files:
            with safe_open(str(f), "np") as st:
                if name in st.keys():
                    return st.get_tensor(name).astype(np.float32)
        if required:
            raise KeyError(f"{checkpoint}: no tensor {name}")
        return None

    def linear(x: np.ndarray, prefix: str) -> np.ndarray:
        bias = tensor(f"{prefix}.bias", required=False)
        y = x @ tensor(f"{prefix}.weight").T
        return y + bias if bias is not None else y

    def energy(layer: int, residual: np.ndarray) -> np.ndarray:
        """(a_j |down_j|)^2 [tokens, n_ff]: each neuron's share of the FFN's output, squared"""
        mlp, norm = f"model.layers.{layer}.mlp", f"model.layers.{layer}.post_attention_layernorm.weight"
        x = rms_normalized(residual, eps) * tensor(norm)
        up = linear(x, f"{mlp}.up_proj")
        a = np.maximum(linear(x, f"{mlp}.gate_proj"), 0.0) * (np.maximum(up, 0.0) if drelu else up)
        return (a * np.linalg.norm(tensor(f"{mlp}.down_proj.weight"), axis=0)) ** 2

    def layer_data(layer: int) -> LayerSample:
        prefix = f"model.layers.{layer}.mlp.predictor"
        residual = np.asarray(collection.residual(layer))
        h = rms_normalized(residual, eps) if kind == "residual_rmsnorm" else residual.astype(np.float32)
        features = np.maximum(h @ tensor(f"{prefix}.fc1.weight").T, 0.0)
        return LayerSample(features, tensor(f"{prefix}.fc2.weight"), collection.mask(layer),
                           energy(layer, residual[:energy_tokens]) if energy_tokens > 0 else None)  # fmt: skip

    return collection.manifest.n_layer, layer_data


def plan_from_checkpoint(checkpoint: Path, collect_dir: Path, config: GroupPlanConfig) -> GroupPlan:
    """A plan for an HF checkpoint with embedded predictors (bamboo layout) from its collection."""
    n_layer, layer_data = checkpoint_layers(checkpoint, collect_dir, config.fit_tokens if config.heads else 0)
    return plan_groups(n_layer, layer_data, config)


def top_k_for(plan: GroupPlan, checkpoint: Path, collect_dir: Path, target: float, fit_tokens: int) -> list[int]:
    """k per layer reaching another recall target under the plan's order and scores (judged on the tokens after
    fit_tokens)."""
    n_layer, layer_data = checkpoint_layers(checkpoint, collect_dir)
    fitted = decode_heads(plan.heads) if plan.heads is not None else None
    top_k = []
    for layer in range(n_layer):
        sample = layer_data(layer)
        order = np.asarray(plan.order[layer])
        heads = fitted[layer] if fitted is not None else summed_heads(sample.fc2[order], plan.group_size)
        want = (len(order) // plan.group_size, sample.fc2.shape[1])
        if heads.shape != want:
            raise ValueError(
                f"layer {layer}: the plan's heads are {list(heads.shape)}, the checkpoint needs {list(want)}"
            )
        recall = recall_by_k(sample.features[fit_tokens:] @ heads.T,
                             group_counts(sample.mask[fit_tokens:], order, plan.group_size))  # fmt: skip
        top_k.append(smallest_k(recall, target))
    return top_k


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plan neuron groups (order and top-k per layer) for convert --groups")
    p.add_argument("--model", type=Path, required=True, help="HF checkpoint with embedded predictors")
    p.add_argument(
        "--collect", type=Path, required=True, help="a collection of that model (train-predictors' collect/)"
    )
    p.add_argument("-G", "--group-size", type=int, default=GroupPlanConfig.group_size)
    p.add_argument("--recall-target", type=float, default=GroupPlanConfig.recall_target)
    p.add_argument("--no-reorder", action="store_true", help="keep the checkpoint's neuron order")
    p.add_argument("--summed-scores", action="store_true",
                   help="score a group by its neurons' summed logits (fc2 folded) instead of fitted heads")  # fmt: skip
    p.add_argument("--fit-tokens", type=int, default=GroupPlanConfig.fit_tokens,
                   help="the collection's first tokens, which order and heads are fitted on (k: the rest)")  # fmt: skip
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    if args.fit_tokens < 1:
        p.error(f"--fit-tokens must be >= 1, got {args.fit_tokens}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = GroupPlanConfig(group_size=args.group_size, recall_target=args.recall_target, reorder=not args.no_reorder,
                             heads=not args.summed_scores, fit_tokens=args.fit_tokens)  # fmt: skip
    try:
        plan = plan_from_checkpoint(args.model, args.collect, config)
    except (ValueError, KeyError, OSError) as exc:  # a collection or checkpoint that cannot give a plan
        print(f"groups: error: {exc}", file=sys.stderr)
        return 1
    plan.save(args.output)
    print(f"{args.output}: mean rows read {np.mean(plan.rows_read):.3f}, mean recall {np.mean(plan.recall):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

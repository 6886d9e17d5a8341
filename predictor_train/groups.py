"""Neuron groups for the grouped sparse route (ggml_ops/src/grouped_ffn.h), planned from collected activations.

The grouped route reads whole groups of G consecutive neurons, the k groups with the highest predicted score
(a group's score is the sum of its neurons' predictor logits, so fc2 folds into n_ff / G rows). Two choices are
made here, per layer, from a collection (collect.py: residuals and true activation masks):
- the neuron order: co-activated neurons share a group (balanced k-means on the mask columns, cosine similarity;
  each group holds exactly G neurons). One permutation applied to gate, up, down and fc2 rows leaves the dense
  FFN unchanged.
- k: the fewest groups whose top-k by score holds `recall_target` of the truly active neurons.

The plan is a JSON file `turbosparse convert --groups G --group-plan PLAN` applies:
    {"group_size": G, "recall_target": r, "top_k": [k per layer], "order": [[n_ff neuron ids] per layer],
     "rows_read": [k * G / n_ff per layer], "recall": [measured per layer]}
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .collect import Collection

logger = logging.getLogger(__name__)

LayerData = Callable[[int], tuple[np.ndarray, np.ndarray]]  # layer -> (predictor logits, true mask) [tokens, n_ff]


@dataclass
class GroupPlanConfig:
    group_size: int = 32
    recall_target: float = 0.9  # share of truly active neurons the chosen groups must hold (calibration tokens)
    reorder: bool = True  # co-activation order; False keeps the checkpoint's neuron order
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


def group_scores(logits: np.ndarray, order: np.ndarray, group_size: int) -> np.ndarray:
    """The route's group scores [tokens, n_groups]: the sum of each group's predictor logits."""
    z = logits[:, order]
    return z.reshape(z.shape[0], -1, group_size).sum(axis=2)


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
    """The plan from each layer's (predictor logits [tokens, n_ff], true mask [tokens, n_ff])."""
    plan = GroupPlan(config.group_size, config.recall_target, [], [], [], [])
    for layer in range(n_layer):
        logits, mask = layer_data(layer)
        n_ff = mask.shape[1]
        fit, judge = slice(0, config.fit_tokens), slice(config.fit_tokens, None)
        order = (
            coactivation_order(mask[fit], config.group_size, config.iterations, config.seed + layer)
            if config.reorder
            else np.arange(n_ff)
        )
        recall = recall_by_k(group_scores(logits[judge], order, config.group_size),
                             group_counts(mask[judge], order, config.group_size))  # fmt: skip
        k = smallest_k(recall, config.recall_target)
        plan.top_k.append(k)
        plan.order.append([int(i) for i in order])
        plan.rows_read.append(k * config.group_size / n_ff)
        plan.recall.append(float(recall[k - 1]))
        logger.info("layer %d: k = %d of %d groups (rows read %.3f), recall %.3f", layer, k, n_ff // config.group_size,
                    plan.rows_read[-1], plan.recall[-1])  # fmt: skip
    return plan


def predictor_logits(
    residual: np.ndarray, fc1: np.ndarray, fc2: np.ndarray, predictor_input: str, eps: float
) -> np.ndarray:
    """fc2 . relu(fc1 . h) as the engine computes it, h the residual (RMS-normalized without weight if asked)."""
    h = residual.astype(np.float32)
    if predictor_input == "residual_rmsnorm":
        h = h / np.sqrt((h * h).mean(-1, keepdims=True) + eps)
    return np.maximum(h @ fc1.T, 0.0) @ fc2.T


def checkpoint_layers(checkpoint: Path, collect_dir: Path) -> tuple[int, LayerData]:
    """(n_layer, layer -> (predictor logits, true mask)) for an HF checkpoint with embedded predictors (bamboo
    layout) and its collection."""
    from safetensors import safe_open

    hf = json.loads((checkpoint / "config.json").read_text())
    predictor_input = (hf.get("turbosparse") or {}).get("predictor_input", "residual")
    eps = float(hf.get("rms_norm_eps", 1e-5))
    collection = Collection(collect_dir)
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no .safetensors files")

    def tensor(name: str) -> np.ndarray:
        for f in files:
            with safe_open(str(f), "np") as st:
                if name in st.keys():
                    return st.get_tensor(name).astype(np.float32)
        raise KeyError(f"{checkpoint}: no tensor {name}")

    def layer_data(layer: int) -> tuple[np.ndarray, np.ndarray]:
        prefix = f"model.layers.{layer}.mlp.predictor"
        logits = predictor_logits(np.asarray(collection.residual(layer)), tensor(f"{prefix}.fc1.weight"),
                                  tensor(f"{prefix}.fc2.weight"), predictor_input, eps)  # fmt: skip
        return logits, collection.mask(layer)

    return collection.manifest.n_layer, layer_data


def plan_from_checkpoint(checkpoint: Path, collect_dir: Path, config: GroupPlanConfig) -> GroupPlan:
    """A plan for an HF checkpoint with embedded predictors (bamboo layout) from its collection."""
    n_layer, layer_data = checkpoint_layers(checkpoint, collect_dir)
    return plan_groups(n_layer, layer_data, config)


def top_k_for(plan: GroupPlan, checkpoint: Path, collect_dir: Path, target: float, fit_tokens: int) -> list[int]:
    """k per layer reaching another recall target under the plan's order (judged on the tokens after fit_tokens)."""
    n_layer, layer_data = checkpoint_layers(checkpoint, collect_dir)
    top_k = []
    for layer in range(n_layer):
        logits, mask = layer_data(layer)
        order = np.asarray(plan.order[layer])
        recall = recall_by_k(group_scores(logits[fit_tokens:], order, plan.group_size),
                             group_counts(mask[fit_tokens:], order, plan.group_size))  # fmt: skip
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
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = GroupPlanConfig(group_size=args.group_size, recall_target=args.recall_target, reorder=not args.no_reorder)
    plan = plan_from_checkpoint(args.model, args.collect, config)
    plan.save(args.output)
    print(f"{args.output}: mean rows read {np.mean(plan.rows_read):.3f}, mean recall {np.mean(plan.recall):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

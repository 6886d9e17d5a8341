"""How much of the FFN's output the grouped route can keep at the neuron route's row budget, per layer: the share of
output energy (sum over neurons of (a_j |down_j|)^2) in the groups a token reads, at (at most) 1.3x the rows the
neuron predictor reads (the grouped route's quality goal), for groups chosen by an oracle that knows the energies, by
summed predictor logits, and by heads fitted to the energies (predictor_train/groups.py). Judged on the
collection's tokens after the fit tokens.

    python scripts/group_energy_bound.py --checkpoint BAMBOO_DIR --collect DIR -G 8,32 [--layers 0,3,6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from turbosparse.convert.groups import summed_heads
from turbosparse.predictor_train.collect import Collection
from turbosparse.predictor_train.groups import (
    GroupPlanConfig,
    checkpoint_layers,
    coactivation_order,
    fit_group_heads,
    group_scores,
    recall_by_k,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="bamboo checkpoint with embedded predictors")
    p.add_argument("--collect", type=Path, required=True, help="its collection")
    p.add_argument("-G", "--group-sizes", default="8,32")
    p.add_argument("--layers", default="", help="comma-separated (default: every third)")
    p.add_argument("--budget", type=float, default=1.3, help="groups' rows as a multiple of the neuron route's")
    args = p.parse_args()
    config = GroupPlanConfig()
    hf = json.loads((args.checkpoint / "config.json").read_text())
    threshold = float((hf.get("turbosparse") or {}).get("predictor_threshold", 0.0))
    n_tokens = Collection(args.collect).manifest.n_tokens
    n_layer, layer_data = checkpoint_layers(args.checkpoint, args.collect, energy_tokens=n_tokens)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(0, n_layer, 3))
    fit, judge = slice(0, config.fit_tokens), slice(config.fit_tokens, None)
    for layer in layers:
        s = layer_data(layer)
        energy, logits = s.energy[judge], s.features[judge] @ s.fc2.T
        chosen = logits >= threshold
        rows = float(chosen.mean())
        row = {"layer": layer, "neuron_rows": rows, "neuron_energy": float((energy * chosen).sum() / energy.sum())}
        for g in (int(x) for x in args.group_sizes.split(",")):
            order = coactivation_order(s.mask[fit], g, config.iterations, config.seed + layer)
            held = group_scores(energy, order, g)
            k = max(1, min(held.shape[1], int(args.budget * rows * held.shape[1])))
            heads = fit_group_heads(s.features[fit], group_scores(s.energy[fit], order, g))
            for name, scores in (("oracle", held), ("summed", s.features[judge] @ summed_heads(s.fc2[order], g).T),
                                 ("heads", s.features[judge] @ heads.T)):  # fmt: skip
                row[f"G{g}_{name}"] = float(recall_by_k(scores, held)[k - 1])
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

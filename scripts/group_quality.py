"""The README's neuron-group quality table: perplexity and FFN rows read of one model file under dense, the neuron
predictor and the grouped route at several recall targets (k per layer recomputed from the plan's order).

    python scripts/group_quality.py --model FILE.gguf [--plan PLAN.json --checkpoint HF_DIR --collect DIR]
        --targets 0.9,0.97 --text eval-macbeth.npy --text eval-news.npy --window 512

Texts are token-id .npy files (the default model's build folder has them); each contributes one window of
`--window` tokens (BOS first), teacher-forced from an empty context, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from turbosparse import Model
from turbosparse.predictor_train.groups import GroupPlan, GroupPlanConfig, top_k_for


def nll(model: Model, texts: list[np.ndarray], window: int) -> tuple[float, int]:
    total, count = 0.0, 0
    for ids in texts:
        tokens = [1, *(int(t) for t in ids[: window - 1])]
        logits = model.eval_logits(tokens).astype(np.float64)
        logp = logits - logits.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        total -= logp[np.arange(len(tokens) - 1), tokens[1:]].sum()
        count += len(tokens) - 1
    return total, count


def measure(model: Model, texts: list[np.ndarray], window: int, label: str) -> None:
    model.reset_stats()
    start = time.perf_counter()
    total, count = nll(model, texts, window)
    rows = float(np.mean(model.stats()["active_fraction"]))  # gate/up/down rows a token reads, over the layers
    row = {"route": label, "perplexity": float(np.exp(total / count)), "rows_read": rows, "tokens": count,
           "seconds": time.perf_counter() - start}  # fmt: skip
    print(json.dumps(row), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--routes", default="off,predictor,groups", help="comma-separated: off, predictor, groups")
    p.add_argument("--plan", type=Path, help="the group plan the file was converted with (groups: other targets)")
    p.add_argument("--checkpoint", type=Path, help="the HF checkpoint the plan was made from")
    p.add_argument("--collect", type=Path, help="its collection")
    p.add_argument("--targets", default="", help="recall targets for k (default: the file's k only)")
    p.add_argument("--text", type=Path, action="append", required=True)
    p.add_argument("--window", type=int, default=512)
    args = p.parse_args()
    texts = [np.load(t) for t in args.text]
    for route in args.routes.split(","):
        model = Model(args.model, sparse=route, n_threads=1, n_ctx=args.window)
        if route != "groups" or not args.targets:
            measure(model, texts, args.window, route)
            continue
        plan = GroupPlan.load(args.plan)
        for target in (float(t) for t in args.targets.split(",")):
            model.group_top_k = top_k_for(plan, args.checkpoint, args.collect, target, GroupPlanConfig.fit_tokens)
            measure(model, texts, args.window, f"groups G={plan.group_size} recall {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

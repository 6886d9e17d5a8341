"""`turbosparse relufy`: turn a SwiGLU Llama-family model (GGUF or HF folder) into a dReLU bamboo checkpoint
(torch, the `train` extra): sign-aware activation swap, sequential layer-wise distillation, then end-to-end
distillation against the original model's logits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relufy", help="SwiGLU GGUF / HF model -> dReLU bamboo checkpoint", description=__doc__)
    p.add_argument("source", type=Path, metavar="GGUF_OR_HF_DIR", help="a llama-family GGUF or HF checkpoint folder")
    p.add_argument("--data", type=Path, required=True, help="calibration text: a file, or a folder of *.txt")
    p.add_argument("--out", type=Path, required=True, help="output bamboo checkpoint folder")
    p.add_argument("--tokens", type=int, default=65536, help="calibration tokens (default 65536)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--layerwise-steps", type=int, default=0, help="Adam steps per layer after the closed form")
    p.add_argument("--finetune-steps", type=int, default=60, help="end-to-end KL steps (0 skips)")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--l1", type=float, default=0.0, help="weight of an activation L1 term (more sparsity)")
    p.add_argument("--eval", type=Path, default=None, help="text to measure perplexity before/after on")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turbosparse.predictor_train.relufy import RelufyConfig
    from turbosparse.predictor_train.workflows import RelufyOptions, relufy_checkpoint, set_threads

    if not args.source.exists():
        raise FileNotFoundError(f"{args.source}: no such GGUF file or checkpoint folder")
    set_threads(args.threads)
    cfg = RelufyConfig(layerwise_steps=args.layerwise_steps, finetune_steps=args.finetune_steps,
                       finetune_lr=args.finetune_lr, l1_weight=args.l1, seq_len=args.seq_len)  # fmt: skip
    opts = RelufyOptions(out=args.out, tokens=args.tokens, seq_len=args.seq_len, eval_text=args.eval, relufy=cfg)
    summary = relufy_checkpoint(args.source, args.data, opts)
    keys = ("ppl_original", "ppl_drelu", "seconds")
    print(json.dumps({"out": str(args.out), **{k: summary[k] for k in keys if k in summary}}, indent=2))
    return 0

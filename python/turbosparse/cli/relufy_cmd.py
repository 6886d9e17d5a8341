"""`turbosparse relufy`: turn a SwiGLU Llama-family model (GGUF or HF folder) into a dReLU bamboo checkpoint
(torch, the `train` extra): sign-aware activation swap with per-neuron thresholds and a closed-form down matrix,
fitted layer by layer, then end-to-end distillation against the original model's next-token distributions.
Under `torchrun --nproc_per_node N $(which turbosparse) relufy ...` every rank fits its share of the calibration
sequences and the sums are all-reduced (gloo on CPU, nccl on GPUs): the result equals one process's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from turbosparse.cli.checks import at_least, checkpoint_folder_out, text_paths_exist
from turbosparse.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relufy", help="SwiGLU GGUF / HF model -> dReLU bamboo checkpoint", description=__doc__)
    p.add_argument("source", type=Path, metavar="GGUF_OR_HF_DIR", help="a llama-family GGUF or HF checkpoint folder")
    p.add_argument("--data", type=Path, required=True, help="calibration text: a file, or a folder of *.txt")
    out_help = ("output bamboo checkpoint folder (from a GGUF, the model's HF copy goes to the folder OUT.hf beside "
                "it, which a rerun on the same file reuses)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--tokens", type=int, default=65536, help="calibration tokens (default 65536)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--layerwise-seqs", type=int, default=128, help="sequences for the layer-wise fit (default 128)")
    p.add_argument(
        "--max-active",
        type=float,
        default=1.0,
        help="cap on each layer's share of active neurons, reached with per-neuron thresholds (1: none)",
    )
    p.add_argument("--finetune-steps", type=int, default=60, help="end-to-end KL steps (0 skips)")
    p.add_argument("--finetune-batch", type=int, default=8, help="sequences per end-to-end step")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--eval", type=Path, default=None, help="text to measure perplexity before/after on")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; under torchrun, cuda picks each "
                   "rank's GPU)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turbosparse.cli.train_predictors_cmd import check_device, rank_device
    from turbosparse.predictor_train.distributed import process_group
    from turbosparse.predictor_train.relufy import RelufyConfig
    from turbosparse.predictor_train.workflows import RelufyOptions, relufy_checkpoint, set_threads

    if not args.source.exists():
        raise FileNotFoundError(f"{args.source}: no such GGUF file or checkpoint folder")
    if not 0 < args.max_active <= 1:
        raise InvalidArgumentError(f"--max-active must be in (0, 1], got {args.max_active}")
    # a batch of none divided by zero: a model of NaNs
    at_least((("--tokens", args.tokens, 1), ("--seq-len", args.seq_len, 2),
              ("--layerwise-seqs", args.layerwise_seqs, 1), ("--finetune-steps", args.finetune_steps, 0),
              ("--finetune-batch", args.finetune_batch, 1), ("--threads", args.threads, 1)))  # fmt: skip
    check_device(args.device)
    if not args.finetune_lr > 0:
        raise InvalidArgumentError(f"--finetune-lr must be > 0, got {args.finetune_lr}")
    text_paths_exist((("--data", args.data), ("--eval", args.eval)))  # said now, not after the fit
    checkpoint_folder_out("--out", args.out, args.source)
    set_threads(args.threads)
    cfg = RelufyConfig(seq_len=args.seq_len, layerwise_seqs=args.layerwise_seqs, max_active=args.max_active,
                       finetune_steps=args.finetune_steps, finetune_batch=args.finetune_batch,
                       finetune_lr=args.finetune_lr)  # fmt: skip
    with process_group() as dist:
        opts = RelufyOptions(out=args.out, tokens=args.tokens, seq_len=args.seq_len, eval_text=args.eval,
                             device=rank_device(args.device, dist.rank), relufy=cfg)  # fmt: skip
        summary = relufy_checkpoint(args.source, args.data, opts, dist)
    if summary is not None:
        keys = ("ppl_original", "ppl_drelu", "seconds")
        print(json.dumps({"out": str(args.out), **{k: summary[k] for k in keys if k in summary}}, indent=2))
    return 0

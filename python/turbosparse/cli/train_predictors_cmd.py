"""`turbosparse train-predictors`: train activation predictors for a dReLU / ReLU HF checkpoint (torch, the
`train` extra): collect residuals and active masks on calibration text, train a low-rank predictor per layer,
choose each layer's rank and threshold for a recall target at least bytes read, export and report. A
TurboSparse-Mixtral checkpoint (mixture of experts) gets one predictor per expert, trained on the tokens routed to
it, rank and threshold chosen per expert.
Under `torchrun --nproc_per_node N $(which turbosparse) train-predictors ...` rank 0 collects and the layers'
training is shared out over the ranks (gloo on CPU, nccl on GPUs)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from turbosparse.cli.checks import at_least, checkpoint_folder_out, text_paths_exist
from turbosparse.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-predictors", help="train activation predictors for a dReLU/ReLU HF checkpoint",
                       description=__doc__)  # fmt: skip
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="HF checkpoint folder (bamboo or ReLU Llama)")
    p.add_argument("--data", type=Path, required=True, help="calibration text: a file, or a folder of *.txt")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: MODEL_DIR-predictors); its "
                   "collect/ subfolder keeps the collected residuals and masks (hidden x tokens f16 per layer: ~10 GB "
                   "for a 7B model at the default tokens), which a rerun with the same model and text reuses: delete "
                   "it before sharing the folder")  # fmt: skip
    p.add_argument("--format", choices=("bamboo", "powerinfer"), default="bamboo",
                   help="bamboo: checkpoint, predictors embedded; powerinfer: model_{i}.pt + config.json")  # fmt: skip
    p.add_argument("--recall", type=float, default=0.9, help="recall target per layer (default 0.9)")
    p.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128, 256], help="candidate predictor ranks")
    p.add_argument("--quant", default="q8_0", help="weight type the cost model prices bytes at (default q8_0)")
    p.add_argument("--tokens", type=int, default=32768, help="calibration tokens to collect (default 32768)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration sequence")
    p.add_argument("--steps", type=int, default=400, help="most training steps per predictor")
    p.add_argument("--input", choices=("residual", "residual_rmsnorm"), default="residual_rmsnorm",
                   help="what the predictor reads (stored in the checkpoint for the engine)")  # fmt: skip
    p.add_argument("--eval", type=Path, default=None, help="text to measure dense and predictor-masked perplexity on")
    p.add_argument("--device", default="cpu", help="torch device for collection and training (default cpu; under "
                   "torchrun, cuda picks each rank's GPU)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch is imported here only: the runtime (and `turbosparse run`) never loads it
    from turbosparse.predictor_train.collect import CollectConfig
    from turbosparse.predictor_train.distributed import process_group
    from turbosparse.predictor_train.modeling import is_moe_checkpoint, read_config
    from turbosparse.predictor_train.moe import MoeTrainOptions, train_moe_predictors
    from turbosparse.predictor_train.pipeline import PredictorTrainConfig
    from turbosparse.predictor_train.select import bytes_per_weight
    from turbosparse.predictor_train.train import TrainConfig
    from turbosparse.predictor_train.workflows import TrainPredictorsOptions, set_threads, train_predictors

    if not 0 < args.recall <= 1:
        raise InvalidArgumentError(f"--recall must be in (0, 1], got {args.recall}")
    # what would fail only after the collection (the long step on a large model) is checked first
    counts = [("--tokens", args.tokens, 1), ("--seq-len", args.seq_len, 2), ("--steps", args.steps, 1),
              ("--threads", args.threads, 1)]  # fmt: skip
    at_least([*counts, *(("--ranks", r, 1) for r in args.ranks)])
    check_device(args.device)
    try:
        bytes_per_weight(args.quant)
    except ValueError as exc:
        raise InvalidArgumentError(f"--quant: {exc}") from None
    text_paths_exist((("--data", args.data), ("--eval", args.eval)))
    if not args.model_dir.is_dir():
        what = "is not a folder" if args.model_dir.exists() else "no such folder"
        raise InvalidArgumentError(
            f"{args.model_dir}: {what} (train-predictors takes a Hugging Face checkpoint folder)"
        )
    model_dir = Path(os.path.abspath(args.model_dir))  # "." has no name to add "-predictors" to; links kept
    out = args.out or model_dir.with_name(model_dir.name + "-predictors")
    checkpoint_folder_out("--out", out, model_dir)
    set_threads(args.threads)
    with process_group() as dist:
        device = rank_device(args.device, dist.rank)
        opts = TrainPredictorsOptions(
            out=out,
            format=args.format,
            tokens=args.tokens,
            seq_len=args.seq_len,
            eval_text=args.eval,
            collect=CollectConfig(device=device),
            predictors=PredictorTrainConfig(
                recall_target=args.recall,
                ranks=tuple(args.ranks),
                quant=args.quant,
                train=TrainConfig(max_steps=args.steps, input_kind=args.input, device=device),
            ),
        )
        if is_moe_checkpoint(read_config(args.model_dir)):
            if args.format != "bamboo" or dist.world > 1 or args.eval is not None:
                raise InvalidArgumentError(
                    f"{args.model_dir}: a mixture-of-experts checkpoint takes neither --format powerinfer, --eval "
                    "nor torchrun (its predictors are embedded per expert, trained in one process)"
                )
            moe = MoeTrainOptions(out=out, tokens=args.tokens, seq_len=args.seq_len, predictors=opts.predictors)
            report = train_moe_predictors(args.model_dir, args.data, moe)
            print(json.dumps({"out": str(out), **report["totals"]}, indent=2))
            return 0
        report = train_predictors(args.model_dir, args.data, opts, dist)
    if report is not None:
        print(json.dumps({"out": str(out), **report["totals"]}, indent=2))
    return 0


def rank_device(device: str, rank: int) -> str:
    """`cuda` means this rank's own GPU under torchrun."""
    return f"cuda:{rank}" if device == "cuda" else device


def check_device(device: str) -> None:
    """--device names a torch device (said before any work, where torch would say it after the first step)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise InvalidArgumentError(f"--device {device}: {exc}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            f"--device {device}: this torch has no CUDA device (torch {torch.__version__}, the CPU build setup "
            "installs); use --device cpu, or install a CUDA build of torch"
        )

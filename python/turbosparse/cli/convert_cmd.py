"""`turbosparse convert`: an HF checkpoint directory (or a turbosparse GGUF to re-quantize) -> a turbosparse GGUF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from turbosparse.cli.checks import output_file
from turbosparse.convert import convert
from turbosparse.convert.quant_policy import OUTTYPES

OUTTYPE_NAMES = tuple(OUTTYPES)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an HF checkpoint to a turbosparse GGUF", description=__doc__)
    p.add_argument("model", type=Path, help="HF checkpoint directory (config.json, weights, tokenizer) or a .gguf file")
    p.add_argument("-o", "--outfile", type=output_file, required=True, help="output GGUF path")
    p.add_argument("--outtype", type=str.lower, choices=OUTTYPE_NAMES, default="q8_0",
                   help="type of the weight matrices (default q8_0; any case)")  # fmt: skip
    p.add_argument("--predictors", type=Path, default=None, help="PowerInfer predictor directory (model_N.pt)")
    p.add_argument("--pred-type", type=str.lower, choices=OUTTYPE_NAMES, default=None,
                   help="predictor type (default: the outtype where it is f32, f16 or bf16, else q8_0)")  # fmt: skip
    p.add_argument(
        "--down-layout",
        choices=("transposed", "standard", "both"),
        default=None,
        help="down matrix layout (default: transposed for ReLU-family models, standard for SwiGLU, both with --groups)",
    )
    p.add_argument("--threshold", type=float, default=None, help="predictor logit threshold to store")
    p.add_argument("--vocab-pre", default=None, help="llama.cpp pre-tokenizer name for an unrecognised BPE vocabulary")
    p.add_argument("--name", default=None, help="general.name (default: the checkpoint directory's name)")
    p.add_argument(
        "--groups",
        type=int,
        default=None,
        metavar="G",
        help="add the grouped sparse route (sparse='groups', any ggml backend): neurons in groups of G (32, 64, ...); "
        "it reads the standard down matrix",
    )
    p.add_argument(
        "--group-plan",
        type=Path,
        default=None,
        help="neuron order and top-k per layer (python -m turbosparse.predictor_train.groups writes it); "
        "default: k from the predictors' predicted rates",
    )
    p.add_argument(
        "--keep-neuron-order",
        action="store_true",
        help="store the FFN's tensors as the checkpoint has them; by default a ReLU-family FFN with a standard down "
        "gets the order that down quantizes well in (neurons sorted by their down column's largest weight) and "
        "like-scaled down columns, and a transposed down like-scaled output dimensions (the model computes the same "
        "function)",
    )
    p.add_argument(
        "--imatrix",
        type=Path,
        default=None,
        help="importance matrix (llama.cpp's llama-imatrix output, GGUF or .dat, or `turbosparse imatrix`'s): "
        "the quantizers weigh each weight's rounding error by its input column's mean square activation",
    )
    p.add_argument("--verbose", action="store_true", help="log each step")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = convert(
        args.model,
        args.outfile,
        outtype=args.outtype,
        predictors=args.predictors,
        pred_type=args.pred_type,
        down_layout=args.down_layout,
        threshold=args.threshold,
        vocab_pre=args.vocab_pre,
        name=args.name,
        groups=args.groups,
        group_plan=args.group_plan,
        keep_neuron_order=args.keep_neuron_order,
        imatrix=args.imatrix,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0

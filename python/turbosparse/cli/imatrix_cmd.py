"""`turbosparse imatrix`: the importance matrix of an HF checkpoint (Llama family or bamboo) over calibration text, in
llama.cpp's GGUF imatrix format (torch, the `train` extra). `turbosparse convert --imatrix` quantizes with it, as
`llama-quantize --imatrix` does with llama-imatrix's output."""

from __future__ import annotations

import argparse
from pathlib import Path

from turbosparse.cli.checks import at_least, output_file, text_paths_exist
from turbosparse.convert.source import checkpoint_files
from turbosparse.convert.writer import check_output_path
from turbosparse.errors import InvalidArgumentError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imatrix", help="importance matrix of an HF checkpoint for quantizing", description=__doc__)
    p.add_argument("model", type=Path, help="HF checkpoint directory (config.json, weights, tokenizer)")
    p.add_argument("-f", "--file", type=Path, required=True, help="calibration text: a file, or a folder of *.txt")
    p.add_argument("-o", "--outfile", type=output_file, required=True, help="output imatrix GGUF path")
    p.add_argument("--tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from turbosparse.predictor_train.data import read_text, tokenize_text
    from turbosparse.predictor_train.hf_import import load_tokenizer
    from turbosparse.predictor_train.imatrix import write_checkpoint_imatrix
    from turbosparse.predictor_train.workflows import set_threads

    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"{args.model}: not an HF checkpoint directory (no config.json)")
    if args.tokens < args.seq_len or args.seq_len < 2:
        raise InvalidArgumentError(f"--tokens ({args.tokens}) must hold at least one --seq-len ({args.seq_len}) >= 2")
    at_least((("--threads", args.threads, 1),))
    # said before the forward pass, not after it
    check_output_path(args.outfile, InvalidArgumentError, inputs=checkpoint_files(args.model))
    text_paths_exist((("-f", args.file),))
    set_threads(args.threads)
    sequences = tokenize_text(load_tokenizer(args.model), read_text(args.file), args.seq_len, args.tokens)
    out = write_checkpoint_imatrix(args.model, sequences, args.outfile, dataset=str(args.file))
    print(f"wrote {out} ({len(sequences)} sequences of {args.seq_len} tokens)")
    return 0

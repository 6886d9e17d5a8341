"""`turbosparse perplexity`: perplexity of a model on a text file, with the FFN as decoding computes it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from turbosparse.cli.checks import at_least
from turbosparse.cli.run_cmd import add_model_args, attention_kwargs, model_path, read_text_as_llama_cpp
from turbosparse.errors import InvalidArgumentError
from turbosparse.model import Model
from turbosparse.perplexity import perplexity


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perplexity", help="perplexity on a text file", description=__doc__)
    add_model_args(p)
    p.set_defaults(ctx_size=512)
    p.add_argument("-f", "--file", type=Path, required=True, help="plain text file")
    p.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="evaluate at most this many windows of --ctx-size tokens (negative: all, as llama-perplexity's -1)",
    )
    compare = p.add_mutually_exclusive_group()
    compare.add_argument("--compare-dense", action="store_true",
                         help="also top-1 agreement and KL against the file's dense decoding")  # fmt: skip
    compare.add_argument(
        "--compare", type=Path, default=None, metavar="FILE",
        help="also top-1 agreement and KL against FILE decoded densely, on the same tokens (a model of the same "
        "vocabulary: e.g. the original a sparse or re-quantized file was made from; llama-perplexity's "
        "--kl-divergence-base / --kl-divergence in one run)",
    )  # fmt: skip
    p.add_argument(
        "--llama-perplexity",
        action="store_true",
        help="llama-perplexity's protocol, for figures comparable with llama.cpp's: chunks of --ctx-size tokens with "
        "the BOS first, only their second half scored (default: every token after a window's first)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chunks = None if args.chunks is not None and args.chunks < 0 else args.chunks  # llama-perplexity's -1: all
    at_least([("--chunks", chunks, 1)])
    text = read_text_as_llama_cpp(args.file)  # as llama-perplexity tokenizes it: "\r\n" kept
    path = model_path(args.model)
    common = dict(n_threads=args.threads, n_ctx=args.ctx_size, n_batch=args.batch_size, verbose=args.verbose,
                  device=args.device, swa_full=args.swa_full, **attention_kwargs(args))  # fmt: skip
    model = Model(path, sparse=args.sparse, threshold=args.threshold, **common)
    reference_path = path if args.compare_dense else model_path(str(args.compare)) if args.compare else None
    reference = Model(reference_path, sparse="off", **common) if reference_path is not None else None
    if reference is not None and reference.tokenize(text[:4096]) != model.tokenize(text[:4096]):
        raise InvalidArgumentError(
            f"--compare {reference_path}: its tokenizer reads the text otherwise than {path}'s (another vocabulary): "
            "the two are compared token for token"
        )

    def show(n_windows: int, so_far: float) -> None:  # llama-perplexity's running figures: [1]34.12,[2]33.98,...
        print(f"[{n_windows}]{so_far:.4f},", end="", file=sys.stderr, flush=True)

    result = perplexity(model, text, model.n_ctx, reference=reference, max_windows=chunks,
                        second_half=args.llama_perplexity, on_window=None if args.json else show)  # fmt: skip
    if not args.json:
        print(file=sys.stderr)
    stats = model.stats()
    active = [a for a in stats["active_fraction"] if a is not None]
    report = {
        "model": path,
        "sparse_mode": stats["sparse_mode"],
        "perplexity": result.perplexity,
        "perplexity_error": result.perplexity_error,
        "tokens": result.n_tokens,
        "windows": result.n_windows,
        "n_ctx": model.n_ctx,
        "mean_active_fraction": sum(active) / len(active) if active else None,
        "reference_model": reference_path,
        "dense_perplexity": result.reference_perplexity,
        "top1_agreement_vs_dense": result.top1_agreement,
        "mean_kl_vs_dense": result.mean_kl,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    line = f"perplexity {result.perplexity:.4f} +/- {result.perplexity_error:.4f} over {result.n_tokens} tokens "
    line += f"({result.n_windows} x {model.n_ctx}), "
    line += f"sparse: {report['sparse_mode']}"
    if report["mean_active_fraction"] is not None:
        line += f", active {report['mean_active_fraction']:.3f}"
    if result.top1_agreement is not None:
        against = "dense" if args.compare_dense else f"{Path(reference_path).name} dense"
        line += f" | {against}: perplexity {result.reference_perplexity:.4f}, "
        line += f"top-1 agreement {result.top1_agreement:.4f}, "
        line += f"mean KL {result.mean_kl:.5f}"
    print(line)
    sys.stdout.flush()
    return 0

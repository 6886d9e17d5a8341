"""`turbosparse calibrate`: training-free sparsity for a dense GGUF (SwiGLU: Llama, Mistral, Phi-3 and 4, Qwen, SmolLM;
GEGLU: Gemma 2 and 3).

Runs the model over calibration text, picks per layer the FFN thresholds that reach the target sparsity (the share of
up and down rows a token skips), measures perplexity and rows read on held-out text, and writes a copy of the file
with every tensor untouched and the thresholds as turbosparse.* keys; `turbosparse run` (or Model(..., sparse="exact"))
then decodes it sparsely. With several sparsities it prints a quality table and writes one file per sparsity when -o
is given (OUT with .s40 etc. before the extension).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from turbosparse.calibrate import ALLOCATIONS, METHODS, CalibrateConfig, CollectConfig, calibrate, write_calibrated
from turbosparse.calibrate.pipeline import CalibrationResult, Quality
from turbosparse.calibrate.scores import SCORES
from turbosparse.calibrate.thresholds import MAX_SPARSITY
from turbosparse.cli.checks import at_least, output_file
from turbosparse.cli.run_cmd import read_text_as_llama_cpp
from turbosparse.convert.writer import check_output_path
from turbosparse.errors import CalibrationError
from turbosparse.gguf_reader import split_files_named


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="training-free FFN sparsity for a dense GGUF", description=__doc__)
    p.add_argument(
        "-m", "--model", type=Path, required=True, help="dense GGUF (e.g. a llama.cpp SwiGLU or Gemma model)"
    )
    p.add_argument("-f", "--file", type=Path, required=True, help="calibration text (plain text)")
    p.add_argument(
        "--sparsity",
        type=_sparsities,
        required=True,
        help="target share of up/down rows skipped, e.g. 0.4, or a list 0.3,0.4,0.5 for a quality table",
    )
    p.add_argument(
        "-o", "--outfile", type=output_file, default=None, help="output GGUF (required for a single sparsity)"
    )
    p.add_argument(
        "--eval-file",
        type=Path,
        action="append",
        default=[],
        help="held-out text for the quality measurement, repeatable (default: the last --eval-tokens tokens of the "
        "calibration text, then not calibrated on)",
    )
    p.add_argument(
        "--eval-tokens",
        type=int,
        default=2048,
        help="held-out tokens per text, in whole windows of -c tokens (at least one; 0: no measurement)",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=4096,
        help="calibration tokens, in whole windows of -c tokens (at least one), spread evenly over the text",
    )
    p.add_argument(
        "--effect-tokens",
        type=int,
        default=512,
        help="--allocation error: calibration tokens on which each layer's effect on the output is measured",
    )
    p.add_argument("-c", "--ctx-size", type=int, default=512,
                   help="tokens per window (at most the model's training context; 0: that context)")  # fmt: skip
    p.add_argument(
        "--method",
        choices=METHODS,
        default="gate+act",
        help="gate: one threshold on |silu(gate)| (|gelu(gate)| for Gemma; CATS); gate+act: and one on the activation "
        "that reaches down (better quality per row; on the CPU a dense file's down matrix is read whole, so per byte "
        "read - the table's bytes column - gate does better)",
    )
    p.add_argument(
        "--scores",
        choices=SCORES,
        default="weighted",
        help="weighted: |silu(gate)| and |a| times each neuron's down-column norm (and E|up| for the gate), stored "
        "as per-neuron scales beside the thresholds; plain: the raw magnitudes",
    )
    p.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default="error",
        help="error: per-layer shares minimising the output error for the same mean; uniform: the same in every layer",
    )
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma-separated list, got {text!r}") from None
    if not values or any(not 0.0 <= v <= MAX_SPARSITY for v in values):
        raise argparse.ArgumentTypeError(
            f"sparsities must be in [0, {MAX_SPARSITY}] (a layer keeps at least {1 - MAX_SPARSITY:.3f} of its rows), "
            f"got {text!r}"
        )
    return values


def output_path(out: Path, sparsity: float, several: bool) -> Path:
    """out itself, or with several sparsities out with .s<percent> before its extension."""
    return out.with_name(f"{out.stem}.s{round(100 * sparsity):02d}{out.suffix}") if several else out


def run(args: argparse.Namespace) -> int:
    at_least([("--tokens", args.tokens, 1), ("--effect-tokens", args.effect_tokens, 1),
              ("--eval-tokens", args.eval_tokens, 0), ("-t", args.threads, 1)])  # fmt: skip
    several = len(args.sparsity) > 1
    if args.outfile is None and not several:
        raise CalibrationError("-o/--outfile is required for a single sparsity")
    path = args.model
    cfg = CalibrateConfig(
        method=args.method,
        allocation=args.allocation,
        scores=args.scores,
        collect=CollectConfig(n_ctx=args.ctx_size, max_tokens=args.tokens, seed=args.seed),
        effect_tokens=args.effect_tokens,
        eval_tokens=args.eval_tokens,
        n_threads=args.threads,
    )
    if args.outfile is not None:
        outputs = [output_path(args.outfile, sparsity, several) for sparsity in args.sparsity]
        for sparsity, out in zip(args.sparsity, outputs, strict=True):
            check_output_path(out, CalibrationError, inputs=[*split_files_named(path), args.file, *args.eval_file])
            if outputs.count(out) > 1:
                raise CalibrationError(f"--sparsity {sparsity}: another sparsity is written to {out} too (.sNN)")
    held_out = [read_text_as_llama_cpp(f, CalibrationError) for f in args.eval_file]
    names = [f.name for f in args.eval_file] or [f"{args.file.name} (end)"]
    progress = sys.stderr.isatty() and not args.json
    dense, results = calibrate(
        path,
        read_text_as_llama_cpp(args.file, CalibrationError),
        args.sparsity,
        held_out=held_out,
        cfg=cfg,
        progress=progress,
        verbose=args.verbose,
    )
    written = []
    if args.outfile is not None:
        for r in results:
            out = output_path(args.outfile, r.calibration.sparsity, several)
            written.append(str(write_calibrated(path, r.calibration, out, scales=r.scales, progress=progress)))
    if args.json:
        print(json.dumps(_report(path, names, dense, results, written), indent=2))
    else:
        _print_table(names, dense, results)
        for out in written:
            print(f"wrote {out}", file=sys.stderr)
    return 0


def _quality(q: Quality) -> dict[str, float]:
    return {"perplexity": q.perplexity, "up_rate": q.up_rate, "down_rate": q.down_rate, "kept": q.kept,
            "ffn_bytes": q.ffn_bytes, "tokens": q.n_tokens}  # fmt: skip


def _report(path: Path, names: list[str], dense: list[Quality], results: list[CalibrationResult], written: list[str]):
    return {
        "model": str(path),
        "held_out": names[: len(dense)],
        "dense": [_quality(q) for q in dense],
        "results": [
            {
                "sparsity": r.calibration.sparsity,
                "calibration_kept": r.calibration.kept,
                "gate_thresholds": r.calibration.thresholds.gate,
                "act_thresholds": r.calibration.thresholds.act,
                "up_rates": r.calibration.up_rates,
                "down_rates": r.calibration.down_rates,
                "held_out": [
                    {**_quality(q), "perplexity_vs_dense": q.perplexity / d.perplexity - 1}
                    for q, d in zip(r.quality, dense, strict=True)
                ],
            }
            for r in results
        ],
        "written": written,
    }


def _print_table(names: list[str], dense: list[Quality], results: list[CalibrationResult]) -> None:
    """One row per sparsity: rows read and perplexity on each held-out text (dense first)."""
    head = f"{'sparsity':>8} {'calib. rows':>11}"
    for name in names[: len(dense)]:
        head += f" | {name[:28]:>28}: {'rows read':>9} {'up':>5} {'down':>5} {'bytes':>5} {'ppl':>8} {'vs dense':>8}"
    print(head)
    line = f"{'dense':>8} {1.0:>11.3f}"
    for d in dense:
        line += f" | {'':>28}  {1.0:>9.3f} {1.0:>5.3f} {1.0:>5.3f} {1.0:>5.3f} {d.perplexity:>8.3f} {'':>8}"
    print(line)
    for r in results:
        line = f"{r.calibration.sparsity:>8.2f} {r.calibration.kept:>11.3f}"
        for q, d in zip(r.quality, dense, strict=True):
            line += (
                f" | {'':>28}  {q.kept:>9.3f} {q.up_rate:>5.3f} {q.down_rate:>5.3f} {q.ffn_bytes:>5.3f} "
                f"{q.perplexity:>8.3f} {q.perplexity / d.perplexity - 1:>+8.1%}"
            )
        print(line)
    if dense:
        counts = ", ".join(str(d.n_tokens) for d in dense)  # a text shorter than --eval-tokens is measured on less
        print(f"(held out: {counts} tokens; rows read: share of up and down rows, the gate is "
              "always read; bytes: share of the FFN's weight bytes exact mode reads on the CPU, where a file with only "
              "the standard down matrix has it read whole; calib. rows: on the calibration samples)")  # fmt: skip
    sys.stdout.flush()

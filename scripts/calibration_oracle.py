"""The bound on what any gate-only rule of `turbosparse calibrate` can reach: perplexity of an oracle that computes
every up row and reads down row j when the true |a_j| |down_j| (a_j = silu(gate_j) up_j) reaches a per-layer
threshold, the threshold keeping a share of the calibration samples' largest such scores. It reads the same share of
rows as a calibration's rule (no runnable speed-up: up is read whole), through the same engine path (exact mode, gate
threshold 0), so its dense perplexity is the engine's own. Rows per text (the command's defaults: weighted scores,
error allocation):

    dense            every row
    calibrated       the calibration's rule (what `turbosparse calibrate` writes)
    oracle, per layer  the oracle at each layer's kept share of the calibration, (up + down) / 2
    oracle, uniform    the oracle keeping 1 - sparsity in every layer

Rows read are printed as measured, (up + down) / 2 (up / down): the oracle's up share is 100 % by construction, its
down share is the one to compare with the calibration's kept share.

Usage: .venv/bin/python scripts/calibration_oracle.py -m MODEL -f CALIB.txt --eval-file HELD_OUT.txt ... [-t 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from turbosparse.binding import FfnThresholds
from turbosparse.calibrate import CalibrateConfig, CollectConfig
from turbosparse.calibrate.pipeline import Calibrator


def oracle_thresholds(calibrator: Calibrator, shares: list[float]) -> FfnThresholds:
    """Gate thresholds 0 (every up row), and per layer the activation threshold keeping that share of the
    calibration samples' scaled |a_j| (|a_j| |down_j| with weighted scores)."""
    act = []
    for samples, share in zip(calibrator.planner.samples, shares, strict=True):
        desc = np.sort(samples.value)[::-1]
        n_keep = round(share * desc.size)
        act.append(0.0 if n_keep >= desc.size else float(desc[max(n_keep, 1) - 1]))
    return FfnThresholds([0.0] * len(act), act)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", type=Path, required=True)
    p.add_argument("-f", "--file", type=Path, required=True, help="calibration text")
    p.add_argument("--eval-file", type=Path, action="append", required=True, help="held-out text, repeatable")
    p.add_argument("--sparsity", type=float, default=0.4)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=4096, help="calibration tokens")
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()
    cfg = CalibrateConfig(
        collect=CollectConfig(max_tokens=args.tokens), eval_tokens=args.eval_tokens, n_threads=args.threads
    )
    calibrator = Calibrator(args.model, cfg)
    held_out = [f.read_text(encoding="utf-8", errors="replace") for f in args.eval_file]
    calib, held = calibrator.windows(args.file.read_text(encoding="utf-8", errors="replace"), held_out)
    calibrator.collect(calib)
    c = calibrator.calibration(args.sparsity)
    zeros = [0.0] * len(c.up_rates)
    rules = {
        "calibrated": c.thresholds,
        "oracle, per layer": oracle_thresholds(
            calibrator, [(u + d) / 2 for u, d in zip(c.up_rates, c.down_rates, strict=True)]
        ),
        "oracle, uniform": oracle_thresholds(calibrator, [1.0 - args.sparsity] * len(zeros)),
    }
    print(f"sparsity {args.sparsity}: rows read (up / down) and perplexity on each held-out text")
    for name, windows in zip(args.eval_file, held, strict=True):
        dense = calibrator.evaluate(FfnThresholds(zeros, zeros), windows, dense=True)
        print(f"{name.name} ({dense.n_tokens} tokens): dense {dense.perplexity:.3f}", flush=True)
        for rule, thresholds in rules.items():
            q = calibrator.evaluate(thresholds, windows)
            print(
                f"    {rule:18s} {100 * q.kept:5.1f} % ({100 * q.up_rate:3.0f} / {100 * q.down_rate:3.0f})"
                f"  {q.perplexity:.3f} ({100 * (q.perplexity / dense.perplexity - 1):+.1f} %)",
                flush=True,
            )


if __name__ == "__main__":
    main()

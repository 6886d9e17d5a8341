"""The predictor report: per-layer JSON (true / predicted active fraction, recall, precision, rank, bytes) with
totals, and a PNG with the per-layer numbers and each layer's recall vs predicted-active frontier."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from turbosparse.predictor_train.select import Candidate, Choice, CostModel


def build_report(choices: Sequence[Choice], cost: CostModel, recall_target: float, extra: dict | None = None) -> dict:
    """The report as a JSON-ready dict; `extra` (perplexities, timings, ...) is merged at the top level."""
    if not choices:
        raise ValueError("no layers to report")
    dense = cost.ffn_bytes(1.0)
    layers = [
        {
            "layer": i,
            "rank": c.rank,
            "threshold": c.threshold,
            "true_active": c.true_rate,
            "predicted_active": c.predicted_rate,
            "recall": c.recall,
            "precision": c.precision,
            "predictor_bytes": c.predictor_bytes,
            "cost_bytes": c.cost_bytes,
            "met_target": c.met_target,
        }
        for i, c in enumerate(choices)
    ]
    n = len(choices)
    pred_bytes = sum(c.predictor_bytes for c in choices)
    sparse_bytes = sum(c.cost_bytes for c in choices)
    totals = {
        "true_active": sum(c.true_rate for c in choices) / n,
        "predicted_active": sum(c.predicted_rate for c in choices) / n,
        "recall": sum(c.recall * c.true_rate for c in choices) / max(sum(c.true_rate for c in choices), 1e-12),
        "layers_meeting_target": sum(c.met_target for c in choices),
        "predictor_bytes": pred_bytes,
        "ffn_dense_bytes": dense * n,
        "ffn_sparse_bytes": sparse_bytes,
        "predictor_share_of_sparse_ffn": pred_bytes / sparse_bytes,
        "ffn_bytes_ratio_dense_over_sparse": dense * n / sparse_bytes,
    }
    report = {"recall_target": recall_target, "cost_model": asdict(cost), "layers": layers, "totals": totals}
    if extra:
        report.update(extra)
    return report


def write_report(report: dict, out_dir: str | Path, frontiers: Sequence[Sequence[Candidate]] | None = None) -> Path:
    """report.json and report.png under out_dir; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out_dir / "report.png", frontiers)
    return path


def plot_report(report: dict, png: str | Path, frontiers: Sequence[Sequence[Candidate]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    idx = [r["layer"] for r in layers]
    fig, axes = plt.subplots(1, 2 if frontiers else 1, figsize=(13 if frontiers else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(idx, [r["true_active"] for r in layers], "o-", label="true active")
    ax.plot(idx, [r["predicted_active"] for r in layers], "s-", label="predicted active")
    ax.plot(idx, [r["recall"] for r in layers], "^-", label="recall")
    ax.plot(idx, [r["precision"] for r in layers], "v-", label="precision")
    ax.axhline(report["recall_target"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1.02)
    ax.set_title("per layer (ranks: " + ",".join(str(r["rank"]) for r in layers) + ")", fontsize=8)
    ax.legend(fontsize=8)
    if frontiers:
        ax = axes[0][1]
        cmap = plt.get_cmap("viridis")
        for i, cands in enumerate(frontiers):
            for c in cands:
                if c.rank == layers[i]["rank"]:
                    ax.plot(c.predicted_rate, c.recall, color=cmap(i / max(1, len(frontiers) - 1)), lw=0.8)
        ax.scatter([r["predicted_active"] for r in layers], [r["recall"] for r in layers], c="red", s=10, zorder=3,
                   label="chosen")  # fmt: skip
        ax.axhline(report["recall_target"], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("predicted active fraction")
        ax.set_ylabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0.5, 1.0)
        ax.set_title("recall vs predicted active, per layer (colour = depth)", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)

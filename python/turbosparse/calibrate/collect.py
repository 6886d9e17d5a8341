"""What calibration learns from the text: per layer, a random sample of (neuron, token) entries of the dense FFN, and
each neuron's mean |up| (for the weighted scores of thresholds.py).

Each entry carries its neuron, the two scores the thresholds act on and the output energy the neuron would lose if
dropped:

    gate  = |act(gate_j)|          act = silu (SwiGLU), gelu (GEGLU) or relu (ReLU-gated FFNs): whether up row j is
                                   computed
    value = |a_j|                  a_j = act(gate_j) * up_j (dReLU: relu(up_j)): decides whether down column j is read
    energy = a_j^2 * |down_j|^2    the squared size of what neuron j adds to the residual stream
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from turbosparse.binding import FfnActivation, NativeContext, NativeModel, gelu
from turbosparse.constants import TENSOR_FFN_DOWN, TENSOR_FFN_DOWN_T, TENSOR_FFN_DOWN_T_SCALE
from turbosparse.errors import CalibrationError

logger = logging.getLogger(__name__)

TRACE_FLOATS = 1 << 25  # gate + up values held per traced chunk (128 MiB of each)


@dataclass(frozen=True)
class CollectConfig:
    n_ctx: int = 512  # tokens per window (each starts from an empty context, BOS first)
    max_tokens: int = 8192  # calibration tokens used at most
    samples_per_layer: int = 1 << 19
    seed: int = 0


@dataclass(frozen=True)
class LayerSamples:
    gate: np.ndarray  # float32 [n]
    value: np.ndarray  # float32 [n]
    energy: np.ndarray  # float32 [n]
    neuron: np.ndarray  # int32 [n]: the neuron j each entry belongs to

    def scaled(self, gate_scale: np.ndarray, act_scale: np.ndarray) -> LayerSamples:
        """The same entries with the scores the engine compares when it has per-neuron scales [n_ff]."""
        return LayerSamples(self.gate * gate_scale[self.neuron], self.value * act_scale[self.neuron], self.energy,
                            self.neuron)  # fmt: skip


@dataclass(frozen=True)
class Collected:
    """What the dense pass over the calibration text measured."""

    samples: list[LayerSamples]
    mean_abs_up: np.ndarray  # float32 [n_layer, n_ff]: E|up_j| over the calibration tokens


def activations(act: FfnActivation, gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(act(gate), the neuron activation a) for an FFN activation, as the engine computes them."""
    if act == FfnActivation.SWIGLU:
        with np.errstate(over="ignore"):  # exp(-gate) overflows to inf for gate < -88: silu is -0 there
            g = gate / (1.0 + np.exp(-gate))
    elif act == FfnActivation.GEGLU:
        g = gelu(gate)  # ggml's own, as the engine's
    else:
        g = np.maximum(gate, 0.0)
    return g, g * (np.maximum(up, 0.0) if act == FfnActivation.DRELU else up)


def down_column_norms(model: NativeModel) -> np.ndarray:
    """|down_j| for every layer and neuron j, [n_layer, n_ff], from the file's down matrix (either layout; a transposed
    down's products are the FFN's times its per-output factor where the file has one, convert/down_scales.py)."""
    norms = []
    for layer in range(model.info.n_layer):
        standard, scale = TENSOR_FFN_DOWN.format(layer), TENSOR_FFN_DOWN_T_SCALE.format(layer)
        if model.has_tensor(standard):
            norms.append(np.linalg.norm(model.tensor(standard).values(), axis=0))  # [n_embd, n_ff]
        else:
            down_t = model.tensor(TENSOR_FFN_DOWN_T.format(layer)).values()  # [n_ff, n_embd]
            if model.has_tensor(scale):
                down_t = down_t * model.tensor(scale).values()
            norms.append(np.linalg.norm(down_t, axis=1))
    return np.stack(norms).astype(np.float32)


class SampleCollector:
    """Accumulates LayerSamples over traced chunks, each layer's samples drawn uniformly over its entries."""

    def __init__(self, n_layer: int, n_ff: int, n_tokens: int, cfg: CollectConfig, act: FfnActivation) -> None:
        self.act = act
        self.per_token = cfg.samples_per_layer / max(n_tokens, 1)  # samples per token and layer
        self.rng = np.random.default_rng(cfg.seed)
        self.n_ff = n_ff
        self.parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(n_layer)]
        self.abs_up = np.zeros((n_layer, n_ff))
        self.n_tokens = np.zeros(n_layer)

    def add(self, layer: int, gate: np.ndarray, up: np.ndarray, down_norms: np.ndarray) -> None:
        """gate, up [T, n_ff]; down_norms [n_ff]"""
        n = gate.size
        k = min(n, max(1, round(self.per_token * gate.shape[0])))
        pick = self.rng.integers(0, n, k)
        neuron = pick % self.n_ff
        g, a = activations(self.act, gate.reshape(-1)[pick], up.reshape(-1)[pick])
        energy = a * a * down_norms[neuron] ** 2
        self.parts[layer].append((np.abs(g), np.abs(a), energy, neuron))
        self.abs_up[layer] += np.abs(up).sum(axis=0)
        self.n_tokens[layer] += up.shape[0]

    def result(self) -> Collected:
        out = []
        for parts in self.parts:
            if not parts:
                raise CalibrationError("calibration collected no samples: the text is too short")
            cat = [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(3)]
            neuron = np.concatenate([p[3] for p in parts]).astype(np.int32)
            out.append(LayerSamples(gate=cat[0], value=cat[1], energy=cat[2], neuron=neuron))
        mean_abs_up = (self.abs_up / np.maximum(self.n_tokens, 1)[:, None]).astype(np.float32)
        return Collected(out, mean_abs_up)


def collect(
    ctx: NativeContext,
    windows: list[list[int]],
    act: FfnActivation,
    down_norms: np.ndarray,
    cfg: CollectConfig,
    *,
    progress: bool = False,
) -> Collected:
    """Runs the model densely over the windows (each from an empty context) and samples every layer's FFN."""
    info = ctx.model.info
    n_tokens = sum(len(w) for w in windows)
    collector = SampleCollector(info.n_layer, info.n_ff, n_tokens, cfg, act)
    chunk = max(1, min(cfg.n_ctx, TRACE_FLOATS // (info.n_layer * info.n_ff)))
    with tqdm(total=n_tokens, unit="tok", desc="calibrating", disable=not progress) as bar:
        for window in windows:
            ctx.truncate(0)
            for start in range(0, len(window), chunk):
                trace = ctx.eval_trace(window[start : start + chunk])
                for layer in range(info.n_layer):
                    collector.add(layer, trace.gate[layer], trace.up[layer], down_norms[layer])
                bar.update(len(window[start : start + chunk]))
    logger.info("calibration: %d tokens in %d windows", n_tokens, len(windows))
    return collector.result()

"""Runs engines side by side, alternating rounds, and reports medians, ratios, bytes per token and GB/s."""

from __future__ import annotations

import logging
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from turbosparse import constants as C
from turbosparse._library import LIBRARY_ENV
from turbosparse.bench.engines import Attention, Engine, TurbosparseEngine
from turbosparse.binding import (
    CACHE_TYPES,
    DeviceInfo,
    KernelIsa,
    LayerStats,
    NativeModel,
    down_rows_type,
    isa_name,
    isa_supported,
)
from turbosparse.gguf_reader import architecture, read_gguf, read_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    n_threads: int = 2
    prompt_tokens: int = 64  # prefill measurement
    decode_tokens: int = 32
    rounds: int = 5
    context: int = 0  # tokens already in the context when decoding is measured (KV-cache reads grow with it)
    seed: int = 0
    attention: Attention = field(default_factory=Attention)  # every engine's


@dataclass
class Measurement:
    engine: str
    mode: str
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    bytes_per_token: float | None = None  # weights + KV cache read per decoded token
    active_fraction: float | None = None  # FFN rows computed, share (sparse modes)
    kept_fraction: float | None = None  # up and down rows read, share (sparse modes)

    def prefill_tok_s(self, n: int) -> float:
        return n / statistics.median(self.prefill_s)

    def decode_tok_s(self, n: int) -> float:
        return n / statistics.median(self.decode_s)


@dataclass(frozen=True)
class TensorBytes:
    """Bytes of a model file's tensors by role, per layer where it matters."""

    attention: int  # all layers' attention matrices and norms
    output: int  # output head and final norm (a tied embedding counts as the head; else one row per token)
    gate: list[int]
    up: list[int]
    down: list[int]  # ffn_down or ffn_down_t (one of them is read)
    down_whole: list[bool]  # only the standard ffn_down: ggml's dense kernel reads it whole under any activation
    standard_down: list[int]  # ffn_down (0: none), which the grouped route reads whole
    predictor: list[int]  # fc1 + fc2 (the neuron route's predictor)
    group_scores: list[int]  # ffn_pred_groups: the grouped route reads fc1 and these instead of fc2
    fc2: list[int]

    @property
    def ffn(self) -> int:
        return sum(self.gate) + sum(self.up) + sum(self.down)

    def dense(self) -> int:
        return self.attention + self.output + self.ffn

    def sparse_ceiling(self, active: float) -> int:
        """Bytes per token if exactly `active` of the FFN rows were read, predictor included."""
        return self.attention + self.output + sum(self.predictor) + int(active * self.ffn)

    def exact_ceiling(self, up_share: float) -> int:
        """Bytes per token of exact mode on a file with only the standard down matrix (a calibrated SwiGLU file): the
        whole gate and down, read by ggml's dense kernels, and up_share of the up rows."""
        return self.attention + self.output + sum(self.gate) + sum(self.down) + int(up_share * sum(self.up))


def _held_bytes(t: gguf.ReaderTensor) -> int:
    """A transposed down's bytes as a loaded model holds it on this CPU (down_rows_type: another type's Q8_0 copy)."""
    stored, held = int(t.tensor_type), down_rows_type(int(t.tensor_type))
    if held == stored:
        return int(t.n_bytes)
    blck_s, size_s = gguf.GGML_QUANT_SIZES[t.tensor_type]
    blck_h, size_h = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(held)]
    return int(t.n_bytes) // size_s * blck_s // blck_h * size_h


def tensor_bytes(path: Path) -> TensorBytes:
    """Mixture-of-experts files count the stacked experts' (and their predictors') share one token reads,
    expert_used_count / expert_count of them; the router counts with attention (read whole). Transposed downs count
    as a loaded model holds them (_held_bytes)."""
    reader, tensors = read_model(path)  # a split model's files together
    arch = _architecture(reader)
    n_expert, n_used = (reader.get_field(f"{arch}.{k}") for k in ("expert_count", "expert_used_count"))
    expert_share = int(n_used.contents()) / int(n_expert.contents()) if n_expert is not None else 1.0
    n_layer = 1 + max(int(t.name.split(".")[1]) for t in tensors if t.name.startswith("blk."))
    per_layer = {k: [0] * n_layer for k in ("gate", "up", "down", "standard_down", "pred", "groups", "fc2")}
    down_rows = [False] * n_layer  # the layer stores its down by neuron (transposed or grouped)
    attention = output = 0
    if not any(t.name == "output.weight" for t in tensors):  # tied: the embedding is the output head too
        output += sum(int(t.n_bytes) for t in tensors if t.name == "token_embd.weight")
    for t in tensors:
        size = _held_bytes(t) if ".ffn_down_t." in t.name or ".ffn_down_t_exps." in t.name else int(t.n_bytes)
        if not t.name.startswith("blk."):
            output += size if t.name.startswith("output") else 0
            continue
        layer = int(t.name.split(".")[1])
        kind = t.name.split(".")[2]
        if kind.endswith("_exps"):
            size, kind = int(size * expert_share), kind.removesuffix("_exps")
        if kind == "ffn_gate":
            per_layer["gate"][layer] += size
        elif kind == "ffn_up" and arch == "phi3":  # the gate's rows, then the up's (the engine splits them)
            per_layer["gate"][layer] += size // 2
            per_layer["up"][layer] += size - size // 2
        elif kind == "ffn_up":
            per_layer["up"][layer] += size
        elif kind in ("ffn_down", "ffn_down_t"):
            per_layer["down"][layer] = max(per_layer["down"][layer], size)
            per_layer["standard_down"][layer] += size if kind == "ffn_down" else 0
            down_rows[layer] |= kind != "ffn_down"
        elif kind == "ffn_down_groups":
            continue  # per-group down slices of grouped files before 2026-12-04: never read now
        elif kind == "ffn_pred_groups":
            per_layer["groups"][layer] += size
        elif kind.startswith("ffn_pred") or kind in ("fc1", "fc2"):
            per_layer["pred"][layer] += size
            per_layer["fc2"][layer] += size if kind in ("ffn_pred_fc2", "fc2") else 0
        else:
            attention += size
    down_whole = [not r for r in down_rows]
    return TensorBytes(
        attention, output, per_layer["gate"], per_layer["up"], per_layer["down"], down_whole,
        per_layer["standard_down"], per_layer["pred"], per_layer["groups"], per_layer["fc2"],
    )  # fmt: skip


def _architecture(reader: gguf.GGUFReader) -> str:
    """The file's general.architecture (llama, qwen2, ..., PowerInfer's bamboo): its hyperparameters' key prefix."""
    return architecture(reader) or C.ARCHITECTURE


def calibrated_sparsity(path: Path) -> float | None:
    """The target of a file calibrated by `turbosparse calibrate` (turbosparse.calibrated_sparsity), else None."""
    field_ = read_gguf(path).get_field(C.KEY_CALIBRATED_SPARSITY)
    return float(field_.contents()) if field_ is not None else None


def kv_bytes_per_token(path: Path, n_kv: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """K and V (of those cache types) read by one decoded token attending over n_kv cells (a sliding-window layer
    over its window)."""
    model = NativeModel(str(path), metadata_only=True)
    n_values = model.info.n_head_kv * model.info.n_embd_head
    per_cell = sum(n_values // block * size for block, size in (_value_block(type_k), _value_block(type_v)))
    return sum(per_cell * (min(n_kv, window) if window else n_kv) for window in model.sliding_windows)


def _value_block(cache_type: str) -> tuple[int, int]:
    """(values, bytes) of a block of a KV cache type."""
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(CACHE_TYPES[cache_type])]


def sparse_ffn_bytes(
    tb: TensorBytes, layer: int, stats: LayerStats, n_ff: int, exact: bool, groups: bool = False
) -> float:
    """FFN bytes layer read per token by sparse decoding, from its counters: the predictor (or, exact, the whole
    gate; groups, fc1 and the group scores), the computed rows of gate and up, the non-zero rows of down (all of them
    where the file has only the standard down matrix, and in the grouped route, which reads the standard down whole).
    A layer without counts ran dense: it read every FFN byte."""
    if stats.n_tokens == 0:
        return tb.gate[layer] + tb.up[layer] + tb.down[layer]
    computed = stats.n_computed / (stats.n_tokens * n_ff)
    nonzero = stats.n_nonzero / (stats.n_tokens * n_ff)
    predictor = tb.predictor[layer] - tb.fc2[layer] + tb.group_scores[layer] if groups else tb.predictor[layer]
    gate = tb.gate[layer] if exact else computed * tb.gate[layer] + predictor
    if groups:
        down = tb.standard_down[layer]
    else:
        down = tb.down[layer] if tb.down_whole[layer] else nonzero * tb.down[layer]
    return gate + computed * tb.up[layer] + down


@dataclass(frozen=True)
class SparseReads:
    """What sparse decoding read per token, from the engine's counters."""

    bytes_per_token: float  # weights (attention, output, FFN as read)
    active: float  # mean share of FFN neurons computed (up rows)
    kept: float  # mean share of up and down rows read: (computed + non-zero) / 2


def measured_sparse_bytes(tb: TensorBytes, engine: TurbosparseEngine) -> SparseReads:
    """Bytes per decoded token and shares of rows read, from the measured per-layer counters."""
    stats = engine.layer_stats()
    n_ff = engine.model.info.n_ff
    if engine.model.info.n_expert:  # per token-expert: computed share within the chosen experts
        stats = [
            LayerStats(
                n_tokens=sum(e.n_decoded for e in layer),
                n_computed=sum(e.n_computed for e in layer),
                n_nonzero=sum(e.n_nonzero for e in layer),
                n_true_active=0,
                n_true_found=0,
                n_evals=0,
                n_union=0,
            )
            for layer in engine.expert_stats()
        ]
    total = tb.attention + tb.output
    active, kept = [], []
    for i, s in enumerate(stats):
        exact = engine.mode == "exact" or tb.predictor[i] == 0
        total += sparse_ffn_bytes(tb, i, s, n_ff, exact=exact, groups=engine.mode == "groups")
        ran_dense = s.n_tokens == 0  # every row read
        active.append(1.0 if ran_dense else s.n_computed / (s.n_tokens * n_ff))
        kept.append(1.0 if ran_dense else (s.n_computed + s.n_nonzero) / (2 * s.n_tokens * n_ff))
    return SparseReads(total, float(np.mean(active)), float(np.mean(kept)))


# the CPU features the kernels choose between: x86 (/proc/cpuinfo "flags") and aarch64 ("Features": asimddp = SDOT)
KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "asimd", "asimddp", "sve")


def cpu_from_cpuinfo(cpuinfo: str) -> tuple[str, str]:
    """(CPU model, kernel-relevant features) from /proc/cpuinfo's text: x86 names its model and "flags" (its family
    and model numbers follow the name: virtual machines often name only "AMD EPYC", whatever the generation);
    aarch64 has no model name (its implementer and part ids stand in) and lists "Features"."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name", "")
    if model and "cpu family" in fields and "model" in fields:
        model = f"{model} (family {fields['cpu family']} model {fields['model']})"
    model = model or (
        f"aarch64 implementer {fields['cpu implementer']} part {fields['cpu part']}" if "cpu part" in fields else ""
    )
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return model, " ".join(f for f in KERNEL_FLAGS if f in present)


def machine_stamp(device: DeviceInfo | None = None) -> dict[str, str]:
    """The CPU, its kernels, commit, load and huge pages; with a GPU device, that device ("CPU" otherwise)."""
    model, flags = "", ""
    try:
        model, flags = cpu_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:  # no /proc (macOS)
        pass
    model = model or platform.processor() or platform.machine()
    # the kernel instruction sets this CPU runs (the library picks among them at run time)
    isas = " ".join(isa_name(i) for i in KernelIsa if i != KernelIsa.GENERIC and isa_supported(i)) or "generic"
    return {
        "cpu": model,
        "cpu_flags": flags,
        "kernel_isas": isas,
        "commit": code_stamp(Path(__file__).parent, os.environ.get(LIBRARY_ENV)),
        "load": _load_average(),
        # the sparse rows sit in huge pages only where the kernel offers them (README, Speed)
        "huge_pages": _transparent_huge_pages(),
        "device": "CPU" if device is None or device.is_cpu else f"{device.name} ({device.description})",
    }


# variables that point git at another repository than the one holding the code (set, e.g., inside git hooks)
_GIT_REPOSITORY_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR")


def code_stamp(where: Path, library_override: str | None) -> str:
    """The commit of the checkout holding `where` ("unknown" outside one), "-dirty" where its tracked files differ
    from that commit, and the library's path where LIBRARY_ENV puts another one in place of the package's. The
    package runs from a copy that scripts/setup.sh installs from the checkout (anew whenever its sources change):
    "-dirty" says the figures may come from uncommitted code, or from a checkout edited since the last setup."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REPOSITORY_VARIABLES}

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=where, env=env, capture_output=True, text=True, timeout=30, check=False
        )

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = head.returncode == 0 and git("diff", "--quiet", "HEAD").returncode == 1
        commit = head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung one
        commit = ""
    commit = commit or "unknown"
    return f"{commit}, library {library_override}" if library_override else commit


def _transparent_huge_pages() -> str:
    """Linux's transparent huge page setting ("always", "madvise", "never"), or "unavailable"."""
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unavailable"
    found = re.search(r"\[(\w+)\]", setting)
    return found.group(1) if found else "unavailable"


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def check_agreement(reference: Engine, other: Engine, prompt: list[int], relative: bool = False) -> float:
    """Max |logit difference| after the prompt (relative: over the reference's max |logit|): a benchmark of a wrong
    engine is worthless."""
    a, b = reference.prefill(prompt), other.prefill(prompt)
    diff = float(np.abs(a - b).max())
    return diff / float(np.abs(a).max()) if relative else diff


def run(engines: list[Engine], cfg: BenchConfig, vocab_size: int) -> list[Measurement]:
    """Warm-up, then cfg.rounds rounds in which every engine prefills and decodes the same tokens.

    With a context, each engine prefills context + prompt once and every round decodes on from where the
    previous one stopped (the context grows by decode_tokens a round, little beside thousands)."""
    rng = np.random.default_rng(cfg.seed)
    # ids above the byte / control range of any vocabulary; the engines see the same ids
    context = [int(t) for t in rng.integers(300, vocab_size, cfg.context)]
    prompt = [int(t) for t in rng.integers(300, vocab_size, cfg.prompt_tokens)]
    results = [Measurement(e.name, e.mode) for e in engines]
    last = [e.decode(e.prefill(context + prompt), 2) for e in engines]  # warm-up: page in weights, size buffers
    for r in range(cfg.rounds):
        for i, (e, m) in enumerate(zip(engines, results, strict=True)):
            if isinstance(e, TurbosparseEngine):
                e.reset_stats()
            if not context:
                start = time.perf_counter()
                last[i] = e.prefill(prompt)
                m.prefill_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            last[i] = e.decode(last[i], cfg.decode_tokens)
            m.decode_s.append(time.perf_counter() - start)
            logger.info("round %d %s %s: decode %.2f tok/s", r, e.name, e.mode, cfg.decode_tokens / m.decode_s[-1])
    if context:  # prefill is measured on the prompt alone, after decoding
        for e, m in zip(engines, results, strict=True):
            for _ in range(cfg.rounds):
                start = time.perf_counter()
                e.prefill(prompt)
                m.prefill_s.append(time.perf_counter() - start)
    return results

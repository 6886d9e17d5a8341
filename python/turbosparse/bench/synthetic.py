"""Synthetic models for speed benchmarks: real shapes and quant types, random weights, built locally.

A synthetic pair is a dReLU turbosparse model with predictors and its dense llama twin (SwiGLU, standard
down matrix, no extra tensors) that llama.cpp itself loads; both have the same bytes per matrix. The twin can
also be calibrated (`turbosparse calibrate`'s thresholds, chosen on the same kind of token ids the benchmark
feeds) to benchmark training-free sparsity on a 7B shape.

The predictor is constructed so that it predicts exactly, and the predicted-active share is the one
asked for: with fc1 = [B; -B] and fc2 = [A, -A], fc2 . relu(fc1 . h) = A B h. The gate and up matrices
are both G = A B with unit rows, and the predictor reads h / rms(h) (= the FFN input, its norm weights
being 1), so logit_j = g_j = u_j ~ N(0, 1): neuron j is predicted active when g_j >= z, z the (1 - active)
quantile of N(0, 1), and every predicted neuron really is non-zero (relu(g) * relu(u) = g^2 > 0), so
sparse decoding reads exactly the rows the byte ceiling counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import gguf
import numpy as np

from turbosparse import constants as C
from turbosparse.assets import cache_root
from turbosparse.binding import quantize
from turbosparse.calibrate import CalibrateConfig, CollectConfig, write_calibrated
from turbosparse.calibrate.pipeline import Calibrator
from turbosparse.convert.arch.base import ROLE_MATRIX, ROLE_NORM, TensorSpec
from turbosparse.convert.hparams import HParams
from turbosparse.convert.writer import add_llama_hparams, add_turbosparse_keys, tensor_nbytes, write_gguf
from turbosparse.perplexity import bos_prefix, token_windows

logger = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class SyntheticShape:
    name: str
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    rope_base: float
    n_expert: int = 0  # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int = 0


SHAPES: dict[str, SyntheticShape] = {
    "mistral-7b": SyntheticShape("mistral-7b", 32000, 4096, 14336, 32, 32, 8, 32768, 1e6),
    # a few layers and a small vocabulary, for the FFN kernel benchmark (cycling over 4 layers reads more
    # bytes than a large L3 cache holds) and its test (one layer)
    "mistral-7b-4layers": SyntheticShape("mistral-7b-4layers", 1024, 4096, 14336, 4, 32, 8, 4096, 1e6),
    "mistral-7b-layer": SyntheticShape("mistral-7b-layer", 1024, 4096, 14336, 1, 32, 8, 4096, 1e6),
    "tiny": SyntheticShape("tiny", 1024, 256, 768, 2, 4, 2, 2048, 1e4),
    # Mixtral-8x7B: 8 experts of Mistral-7B's FFN, top-2. All 32 layers at Q4_0 (~26 GB) do not fit in 24 GiB
    # beside their dense twin: the bench takes --layers (8 by default)
    "mixtral": SyntheticShape("mixtral", 32000, 4096, 14336, 8, 32, 8, 32768, 1e6, n_expert=8, n_expert_used=2),
    "tiny-moe": SyntheticShape("tiny-moe", 1024, 256, 768, 2, 4, 2, 2048, 1e4, n_expert=4, n_expert_used=2),
}


@dataclass(frozen=True)
class SyntheticSpec:
    shape: SyntheticShape
    quant: Q = Q.Q4_0
    active: float = 0.10  # predicted active share of FFN neurons
    rank: int = 1024  # predictor rank
    pred_quant: Q = Q.Q4_0
    seed: int = 0
    # > 0: also the grouped route's tensors (groups of this many neurons, top-k = the active share) and the standard
    # down matrices, which the grouped route and a GPU device's dense prompts read (the row route reads the transposed
    # ones)
    groups: int = 0

    @property
    def tag(self) -> str:
        return (
            f"{self.shape.name}-{self.quant.name.lower()}-a{self.active:g}-r{self.rank}-{self.pred_quant.name.lower()}"
            f"-s{self.seed}{f'-g{self.groups}-down' if self.groups else ''}"
        )

    @property
    def group_top_k(self) -> int:
        """Groups read per token: the predicted active share of the groups (the same rows as the neuron route)."""
        n_groups = self.shape.n_ff // self.groups
        return max(1, min(n_groups, round(self.active * n_groups)))

    @property
    def threshold(self) -> float:
        """Predictor threshold giving the asked-for active share for N(0, 1) logits."""
        return NormalDist().inv_cdf(1.0 - self.active)


def default_cache_dir() -> Path:
    return cache_root() / "synthetic"


def synthetic_pair(spec: SyntheticSpec, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(sparse model, dense llama twin), built once and cached."""
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    sparse = cache_dir / f"{spec.tag}.gguf"
    # the twin only depends on the shape and the matrix type
    dense = cache_dir / f"{spec.shape.name}-{spec.quant.name.lower()}-dense-s{spec.seed}.gguf"
    if not sparse.exists():
        _write(sparse, spec, sparse=True)
    if not dense.exists():
        _write(dense, spec, sparse=False)
    return sparse, dense


# ---- weights ------------------------------------------------------------------------------------------


class _Weights:
    """Random matrices, quantized once and reused by every layer (memory traffic is what is measured)."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self._cache: dict[str, np.ndarray] = {}

    def _random(self, rows: int, cols: int, scale: float) -> np.ndarray:
        return (self.rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale / np.sqrt(cols))).astype(
            np.float32
        )

    def matrix(self, key: str, rows: int, cols: int, qtype: Q, scale: float = 1.0) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = (
                quantize(self._random(rows, cols, scale), qtype) if qtype != Q.F32 else self._random(rows, cols, scale)
            )
        return self._cache[key]

    def gate_and_predictor(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(G with unit rows [n_ff, n_embd], fc1 [rank, n_embd], fc2 [n_ff, rank]) with fc2 relu(fc1 h) = G h."""
        if "gate" not in self._cache:
            s, half = self.spec.shape, self.spec.rank // 2
            a = self.rng.standard_normal((s.n_ff, half), dtype=np.float32)
            b = self.rng.standard_normal((half, s.n_embd), dtype=np.float32)
            g = a @ b
            norms = np.linalg.norm(g, axis=1, keepdims=True)
            a /= norms  # G = A B keeps unit rows when A's rows are scaled alike
            self._cache["gate"] = g / norms
            self._cache["fc1"] = np.concatenate([b, -b])
            self._cache["fc2"] = np.concatenate([a, -a], axis=1)
        return self._cache["gate"], self._cache["fc1"], self._cache["fc2"]


@dataclass(frozen=True)
class _Entry:
    name: str
    rows: int  # numpy orientation (out, in); norms are (1, n)
    cols: int
    qtype: Q
    produce: Callable[[], np.ndarray]
    planes: int = 1  # a 3-D tensor: planes x rows x cols

    @property
    def shape(self) -> tuple[int, ...]:
        """Values in numpy order (ggml's ne reversed): norms are 1-D."""
        shape = (self.cols,) if self.rows == 1 else (self.rows, self.cols)
        return (self.planes, *shape) if self.planes > 1 else shape

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)

    def spec(self) -> TensorSpec:
        """The converter's tensor: produce() returns the bytes as stored."""
        role = ROLE_NORM if len(self.shape) == 1 else ROLE_MATRIX
        return TensorSpec(self.name, self.shape, role, self.produce, f"synthetic: tensor '{self.name}'", encoded=True)


def _entries(spec: SyntheticSpec, sparse: bool) -> list[_Entry]:
    """Every tensor of the file, in file order, with a producer of its stored bytes."""
    s, q, pq, w = spec.shape, spec.quant, spec.pred_quant, _Weights(spec)
    hd = s.n_embd // s.n_head
    ones = np.ones(s.n_embd, dtype=np.float32)

    def norm(name: str) -> _Entry:
        return _Entry(name, 1, s.n_embd, Q.F32, lambda: ones)

    def mat(name: str, key: str, rows: int, cols: int, scale: float = 1.0) -> _Entry:
        return _Entry(name, rows, cols, q, lambda: w.matrix(key, rows, cols, q, scale))

    out = [mat("token_embd.weight", "embd", s.n_vocab, s.n_embd, np.sqrt(s.n_embd))]
    for i in range(s.n_layer):
        out += [
            norm(f"blk.{i}.attn_norm.weight"),
            mat(f"blk.{i}.attn_q.weight", "q", s.n_head * hd, s.n_embd),
            mat(f"blk.{i}.attn_k.weight", "k", s.n_head_kv * hd, s.n_embd),
            mat(f"blk.{i}.attn_v.weight", "v", s.n_head_kv * hd, s.n_embd),
            mat(f"blk.{i}.attn_output.weight", "o", s.n_embd, s.n_head * hd, 0.1),
            norm(f"blk.{i}.ffn_norm.weight"),
        ]
        if s.n_expert:
            out += _expert_entries(spec, w, i, sparse)
            continue
        out += [
            _Entry(f"blk.{i}.ffn_gate.weight", s.n_ff, s.n_embd, q, lambda: _gate(w, q)),
            _Entry(f"blk.{i}.ffn_up.weight", s.n_ff, s.n_embd, q, lambda: _gate(w, q)),
        ]
        if sparse:
            out += [
                mat(C.TENSOR_FFN_DOWN_T.format(i), "down_t", s.n_ff, s.n_embd, 0.05),
                _Entry(C.TENSOR_PRED_FC1.format(i), spec.rank, s.n_embd, pq, lambda: _predictor(w, "fc1", pq)),
                _Entry(C.TENSOR_PRED_FC2.format(i), s.n_ff, spec.rank, pq, lambda: _predictor(w, "fc2", pq)),
            ]
            if spec.groups:
                out += [
                    # random like down_t, not its transpose: the routes compute different FFNs here, which timing
                    # does not mind
                    mat(f"blk.{i}.ffn_down.weight", "down", s.n_embd, s.n_ff, 0.05),
                    _Entry(C.TENSOR_PRED_GROUPS.format(i), s.n_ff // spec.groups, spec.rank, pq,
                           lambda: _predictor(w, "groups", pq, spec.groups)),
                ]  # fmt: skip
        else:
            out.append(mat(f"blk.{i}.ffn_down.weight", "down", s.n_embd, s.n_ff, 0.05))
    return [*out, norm("output_norm.weight"), mat("output.weight", "output", s.n_vocab, s.n_embd)]


def _expert_entries(spec: SyntheticSpec, w: _Weights, i: int, sparse: bool) -> list[_Entry]:
    """Layer i's router and stacked experts, every expert a copy of the dense FFN's matrices (distinct bytes in
    the file: a token still reads its own experts' rows). The router is random: tokens spread over the experts."""
    s, q, pq, n = spec.shape, spec.quant, spec.pred_quant, spec.shape.n_expert

    def stack(name: str, rows: int, cols: int, qtype: Q, one: Callable[[], np.ndarray]) -> _Entry:
        return _Entry(name, rows, cols, qtype, lambda: np.stack([one()] * n), planes=n)

    router = _Entry(C.TENSOR_FFN_GATE_INP.format(i), n, s.n_embd, Q.F32, lambda: w.matrix("router", n, s.n_embd, Q.F32))
    out = [
        router,
        stack(C.TENSOR_FFN_GATE_EXPS.format(i), s.n_ff, s.n_embd, q, lambda: _gate(w, q)),
        stack(C.TENSOR_FFN_UP_EXPS.format(i), s.n_ff, s.n_embd, q, lambda: _gate(w, q)),
    ]
    if not sparse:
        return [
            *out,
            stack(
                C.TENSOR_FFN_DOWN_EXPS.format(i),
                s.n_embd,
                s.n_ff,
                q,
                lambda: w.matrix("down", s.n_embd, s.n_ff, q, 0.05),
            ),
        ]
    return [
        *out,
        stack(
            C.TENSOR_FFN_DOWN_T_EXPS.format(i),
            s.n_ff,
            s.n_embd,
            q,
            lambda: w.matrix("down_t", s.n_ff, s.n_embd, q, 0.05),
        ),
        stack(C.TENSOR_PRED_FC1_EXPS.format(i), spec.rank, s.n_embd, pq, lambda: _predictor(w, "fc1", pq)),
        stack(C.TENSOR_PRED_FC2_EXPS.format(i), s.n_ff, spec.rank, pq, lambda: _predictor(w, "fc2", pq)),
    ]


def _gate(w: _Weights, q: Q) -> np.ndarray:
    key = f"gate-{q.name}"
    if key not in w._cache:
        g = w.gate_and_predictor()[0]
        w._cache[key] = quantize(g, q) if q != Q.F32 else g
    return w._cache[key]


def _predictor(w: _Weights, which: str, q: Q, group_size: int = 0) -> np.ndarray:
    """fc1, fc2, or the group scores (fc2 rows summed per group of group_size)."""
    key = f"{which}-{q.name}"
    if key not in w._cache:
        _, fc1, fc2 = w.gate_and_predictor()
        m = {"fc1": fc1, "fc2": fc2}.get(which)
        if which == "groups":
            m = fc2.reshape(-1, group_size, fc2.shape[1]).sum(axis=1)
        w._cache[key] = quantize(m, q) if q != Q.F32 else m
    return w._cache[key]


def _add_vocab(writer: gguf.GGUFWriter, n_vocab: int) -> None:
    """A SentencePiece-style vocabulary of n_vocab made-up pieces (ids are what the benchmark feeds)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁t{i}" for i in range(n_vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (n_vocab - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(n_vocab)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


def _write(path: Path, spec: SyntheticSpec, *, sparse: bool) -> None:
    """The file through the converter's streaming writer: header first, then one tensor in memory at a time, into
    a temporary file renamed when complete."""
    s = spec.shape
    hparams = HParams(
        n_layer=s.n_layer,
        n_embd=s.n_embd,
        n_ff=s.n_ff,
        n_head=s.n_head,
        n_head_kv=s.n_head_kv,
        head_dim=s.n_embd // s.n_head,
        n_ctx=s.n_ctx,
        vocab_size=s.n_vocab,
        rope_theta=s.rope_base,
        rms_eps=1e-5,
        rope_linear_factor=None,
        tied_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        n_expert=s.n_expert,
        n_expert_used=s.n_expert_used,
    )
    keys: dict[str, object] = {}
    if sparse:  # through the converter's key table: the value types the format fixes (u32 ranks, not i32)
        keys = {
            C.KEY_FFN_ACTIVATION: "drelu",
            C.KEY_DOWN_LAYOUT: "both" if spec.groups else "transposed",
            C.KEY_PREDICTOR_INPUT: "residual_rmsnorm",
            C.KEY_PREDICTOR_THRESHOLD: spec.threshold,
            C.KEY_PREDICTOR_RANKS: [spec.rank] * s.n_layer,
            C.KEY_SOURCE: "synthetic",
        }
        if spec.groups:
            keys[C.KEY_GROUP_SIZE] = spec.groups
            keys[C.KEY_GROUP_TOP_K] = [spec.group_top_k] * s.n_layer

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name(f"synthetic {spec.tag}{'' if sparse else ' dense twin'}")
        add_llama_hparams(writer, hparams)
        _add_vocab(writer, s.n_vocab)
        if keys:
            add_turbosparse_keys(writer, keys)

    entries = _entries(spec, sparse)
    write_gguf(path, [e.spec() for e in entries], [e.qtype for e in entries], add_metadata, progress=True)


CALIBRATION_TOKENS = 1024  # random token ids the twin's thresholds are chosen on (like the benchmark's prompts)


def calibrated_twin(dense: Path, sparsity: float, n_threads: int) -> Path:
    """The dense twin with `turbosparse calibrate`'s FFN thresholds for `sparsity` (uniform allocation: the weights
    are random, every layer alike), chosen on random token ids; built once and cached beside the twin."""
    out = dense.with_name(f"{dense.stem}.calibrated-s{sparsity:g}.gguf")  # each target its own file
    if out.exists():
        return out
    cfg = CalibrateConfig(allocation="uniform", eval_tokens=0, n_threads=n_threads,
                          collect=CollectConfig(n_ctx=256, max_tokens=CALIBRATION_TOKENS))  # fmt: skip
    calibrator = Calibrator(dense, cfg)
    vocab = calibrator.model.info.n_vocab
    ids = [int(t) for t in np.random.default_rng(1).integers(300, vocab, CALIBRATION_TOKENS)]
    n_windows = CALIBRATION_TOKENS // cfg.collect.n_ctx
    calibrator.collect(list(token_windows(ids, cfg.collect.n_ctx, bos_prefix(calibrator.tokenizer), n_windows)))
    return write_calibrated(dense, calibrator.calibration(sparsity), out, scales=calibrator.scales)


def with_layers(shape: SyntheticShape, n_layer: int) -> SyntheticShape:
    """The shape with n_layer layers (its name says so, so that each count has its own cached files)."""
    return shape if n_layer == shape.n_layer else replace(shape, name=f"{shape.name}-{n_layer}layers", n_layer=n_layer)


def moe_arithmetic(spec: SyntheticSpec) -> str:
    """Per-layer bytes of a mixture-of-experts shape: what a layer holds and what a token reads of it."""
    s = spec.shape
    entries = {e.name.split(".", 2)[2]: e.nbytes for e in _entries(replace(spec, shape=replace(s, n_layer=1)), True)
               if e.name.startswith("blk.0.")}  # fmt: skip
    attention = sum(v for k, v in entries.items() if k.startswith("attn_"))
    expert = (
        sum(entries[k] for k in ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_t_exps.weight")) / s.n_expert
    )
    predictor = (entries["ffn_pred_fc1_exps.weight"] + entries["ffn_pred_fc2_exps.weight"]) / s.n_expert
    k, mb = s.n_expert_used, 1e6
    dense_read = attention + k * expert
    sparse_read = attention + k * (predictor + spec.active * expert)
    held = s.n_expert * expert
    return (
        f"# per layer ({spec.quant.name}): attention {attention / mb:.1f} MB, {s.n_expert} experts x "
        f"{expert / mb:.1f} MB = {held / mb:.0f} MB held; a token reads attention + {k} experts = "
        f"{dense_read / mb:.1f} MB dense, attention + {k} x (predictor {predictor / mb:.1f} MB + {spec.active:g} x "
        f"expert) = {sparse_read / mb:.1f} MB sparse; 32 layers would hold {32 * (attention + held) / 1e9:.1f} GB per "
        f"file (this bench: {s.n_layer} layers)"
    )

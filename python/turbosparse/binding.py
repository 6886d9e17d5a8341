"""Typed wrappers over libturbosparse: arrays in, arrays out, return codes turned into exceptions."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from turbosparse._library import Library, load
from turbosparse.errors import ContextOverflowError, EvalError, InvalidArgumentError, ModelLoadError, TurboSparseError

_ERR_SIZE = 1024
GGML_TYPE_F32 = 0
# the KV cache types, by llama.cpp's names (--cache-type-k / -v), as ggml type ids
CACHE_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6,
                               "q5_1": 7}  # fmt: skip


def max_sequences() -> int:
    """The most sequences a context holds (the library's TS_MAX_SEQ)."""
    return int(load().lib.TS_MAX_SEQ)


class Status(enum.IntEnum):
    """What a failing C call returns (enum ts_status)."""

    OK = 0
    FAILED = -1
    ARGUMENT = -2
    CONTEXT_FULL = -3


_STATUS_ERRORS: dict[int, type[TurboSparseError]] = {
    Status.ARGUMENT: InvalidArgumentError,
    Status.CONTEXT_FULL: ContextOverflowError,
}


def status_error(status: int, message: str) -> TurboSparseError:
    """The exception for a failing C call's status (EvalError for TS_ERR_FAILED)."""
    return _STATUS_ERRORS.get(status, EvalError)(message)


class FfnActivation(enum.IntEnum):
    SWIGLU = 0  # silu(gate) * up
    REGLU = 1  # relu(gate) * up
    DRELU = 2  # relu(gate) * relu(up)
    GEGLU = 3  # gelu(gate) * up (Gemma)


class PredictorInput(enum.IntEnum):
    RESIDUAL = 0  # h, the residual before the FFN norm
    RESIDUAL_RMSNORM = 1  # h / rms(h)


class SparseMode(enum.IntEnum):
    """How decoding computes the FFN (enum ts_sparse_mode); which ones a file allows is decided in C
    (NativeModel.sparse_mode)."""

    OFF = 0
    PREDICTOR = 1
    EXACT = 2
    GROUPS = 3  # top-k neuron groups in standard ggml ops (ggml_ops/src/grouped_ffn.h)
    AUTO = 4  # what the file allows: predictor, else exact, else off

    @property
    def label(self) -> str:
        """The name users write: "off", "predictor", "exact", "groups", "auto"."""
        return self.name.lower()


# the one table from the names users write to modes
SPARSE_MODES: dict[str, SparseMode] = {mode.label: mode for mode in SparseMode}


def sparse_mode_named(name: str) -> SparseMode:
    """The mode of a name in SPARSE_MODES; InvalidArgumentError for any other."""
    mode = SPARSE_MODES.get(name)
    if mode is None:
        choices = ", ".join(repr(m.label) for m in SparseMode)
        raise InvalidArgumentError(f"sparse must be one of {choices}; got {name!r}")
    return mode


@dataclass(frozen=True)
class ModelInfo:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd_head: int
    n_ff: int
    n_ctx_train: int
    n_rot: int
    rope_freq_base: float
    rope_freq_scale: float
    rms_eps: float
    ffn_act: FfnActivation
    has_predictors: bool
    has_down_t: bool
    has_down: bool
    predictor_threshold: float
    predictor_input: PredictorInput
    is_powerinfer: bool
    ffn_type: int
    file_type: int
    has_ffn_thresholds: bool  # a calibrated file (turbosparse calibrate): per-layer FFN thresholds
    group_size: int  # neurons per group of the grouped route, 0 = the file has no groups
    n_params: int
    n_bytes: int
    n_expert: int  # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int  # experts each token is routed to


@dataclass(frozen=True)
class FfnThresholds:
    """Per-layer thresholds of the sparse FFN (see ts_context_set_ffn_thresholds in turbosparse.h): up row j is
    computed when |act(gate_j)| >= gate[l] (exact mode), down row j read when |a_j| >= act[l]. Zeros: dense."""

    gate: list[float]
    act: list[float]


@dataclass(frozen=True)
class FfnScales:
    """Per-neuron scales of the threshold scores, [n_layer, n_ff] each or None (see ts_context_set_ffn_scales in
    turbosparse.h): up row j is computed when |act(gate_j)| gate[l, j] >= the gate threshold, down row j read when
    |a_j| act[l, j] >= the act threshold."""

    gate: np.ndarray | None = None
    act: np.ndarray | None = None


@dataclass(frozen=True)
class StoredTensor:
    name: str
    ggml_type: int
    ne: tuple[int, ...]  # ggml shape: ne[0] is the row length
    data: np.ndarray  # uint8, the stored bytes

    def values(self) -> np.ndarray:
        """float32 [ne[1], ne[0]] (2-D tensors), dequantized by ggml."""
        row = self.ne[0]
        if self.ggml_type == GGML_TYPE_F32:
            return self.data.view(np.float32).reshape(-1, row)
        return dequantize(self.data, self.ggml_type, row).reshape(-1, row)


@dataclass(frozen=True)
class FfnTrace:
    """Every layer's dense FFN over a run of tokens (NativeContext.eval_trace)."""

    gate: np.ndarray  # [n_layer, n_tokens, n_ff] gate values before the activation
    up: np.ndarray  # [n_layer, n_tokens, n_ff]


@dataclass(frozen=True)
class LayerStats:
    """One layer's sparse-FFN counters (see ts_layer_stats in turbosparse.h)."""

    n_tokens: int
    n_computed: int
    n_nonzero: int
    n_true_active: int
    n_true_found: int
    n_evals: int
    n_union: int
    act_us: int = 0  # node timing only (set_node_timing): the gate/up node's wall-clock microseconds, summed
    down_us: int = 0  # ... the sparse down node's (0 where the layer has only the standard down)


@dataclass(frozen=True)
class ExpertStats:
    """One expert's counters in one layer (see ts_expert_stats in turbosparse.h)."""

    n_routed: int
    n_decoded: int
    n_computed: int
    n_nonzero: int


@dataclass(frozen=True)
class DeviceInfo:
    """A ggml device a model can live on (ggml's name: "CPU", "Metal", "CUDA0", "Vulkan0", ...)."""

    name: str
    description: str
    is_cpu: bool
    memory_total: int  # bytes, as the device reports them


def _device_info(library: Library, raw: Any) -> DeviceInfo:
    ffi = library.ffi
    return DeviceInfo(
        name=ffi.string(raw.name).decode(),
        description=ffi.string(raw.description).decode(errors="replace"),
        is_cpu=bool(raw.is_cpu),
        memory_total=int(raw.memory_total),
    )


def devices() -> list[DeviceInfo]:
    """The devices this process's ggml can place a model on: the CPU, and GPUs where ggml was built with Metal,
    CUDA or Vulkan."""
    library = load()
    raw = library.ffi.new("ts_device_info *")
    found = []
    for i in range(library.lib.ts_device_count()):
        if library.lib.ts_device_get(i, raw) == Status.OK:
            found.append(_device_info(library, raw))
    return found


def find_device(name: str) -> DeviceInfo:
    """The device a name means: "cpu", "gpu" (the first GPU) or a ggml device name; InvalidArgumentError listing the
    devices there are for any other."""
    library = load()
    raw = library.ffi.new("ts_device_info *")
    err = _ErrorBuffer(library)
    status = library.lib.ts_device_lookup(name.encode(), raw, err.buf, _ERR_SIZE)
    if status != Status.OK:
        raise status_error(status, err.message)
    return _device_info(library, raw)


def _threshold(value: float) -> float:
    """A predictor threshold as the C library takes it (NaN there means "the file's": None here)."""
    if math.isnan(value):
        raise InvalidArgumentError(f"threshold must be a number, got {value} (None: the file's own)")
    return float(value)


class _ErrorBuffer:
    def __init__(self, library: Library) -> None:
        self._ffi = library.ffi
        self.buf = library.ffi.new("char[]", _ERR_SIZE)

    @property
    def message(self) -> str:
        return self._ffi.string(self.buf).decode("utf-8", errors="replace")


class NativeModel:
    """A model loaded by the C engine (weights mapped read-only from the file, or copied into the layouts the
    kernels read: ggml's repacked matrices, the sparse FFN's rows in huge-page memory)."""

    def __init__(
        self,
        path: str,
        *,
        repack: bool = True,
        sparse_rows: bool = True,
        dense_gate: bool = False,
        metadata_only: bool = False,
        device: str = "cpu",
    ) -> None:
        self._lib = load()
        ffi, lib = self._lib.ffi, self._lib.lib
        params = lib.ts_model_default_params()
        params.repack = int(repack)
        params.sparse_rows = int(sparse_rows)
        params.dense_gate = int(dense_gate)  # the gate repacked for exact mode; predictor mode then unavailable
        params.metadata_only = int(metadata_only)  # a probe: info, sparse_mode, tensors; no context runs on it
        device_name = ffi.new("char[]", device.encode())  # alive until ts_model_load returns
        params.device = device_name
        err = _ErrorBuffer(self._lib)
        handle = lib.ts_model_load(os.fsencode(path), ffi.new("ts_model_params *", params), err.buf, _ERR_SIZE)
        if handle == ffi.NULL:
            raise ModelLoadError(err.message)
        self._handle = ffi.gc(handle, lib.ts_model_free)
        raw_device = ffi.new("ts_device_info *")
        lib.ts_model_get_device(self._handle, raw_device)
        self.device = _device_info(self._lib, raw_device)  # where the weights live
        raw = ffi.new("ts_model_info *")
        lib.ts_model_get_info(self._handle, raw)
        values: dict[str, Any] = {f.name: getattr(raw, f.name) for f in fields(ModelInfo)}
        values["ffn_act"] = FfnActivation(values["ffn_act"])
        values["predictor_input"] = PredictorInput(values["predictor_input"])
        for flag in ("has_predictors", "has_down_t", "has_down", "is_powerinfer", "has_ffn_thresholds"):
            values[flag] = bool(values[flag])
        self.info = ModelInfo(**values)
        ranks = ffi.new("int32_t[]", self.info.n_layer)
        lib.ts_model_get_predictor_ranks(self._handle, ranks)
        self.predictor_ranks: list[int] = list(ranks)
        windows = ffi.new("int32_t[]", self.info.n_layer)
        lib.ts_model_get_sliding_windows(self._handle, windows)
        self.sliding_windows: list[int] = list(windows)  # per layer: its window of positions, 0 where it sees all
        gate, act = ffi.new("float[]", self.info.n_layer), ffi.new("float[]", self.info.n_layer)
        lib.ts_model_get_ffn_thresholds(self._handle, gate, act)
        self.ffn_thresholds = FfnThresholds(list(gate), list(act))
        top_k = ffi.new("int32_t[]", self.info.n_layer)
        lib.ts_model_get_group_top_k(self._handle, top_k)
        self.group_top_k: list[int] = list(top_k)  # groups read per token per layer (zeros: no groups)
        # layers whose gate and up rows this placement laid side by side (huge-page copy of predictor layers)
        self.n_gate_up_side_by_side: int = lib.ts_model_n_gate_up_side_by_side(self._handle)
        # ... and layers whose gate and up rows it holds in the split layout (the x86 Q4_0 and Q4_K kernels)
        self.n_gate_up_split: int = lib.ts_model_n_gate_up_split(self._handle)
        # ... and layers whose predictor matrices it holds so (read by turbosparse's kernels, not ggml's mul_mat)
        self.n_predictor_split: int = lib.ts_model_n_predictor_split(self._handle)
        self.ffn_scales = self._ffn_scales()

    def _ffn_scales(self) -> FfnScales:
        """The file's per-neuron scales of the threshold scores (copies, [n_layer, n_ff] each), None where absent."""
        ffi = self._lib.ffi
        gate, act = ffi.new("const float **"), ffi.new("const float **")
        self._lib.lib.ts_model_get_ffn_scales(self._handle, gate, act)
        n = self.info.n_layer * self.info.n_ff

        def copy(p: Any) -> np.ndarray | None:
            if p[0] == ffi.NULL:
                return None
            return np.frombuffer(ffi.buffer(p[0], 4 * n), dtype=np.float32).reshape(self.info.n_layer, -1).copy()

        return FfnScales(copy(gate), copy(act))

    @property
    def handle(self) -> Any:
        return self._handle

    @classmethod
    def for_mode(cls, path: str, mode: SparseMode, device: str = "cpu") -> NativeModel:
        """The model placed for decoding in `mode` (a decided one, not AUTO): dense decoding with ggml's repacked
        matrices; the sparse modes with the FFN's row matrices in their row layout (copied into huge pages); exact
        mode with the gate as a dense matrix, which it computes whole."""
        return cls(path, repack=True, sparse_rows=mode != SparseMode.OFF, dense_gate=mode == SparseMode.EXACT,
                   device=device)  # fmt: skip

    def sparse_mode(self, requested: SparseMode, on_cpu: bool = True) -> SparseMode:
        """The mode `requested` (AUTO included) means for this file, run on the CPU or (on_cpu False) on a GPU
        device, decided by the C library; InvalidArgumentError naming the tensor, key or layer a mode needs when the
        file cannot run it."""
        mode = self._lib.ffi.new("int32_t *")
        err = _ErrorBuffer(self._lib)
        status = self._lib.lib.ts_model_sparse_mode(self._handle, int(requested), int(on_cpu), mode, err.buf, _ERR_SIZE)
        if status != Status.OK:
            raise status_error(status, err.message)
        return SparseMode(mode[0])

    def has_tensor(self, name: str) -> bool:
        return self._lib.lib.ts_model_get_tensor(
            self._handle, name.encode(), self._lib.ffi.new("int32_t *"), self._lib.ffi.new("int64_t[4]"),
            self._lib.ffi.new("void **"), self._lib.ffi.new("uint64_t *"), self._lib.ffi.NULL, 0,
        ) == 0  # fmt: skip

    def tensor(self, name: str) -> StoredTensor:
        """A tensor of the file as stored: read-only bytes in the mapping (valid while this model lives)."""
        ffi = self._lib.ffi
        ttype, ne, data, nbytes = ffi.new("int32_t *"), ffi.new("int64_t[4]"), ffi.new("void **"), ffi.new("uint64_t *")
        err = _ErrorBuffer(self._lib)
        if self._lib.lib.ts_model_get_tensor(self._handle, name.encode(), ttype, ne, data, nbytes, err.buf, _ERR_SIZE):
            raise KeyError(err.message)
        raw = np.frombuffer(ffi.buffer(data[0], nbytes[0]), dtype=np.uint8)
        raw.flags.writeable = False
        return StoredTensor(name, int(ttype[0]), tuple(int(n) for n in ne), raw)


def _cache_type(name: str) -> int:
    if name not in CACHE_TYPES:
        raise InvalidArgumentError(f"KV cache type {name!r} is not one of {', '.join(CACHE_TYPES)}")
    return CACHE_TYPES[name]


class NativeContext:
    """KV caches and graph evaluation for n_seq token sequences (0..n_seq-1; methods default to sequence 0).

    Not thread-safe: one call at a time (the C evaluation releases the GIL)."""

    def __init__(
        self,
        model: NativeModel,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
        sparse_mode: SparseMode,
        threshold: float | None,
        kv_f32: bool = False,
        n_seq: int = 1,
        swa_full: bool = False,
        flash_attn: bool = False,
        type_k: str = "f16",
        type_v: str = "f16",
    ) -> None:
        """kv_f32: both caches F32 (type_k and type_v are then not read); type_k / type_v: CACHE_TYPES' names."""
        self._lib = load()
        self._model = model  # keeps the weights alive as long as the context
        ffi, lib = self._lib.ffi, self._lib.lib
        params = lib.ts_context_default_params()
        for name, value in (("n_ctx", n_ctx), ("n_threads", n_threads), ("n_batch", n_batch), ("n_seq", n_seq)):
            if not -(2**31) <= value < 2**31:  # int32 in C; the sensible ranges: ts_context_check_params
                raise InvalidArgumentError(f"{name} = {value} does not fit the C library's int32")
        params.n_ctx = n_ctx
        params.n_threads = n_threads
        params.n_batch = n_batch
        params.sparse_mode = int(sparse_mode)
        params.n_seq = n_seq
        params.swa_full = int(swa_full)
        params.flash_attn = int(flash_attn)
        params.type_k = GGML_TYPE_F32 if kv_f32 else _cache_type(type_k)
        params.type_v = GGML_TYPE_F32 if kv_f32 else _cache_type(type_v)
        params.predictor_threshold = math.nan if threshold is None else _threshold(threshold)
        self._err = _ErrorBuffer(self._lib)  # one buffer for every call: calls are serialised
        c_params = ffi.new("ts_context_params *", params)
        status = lib.ts_context_check_params(model.handle, c_params, self._err.buf, _ERR_SIZE)
        if status != Status.OK:
            raise status_error(status, self._err.message)
        handle = lib.ts_context_new(model.handle, c_params, self._err.buf, _ERR_SIZE)
        if handle == ffi.NULL:
            raise EvalError(self._err.message)
        self._handle = ffi.gc(handle, lib.ts_context_free)
        self.n_vocab = model.info.n_vocab
        self.n_ctx: int = int(lib.ts_context_n_ctx(self._handle))  # per sequence
        self.n_seq: int = int(lib.ts_context_n_seq(self._handle))
        self.sparse_mode = SparseMode(lib.ts_context_sparse_mode(self._handle))  # AUTO resolved
        self.n_batch = n_batch

    @property
    def n_past(self) -> int:
        """Tokens cached in sequence 0."""
        return self.n_past_of(0)

    def n_past_of(self, seq: int) -> int:
        return self._seq_count(self._lib.lib.ts_context_n_past_seq(self._handle, seq), seq)

    def _seq_count(self, n: int, seq: int) -> int:
        """A count the C library returned for sequence seq: -1 when seq is out of range."""
        if n < 0:
            raise InvalidArgumentError(f"sequence {seq} out of [0, {self.n_seq})")
        return int(n)

    @property
    def threshold(self) -> float:
        return float(self._lib.lib.ts_context_threshold(self._handle))

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._lib.lib.ts_context_set_threshold(self._handle, _threshold(value))

    def set_measure_recall(self, on: bool) -> None:
        self._lib.lib.ts_context_set_measure_recall(self._handle, int(on))

    def set_node_timing(self, on: bool) -> None:
        """Times the sparse FFN's gate/up and down nodes (row route, non-MoE layers) into layer_stats' act_us and
        down_us."""
        self._lib.lib.ts_context_set_node_timing(self._handle, int(on))

    @property
    def ffn_thresholds(self) -> FfnThresholds:
        n = self._model.info.n_layer
        gate, act = self._lib.ffi.new("float[]", n), self._lib.ffi.new("float[]", n)
        self._lib.lib.ts_context_get_ffn_thresholds(self._handle, gate, act)
        return FfnThresholds(list(gate), list(act))

    @ffn_thresholds.setter
    def ffn_thresholds(self, value: FfnThresholds) -> None:
        n = self._model.info.n_layer
        arrays = []
        for name, values in (("gate", value.gate), ("act", value.act)):
            a = np.ascontiguousarray(values, dtype=np.float32)
            if a.shape != (n,) or not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ValueError(f"{name} thresholds must be {n} finite values >= 0, got {list(values)!r}")
            arrays.append(a)
        ffi = self._lib.ffi
        self._lib.lib.ts_context_set_ffn_thresholds(
            self._handle, ffi.from_buffer("float[]", arrays[0]), ffi.from_buffer("float[]", arrays[1])
        )

    def set_ffn_scales(self, value: FfnScales) -> None:
        """Per-neuron scales of the threshold scores from the next evaluation on (ts_context_set_ffn_scales)."""
        shape = (self._model.info.n_layer, self._model.info.n_ff)
        arrays = []
        for name, values in (("gate", value.gate), ("act", value.act)):
            a = None if values is None else np.ascontiguousarray(values, dtype=np.float32)
            if a is not None and (a.shape != shape or not np.all(np.isfinite(a)) or np.any(a < 0)):
                raise ValueError(f"{name} scales must be {shape} finite values >= 0, got shape {a.shape}")
            arrays.append(a)
        ffi = self._lib.ffi
        ptrs = [ffi.NULL if a is None else ffi.from_buffer("float[]", a) for a in arrays]
        if self._lib.lib.ts_context_set_ffn_scales(self._handle, ptrs[0], ptrs[1], self._err.buf, _ERR_SIZE) != 0:
            raise status_error(Status.FAILED, self._err.message)

    @property
    def group_top_k(self) -> list[int]:
        """Groups the grouped route reads per token, per layer."""
        top_k = self._lib.ffi.new("int32_t[]", self._model.info.n_layer)
        self._lib.lib.ts_context_get_group_top_k(self._handle, top_k)
        return list(top_k)

    @group_top_k.setter
    def group_top_k(self, value: Sequence[int]) -> None:
        n = self._model.info.n_layer
        if len(value) != n:
            raise InvalidArgumentError(f"group_top_k needs {n} values (one per layer), got {len(value)}")
        top_k = self._lib.ffi.new("int32_t[]", [int(k) for k in value])
        status = self._lib.lib.ts_context_set_group_top_k(self._handle, top_k, self._err.buf, _ERR_SIZE)
        if status != Status.OK:
            raise InvalidArgumentError(self._err.message)

    @property
    def model(self) -> NativeModel:
        return self._model

    def layer_stats(self) -> list[LayerStats]:
        raw = self._lib.ffi.new("ts_layer_stats[]", self._model.info.n_layer)
        self._lib.lib.ts_context_get_stats(self._handle, raw)
        return [LayerStats(**{f.name: int(getattr(r, f.name)) for f in fields(LayerStats)}) for r in raw]

    def expert_stats(self) -> list[list[ExpertStats]]:
        """[layer][expert] counters of a mixture-of-experts model ([] for a dense FFN)."""
        info = self._model.info
        if info.n_expert == 0:
            return []
        raw = self._lib.ffi.new("ts_expert_stats[]", info.n_layer * info.n_expert)
        self._lib.lib.ts_context_get_expert_stats(self._handle, raw)
        flat = [ExpertStats(**{f.name: int(getattr(r, f.name)) for f in fields(ExpertStats)}) for r in raw]
        return [flat[il * info.n_expert : (il + 1) * info.n_expert] for il in range(info.n_layer)]

    def reset_stats(self) -> None:
        self._lib.lib.ts_context_reset_stats(self._handle)

    def truncate(self, n_keep: int, seq: int = 0) -> None:
        status = self._lib.lib.ts_context_truncate_seq(self._handle, seq, n_keep, self._err.buf, _ERR_SIZE)
        if status != Status.OK:
            raise status_error(status, self._err.message)

    def keepable(self, n_keep: int, seq: int = 0) -> int:
        """The most of the first n_keep cached tokens truncate() can keep: all of them (up to what the sequence
        holds), or 0 where its sliding-window layers (swa_full off) no longer cache the window of position n_keep, in
        their cells or in their checkpoint of a prompt's last whole n_batch block."""
        n_keep = max(0, min(n_keep, 2**31 - 1))
        return self._seq_count(self._lib.lib.ts_context_n_keepable_seq(self._handle, seq, n_keep), seq)

    def save_seq(self, seq: int = 0) -> bytes:
        """Sequence seq's cached tokens as bytes (their keys, values and positions), for load_seq (a sequence out of
        range: _get refuses it by name)."""
        size = int(self._lib.lib.ts_context_seq_state_size(self._handle, seq))
        out = bytearray(size)
        ffi = self._lib.ffi
        rc = self._lib.lib.ts_context_seq_state_get(
            self._handle, seq, ffi.from_buffer("char[]", out), size, self._err.buf, _ERR_SIZE
        )
        if rc != Status.OK:
            raise status_error(rc, self._err.message)
        return bytes(out)

    def load_seq(self, state: bytes, seq: int = 0, n_tokens: int = -1) -> None:
        """Makes sequence seq hold what save_seq saved (of this context or one with the same cache layout); the state is
        checked first (n_tokens: the tokens it must hold, -1 any) and a refused one changes nothing."""
        ffi = self._lib.ffi
        rc = self._lib.lib.ts_context_seq_state_set(
            self._handle, seq, ffi.from_buffer("char[]", state), len(state), n_tokens, self._err.buf, _ERR_SIZE
        )
        if rc != Status.OK:
            raise status_error(rc, self._err.message)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV caches, every layer and sequence."""
        return int(self._lib.lib.ts_context_kv_size(self._handle))

    def eval(
        self,
        tokens: np.ndarray | list[int],
        *,
        dense_ffn: bool,
        logits_all: bool,
        seq: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Appends tokens to sequence seq; returns [n, n_vocab] logits (all) or [n_vocab] (last), written into
        `out` when given (a C-contiguous float32 array of that shape, reused by callers that decode token by token)."""
        toks = _token_ids(tokens)
        shape = (toks.size, self.n_vocab) if logits_all else (self.n_vocab,)
        logits = _output_buffer(out, shape)
        ffi = self._lib.ffi
        rc = self._lib.lib.ts_context_eval_seq(
            self._handle,
            seq,
            ffi.from_buffer("int32_t[]", toks),
            toks.size,
            int(dense_ffn),
            ffi.from_buffer("float[]", logits),
            int(logits_all),
            self._err.buf,
            _ERR_SIZE,
        )
        if rc != Status.OK:
            raise status_error(rc, self._err.message)
        return logits

    def embed(self, tokens: np.ndarray | list[int], *, all_tokens: bool, seq: int = 0) -> np.ndarray:
        """Appends tokens to sequence seq as a prompt (dense FFN); returns the final norm's output, llama.cpp's
        embeddings: [n, n_embd] (all_tokens) or [n_embd] (the last token's)."""
        toks = _token_ids(tokens)
        n_embd = self._model.info.n_embd
        out = np.empty((toks.size, n_embd) if all_tokens else (n_embd,), dtype=np.float32)
        ffi = self._lib.ffi
        rc = self._lib.lib.ts_context_embed_seq(
            self._handle,
            seq,
            ffi.from_buffer("int32_t[]", toks),
            toks.size,
            ffi.from_buffer("float[]", out),
            int(all_tokens),
            self._err.buf,
            _ERR_SIZE,
        )
        if rc != Status.OK:
            raise status_error(rc, self._err.message)
        return out

    def decode_batch(self, seqs: list[int], tokens: list[int], out: np.ndarray | None = None) -> np.ndarray:
        """One token for each of the distinct sequences seqs, in one forward pass: logits [len(seqs), n_vocab]."""
        if len(seqs) != len(tokens):
            raise ValueError(f"{len(seqs)} sequences but {len(tokens)} tokens")
        ids = np.ascontiguousarray(seqs, dtype=np.int32)
        toks = _token_ids(tokens)
        logits = _output_buffer(out, (toks.size, self.n_vocab))
        ffi = self._lib.ffi
        rc = self._lib.lib.ts_context_decode_batch(
            self._handle,
            ffi.from_buffer("int32_t[]", ids),
            ffi.from_buffer("int32_t[]", toks),
            toks.size,
            ffi.from_buffer("float[]", logits),
            self._err.buf,
            _ERR_SIZE,
        )
        if rc != Status.OK:
            raise status_error(rc, self._err.message)
        return logits

    def eval_trace(self, tokens: np.ndarray | list[int]) -> FfnTrace:
        """Appends tokens with every FFN computed densely, and returns what each layer's FFN saw (FfnTrace)."""
        toks = _token_ids(tokens)
        if self.n_past + toks.size > self.n_ctx:
            raise ContextOverflowError(
                f"context overflow: {self.n_past} cached + {toks.size} new tokens exceed n_ctx = {self.n_ctx}"
            )
        info = self._model.info
        trace = FfnTrace(
            gate=np.empty((info.n_layer, toks.size, info.n_ff), dtype=np.float32),
            up=np.empty((info.n_layer, toks.size, info.n_ff), dtype=np.float32),
        )
        ffi = self._lib.ffi
        err = _ErrorBuffer(self._lib)
        rc = self._lib.lib.ts_context_eval_trace(
            self._handle,
            ffi.from_buffer("int32_t[]", toks),
            toks.size,
            ffi.from_buffer("float[]", trace.gate),
            ffi.from_buffer("float[]", trace.up),
            err.buf,
            _ERR_SIZE,
        )
        if rc != Status.OK:
            raise status_error(rc, err.message)
        return trace

    def eval_ffn(self, layer: int, h: np.ndarray, *, dense_ffn: bool) -> np.ndarray:
        """One layer's FFN block alone: ffn(rms_norm(h)) for h [n_tokens, n_embd]; the KV cache is untouched."""
        return self.eval_ffn_timed(layer, h, dense_ffn=dense_ffn)[0]

    def eval_ffn_timed(self, layer: int, h: np.ndarray, *, dense_ffn: bool) -> tuple[np.ndarray, float]:
        """eval_ffn, and the seconds the graph's computation took (not its building, allocation or this call)."""
        x = np.ascontiguousarray(h, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._model.info.n_embd:
            raise ValueError(f"expected h of shape [n_tokens, {self._model.info.n_embd}], got {x.shape}")
        out = np.empty_like(x)
        ffi = self._lib.ffi
        compute_us = ffi.new("int64_t *")
        err = _ErrorBuffer(self._lib)
        rc = self._lib.lib.ts_context_eval_ffn(
            self._handle,
            layer,
            ffi.from_buffer("float[]", x),
            x.shape[0],
            int(dense_ffn),
            ffi.from_buffer("float[]", out),
            compute_us,
            err.buf,
            _ERR_SIZE,
        )
        if rc != Status.OK:
            raise status_error(rc, err.message)
        return out, compute_us[0] * 1e-6


def _token_ids(tokens: np.ndarray | Sequence[int]) -> np.ndarray:
    """tokens as the C library's int32 ids; InvalidArgumentError for what is not a 1-D sequence of integers in
    int32's range (numpy would truncate 1.5 to 1, take True as 1, or overflow)."""
    values = np.asarray(tokens)
    if values.size and (values.dtype.kind not in "iu" or values.min() < -(2**31) or values.max() >= 2**31):
        bad = next(v for v in values.flat if not (isinstance(v, int | np.integer) and -(2**31) <= v < 2**31))
        raise InvalidArgumentError(f"token ids are integers that fit int32; got {bad!r}")
    ids = np.ascontiguousarray(values, dtype=np.int32)
    if ids.ndim != 1 or ids.size == 0:
        raise InvalidArgumentError(f"expected a non-empty 1-D sequence of token ids, got shape {ids.shape}")
    return ids


def _output_buffer(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {shape}")
    return out


@dataclass(frozen=True)
class TypeInfo:
    name: str
    block_size: int
    type_size: int  # bytes per block

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size


def type_info(ggml_type: int) -> TypeInfo:
    lib = load()
    name, blck, size = lib.ffi.new("char **"), lib.ffi.new("int64_t *"), lib.ffi.new("int64_t *")
    if lib.lib.ts_type_info(int(ggml_type), name, blck, size) != 0:
        raise ValueError(f"unknown ggml type id {ggml_type}")
    return TypeInfo(name=lib.ffi.string(name[0]).decode(), block_size=int(blck[0]), type_size=int(size[0]))


def quantize(values: np.ndarray, ggml_type: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml's quantizer: float32 [..., n_per_row] -> uint8 [..., row_bytes] of ggml_type blocks."""
    lib = load()
    src = np.ascontiguousarray(values, dtype=np.float32)
    if src.ndim == 0:
        raise ValueError("quantize needs at least one dimension")
    n_per_row = src.shape[-1]
    nrows = src.size // n_per_row if n_per_row else 0
    info = type_info(ggml_type)
    if n_per_row % info.block_size != 0:
        raise ValueError(f"row length {n_per_row} is not a multiple of {info.name}'s block size {info.block_size}")
    out = np.empty((*src.shape[:-1], info.row_bytes(n_per_row)), dtype=np.uint8)
    imat = lib.ffi.NULL
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix must have shape ({n_per_row},), got {imatrix.shape}")
        imat = lib.ffi.from_buffer("float[]", imatrix)
    err = _ErrorBuffer(lib)
    written = lib.lib.ts_quantize(
        int(ggml_type),
        lib.ffi.from_buffer("float[]", src),
        lib.ffi.from_buffer(out),
        nrows,
        n_per_row,
        imat,
        err.buf,
        _ERR_SIZE,
    )
    if written < 0:
        raise InvalidArgumentError(err.message)
    if written != out.size:
        raise RuntimeError(f"ggml wrote {written} bytes quantizing to {info.name}, expected {out.size}")
    return out


def gelu(values: np.ndarray, *, lookup: bool = False) -> np.ndarray:
    """ggml's GELU (what the engine computes for GEGLU FFNs), element-wise: float32 of the same shape. lookup: through
    the sparse kernels' table lookup instead of ggml's op (for tests: the two must agree)."""
    lib = load()
    x = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty_like(x)
    err = _ErrorBuffer(lib)
    call = lib.lib.ts_kernel_gelu_lookup if lookup else lib.lib.ts_gelu
    if call(lib.ffi.from_buffer("float[]", x), lib.ffi.from_buffer("float[]", out), x.size, err.buf, _ERR_SIZE) != 0:
        raise EvalError(err.message)
    return out


def dequantize(data: np.ndarray, ggml_type: int, n_per_row: int) -> np.ndarray:
    """ggml's dequantizer: uint8 rows of ggml_type blocks -> float32 [..., n_per_row]."""
    lib = load()
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    info = type_info(ggml_type)
    nrows = raw.size // info.row_bytes(n_per_row)
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    err = _ErrorBuffer(lib)
    rc = lib.lib.ts_dequantize(
        int(ggml_type), lib.ffi.from_buffer(raw), lib.ffi.from_buffer("float[]", out), out.size, err.buf, _ERR_SIZE
    )
    if rc != 0:
        raise ValueError(err.message)
    return out.reshape(*raw.shape[:-1], n_per_row) if raw.ndim > 1 else out.reshape(-1)


class KernelIsa(enum.IntEnum):
    """Instruction sets of the sparse FFN kernels (enum ts_kernel_isa)."""

    GENERIC = 0  # ggml's own dot products and dequantizers
    AVX2 = 1
    AVX512_VNNI = 2
    NEON = 3  # aarch64 Advanced SIMD
    NEON_DOTPROD = 4  # aarch64 with the dot product extension


class KernelKind(enum.IntEnum):
    DOT_ROWS = 0  # gate/up rows dotted with the activation
    AXPY_ROWS = 1  # down: sum of scaled rows
    ROWS_MATMUL = 2  # prompts: every row of a row-read matrix against many tokens


def isa_supported(isa: KernelIsa) -> bool:
    """Whether this CPU runs that instruction set's kernels."""
    return bool(load().lib.ts_kernel_isa_supported(int(isa)))


def isa_name(isa: int) -> str:
    lib = load()
    return lib.ffi.string(lib.lib.ts_kernel_isa_name(int(isa))).decode()


def kernel_isa_used(kind: KernelKind, ggml_type: int, n: int) -> KernelIsa:
    """The instruction set whose kernel sparse decoding runs for rows of n values of ggml_type on this CPU."""
    isa = load().lib.ts_kernel_isa_used(int(kind), int(ggml_type), n)
    if isa < 0:
        raise ValueError(f"no {kind.name.lower()} kernel for ggml type id {ggml_type}")
    return KernelIsa(isa)


def memory_available() -> int | None:
    """Bytes of memory the OS can hand out now (Linux's MemAvailable), as the C library reads it; None where unknown."""
    return int(load().lib.ts_memory_available()) or None


def down_rows_type(ggml_type: int) -> int:
    """The ggml type a loaded model holds a transposed down matrix of ggml_type in on this CPU: the type itself, or
    Q8_0 where no fused down kernel reads it (requantized at load)."""
    held = load().lib.ts_down_rows_type(int(ggml_type))
    if held < 0:
        raise ValueError(f"unknown ggml type id {ggml_type}")
    return int(held)


def _matrix_bytes(w: np.ndarray, ggml_type: int, n_cols: int) -> tuple[np.ndarray, int]:
    """(w as contiguous bytes, its row count), its rows checked to hold n_cols values of ggml_type (the kernels read
    whole rows: a shorter one would be read past its end). A row length that is no whole number of blocks is left
    to the library, which names it."""
    raw = np.ascontiguousarray(w, dtype=np.uint8)
    if raw.ndim != 2:
        raise ValueError(f"w must be a 2-D array of row bytes, not of shape {raw.shape}")
    info = type_info(ggml_type)
    if n_cols % info.block_size == 0 and raw.shape[1] != info.row_bytes(n_cols):
        raise ValueError(
            f"w's rows hold {raw.shape[1]} bytes; {n_cols} {info.name} values take {info.row_bytes(n_cols)}"
        )
    return raw, raw.shape[0]


def _matrix_rows(w: np.ndarray, ggml_type: int, n_cols: int, idx: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(w as contiguous checked bytes, its row count, idx as contiguous int32)."""
    raw, n_rows = _matrix_bytes(w, ggml_type, n_cols)
    rows = np.ascontiguousarray(idx, dtype=np.int32)
    if rows.ndim != 1:
        raise ValueError("idx must be a 1-D array")
    return raw, n_rows, rows


def dot_rows(
    w: np.ndarray,
    ggml_type: int,
    n_cols: int,
    idx: np.ndarray,
    x: np.ndarray,
    isa: KernelIsa = KernelIsa.GENERIC,
    split: bool = False,
) -> np.ndarray:
    """[w[i] . x for i in idx] as the sparse gate/up node computes it (x quantized to ggml's vec_dot type of
    ggml_type), with the kernel of `isa` (GENERIC: ggml's vec_dot); split: the kernel for rows a model holds in the
    split layout (w, in ggml's layout, is converted first)."""
    lib = load()
    raw, n_rows, rows = _matrix_rows(w, ggml_type, n_cols, idx)
    act = np.ascontiguousarray(x, dtype=np.float32)
    if act.shape != (n_cols,):
        raise ValueError(f"x must have shape ({n_cols},), not {act.shape}")
    out = np.empty(rows.size, dtype=np.float32)
    ffi = lib.ffi
    err = _ErrorBuffer(lib)
    rc = lib.lib.ts_kernel_dot_rows(
        int(isa),
        int(ggml_type),
        ffi.from_buffer(raw),
        n_rows,
        n_cols,
        ffi.from_buffer("int32_t[]", rows),
        rows.size,
        ffi.from_buffer("float[]", act),
        int(split),
        ffi.from_buffer("float[]", out),
        err.buf,
        _ERR_SIZE,
    )
    if rc != 0:
        raise ValueError(err.message)
    return out


def axpy_rows(
    w: np.ndarray,
    ggml_type: int,
    n_cols: int,
    idx: np.ndarray,
    coef: np.ndarray,
    out: np.ndarray,
    col0: int = 0,
    isa: KernelIsa | None = None,
) -> None:
    """out += sum_i coef[i] * dequantized(w[idx[i]])[col0 : col0 + len(out)]  (the sparse down kernel), with the
    kernel of `isa` (None: the one sparse decoding uses on this CPU; GENERIC: ggml's dequantizer)."""
    lib = load()
    raw, n_rows, rows = _matrix_rows(w, ggml_type, n_cols, idx)
    scale = np.ascontiguousarray(coef, dtype=np.float32)
    if rows.shape != scale.shape:
        raise ValueError("idx and coef must be 1-D arrays of the same length")
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.ndim != 1:
        raise ValueError("out must be a contiguous 1-D float32 array")
    if isa is None:
        isa = kernel_isa_used(KernelKind.AXPY_ROWS, ggml_type, n_cols)
    ffi = lib.ffi
    err = _ErrorBuffer(lib)
    rc = lib.lib.ts_kernel_axpy_rows(
        int(isa),
        int(ggml_type),
        ffi.from_buffer(raw),
        n_rows,
        n_cols,
        ffi.from_buffer("int32_t[]", rows),
        ffi.from_buffer("float[]", scale),
        rows.size,
        col0,
        out.size,
        ffi.from_buffer("float[]", out),
        err.buf,
        _ERR_SIZE,
    )
    if rc != 0:
        raise ValueError(err.message)


def row_sums_batch(
    w: np.ndarray, ggml_type: int, n_cols: int, act: np.ndarray, col0: int = 0, n: int = 0
) -> np.ndarray:
    """[T, n]: for each row t of act ([T, n_rows] float32), sum_j act[t, j] * dequantized(w[j])[col0 : col0 + n]
    over its non-zero entries, as the sparse down node of a batch computes it (n = 0: every column from col0)."""
    lib = load()
    raw, n_rows = _matrix_bytes(w, ggml_type, n_cols)
    a = np.ascontiguousarray(act, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != n_rows:
        raise ValueError(f"act must have shape (T, {n_rows}), not {a.shape}")
    width = n if n > 0 else n_cols - col0
    out = np.empty((a.shape[0], max(width, 0)), dtype=np.float32)
    ffi = lib.ffi
    err = _ErrorBuffer(lib)
    rc = lib.lib.ts_kernel_row_sums_batch(
        int(ggml_type),
        ffi.from_buffer(raw),
        n_rows,
        n_cols,
        ffi.from_buffer("float[]", a),
        a.shape[0],
        col0,
        width,
        ffi.from_buffer("float[]", out),
        err.buf,
        _ERR_SIZE,
    )
    if rc != 0:
        raise ValueError(err.message)
    return out


def rows_matmul(
    w: np.ndarray, ggml_type: int, n_cols: int, x: np.ndarray, isa: KernelIsa | None = None, split: bool = False
) -> np.ndarray:
    """[T, n_rows]: every row of w (uint8 rows of ggml_type blocks) dotted with each of x's T rows (float32, each
    quantized to ggml's vec_dot type of ggml_type), as the prompt kernel of sparse modes computes them, with the
    kernel of `isa` (None: the one prompts use on this CPU; split: the kernel for rows held in the split layout, w
    converted first); ValueError where there is no such kernel."""
    if isa is None:
        isa = kernel_isa_used(KernelKind.ROWS_MATMUL, ggml_type, n_cols)
    lib = load()
    raw, n_rows = _matrix_bytes(w, ggml_type, n_cols)
    act = np.ascontiguousarray(x, dtype=np.float32)
    if act.ndim != 2 or act.shape[1] != n_cols:
        raise ValueError(f"x must have shape (T, {n_cols}), not {act.shape}")
    out = np.empty((act.shape[0], n_rows), dtype=np.float32)
    ffi = lib.ffi
    err = _ErrorBuffer(lib)
    rc = lib.lib.ts_kernel_rows_matmul(
        int(isa),
        int(ggml_type),
        ffi.from_buffer(raw),
        n_rows,
        n_cols,
        ffi.from_buffer("float[]", act),
        act.shape[0],
        int(split),
        ffi.from_buffer("float[]", out),
        err.buf,
        _ERR_SIZE,
    )
    if rc != 0:
        raise ValueError(err.message)
    return out


def pick_list(x: np.ndarray, t: float, above: bool, start: int, stop: int, cap: int) -> tuple[np.ndarray, int]:
    """The next indices j in [start, stop) with x[j] >= t (above: x[j] > t), in order, at most cap of them, as the
    sparse gate/up node lists a decoded token's selected neurons; and where the next list starts."""
    values = np.ascontiguousarray(x, dtype=np.float32)
    if values.ndim != 1 or not 0 <= start <= stop <= values.size or cap < 1:
        raise ValueError("x must be 1-D, 0 <= start <= stop <= len(x) and cap >= 1")
    lib = load()
    ffi = lib.ffi
    out = np.empty(cap, dtype=np.int32)
    at = ffi.new("int64_t *", start)
    n = lib.lib.ts_kernel_pick_list(
        int(above), float(t), ffi.from_buffer("float[]", values), at, stop, ffi.from_buffer("int32_t[]", out), cap
    )
    return out[:n].copy(), int(at[0])


def nonzero_list(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indices of a's non-zero values and the values, in order, as the sparse down node lists a token's rows."""
    values = np.ascontiguousarray(a, dtype=np.float32)
    if values.ndim != 1:
        raise ValueError("a must be 1-D")
    lib = load()
    ffi = lib.ffi
    idx = np.empty(max(values.size, 1), dtype=np.int32)
    val = np.empty(max(values.size, 1), dtype=np.float32)
    n = lib.lib.ts_kernel_nonzero_list(
        ffi.from_buffer("float[]", values),
        values.size,
        ffi.from_buffer("int32_t[]", idx),
        ffi.from_buffer("float[]", val),
    )
    return idx[:n].copy(), val[:n].copy()

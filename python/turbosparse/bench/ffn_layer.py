"""Kernel benchmark: one Mistral-7B FFN layer, predictor + sparse FFN against ggml's dense FFN (mul_mat).

Both sides run the same FFN block (RMSNorm + FFN) through the engine's graph on ggml's threads: the dense
twin with ggml's mul_mat for gate, up and down; the sparse model with its predictor (the decoding kernels where
the CPU has them, else ggml's mul_mat), the sparse gate/up node and the sparse down node. Calls alternate, and
medians are reported with the bytes each side reads per token, so the effective bandwidths compare directly with
each other and with a plain copy.
Calls cycle over four identical layers stored apart, so the weights come from memory, not from a large L3.
The times are those of the graphs' computations (every node and ggml's thread synchronisation); each call's
fixed cost around them (this Python call, building and allocating the one-layer graph), which a decoded token
pays once for all its layers, is reported apart: it would weigh ~4x more on the sparse side's time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from turbosparse.bench.runner import sparse_ffn_bytes, tensor_bytes
from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair
from turbosparse.binding import KernelKind, NativeContext, NativeModel, SparseMode, down_rows_type, kernel_isa_used

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class FfnLayerResult:
    quant: str
    dense_ms: float  # median computation of the dense FFN graph
    sparse_ms: float  # median computation of the sparse FFN graph
    dense_call_ms: float  # median whole call (graph building and allocation, Python) of each side
    sparse_call_ms: float
    dense_bytes: int  # gate + up + down of one layer, read by the dense FFN per token
    sparse_bytes: float  # predictor + the computed rows of gate, up and down_t per token
    active: float  # measured share of neurons computed
    gate_up_kernel: str  # instruction set of the gate/up kernel that ran
    down_kernel: str  # instruction set of the down kernel that ran
    act_ms: float  # mean wall-clock time of the sparse gate/up node (node timing)
    down_ms: float  # ... of the sparse down node
    act_bytes: float  # gate and up rows it read per call
    down_bytes: float  # down rows it read per call

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    @property
    def dense_gb_s(self) -> float:
        return self.dense_bytes / self.dense_ms / 1e6

    @property
    def sparse_gb_s(self) -> float:
        return self.sparse_bytes / self.sparse_ms / 1e6

    @property
    def act_gb_s(self) -> float:
        return self.act_bytes / self.act_ms / 1e6 if self.act_ms > 0 else 0.0

    @property
    def down_gb_s(self) -> float:
        return self.down_bytes / self.down_ms / 1e6 if self.down_ms > 0 else 0.0


def copy_bandwidth_gb_s(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Single-threaded memory copy rate (bytes read + written), the machine's reference figure."""
    src = np.ones(n_bytes, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * n_bytes / min(times) / 1e9


def _context(path: Path, sparse: bool, n_threads: int) -> NativeContext:
    mode = SparseMode.PREDICTOR if sparse else SparseMode.OFF
    return NativeContext(
        NativeModel.for_mode(str(path), mode),
        n_ctx=256,
        n_threads=n_threads,
        n_batch=8,
        sparse_mode=mode,
        threshold=None,
    )


def bench_ffn_layer(
    quant: Q, *, active: float, rank: int, pred_quant: Q, n_threads: int, rounds: int, cache_dir: Path | None = None
) -> FfnLayerResult:
    spec = SyntheticSpec(SHAPES["mistral-7b-4layers"], quant=quant, active=active, rank=rank, pred_quant=pred_quant)
    sparse_path, dense_path = synthetic_pair(spec, cache_dir)
    dense, sparse = _context(dense_path, False, n_threads), _context(sparse_path, True, n_threads)
    n_embd = dense.model.info.n_embd
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, n_embd), dtype=np.float32) for _ in range(rounds)]
    n_layer = dense.model.info.n_layer
    for layer in range(n_layer):  # warm-up: page in the weights
        for ctx, is_dense in ((dense, True), (sparse, False)):
            ctx.eval_ffn(layer, inputs[0], dense_ffn=is_dense)
    sparse.reset_stats()
    sparse.set_node_timing(True)  # where the sparse layer's time goes: its gate/up and down nodes, the rest
    t_dense, t_sparse, call_dense, call_sparse = [], [], [], []
    for i in range(rounds * n_layer):
        for ctx, is_dense, times, calls in ((dense, True, t_dense, call_dense), (sparse, False, t_sparse, call_sparse)):
            t0 = time.perf_counter()
            times.append(ctx.eval_ffn_timed(i % n_layer, inputs[i // n_layer], dense_ffn=is_dense)[1])
            calls.append(time.perf_counter() - t0)
    stats = sparse.layer_stats()
    n_ff = sparse.model.info.n_ff
    tb_dense, tb_sparse = tensor_bytes(dense_path), tensor_bytes(sparse_path)
    n_evals = sum(st.n_evals for st in stats)
    # identical layers, each called equally often: per call, the mean over layers
    act_bytes = statistics.fmean(
        st.n_computed / (st.n_tokens * n_ff) * (tb_sparse.gate[i] + tb_sparse.up[i]) for i, st in enumerate(stats)
    )
    down_bytes = statistics.fmean(
        tb_sparse.down[i] if tb_sparse.down_whole[i] else st.n_nonzero / (st.n_tokens * n_ff) * tb_sparse.down[i]
        for i, st in enumerate(stats)
    )
    return FfnLayerResult(
        quant=quant.name.lower(),
        dense_ms=1e3 * statistics.median(t_dense),
        sparse_ms=1e3 * statistics.median(t_sparse),
        dense_call_ms=1e3 * statistics.median(call_dense),
        sparse_call_ms=1e3 * statistics.median(call_sparse),
        dense_bytes=tb_dense.gate[0] + tb_dense.up[0] + tb_dense.down[0],
        # identical layers, each called equally often: bytes per call are the mean over layers
        sparse_bytes=statistics.fmean(
            sparse_ffn_bytes(tb_sparse, i, s, n_ff, exact=False) for i, s in enumerate(stats)
        ),
        active=sum(s.n_computed for s in stats) / (sum(s.n_tokens for s in stats) * n_ff),
        gate_up_kernel=kernel_isa_used(KernelKind.DOT_ROWS, quant, n_embd).name.lower(),
        down_kernel=_down_kernel(quant, n_embd),
        act_ms=sum(st.act_us for st in stats) / n_evals / 1e3,
        down_ms=sum(st.down_us for st in stats) / n_evals / 1e3,
        act_bytes=act_bytes,
        down_bytes=down_bytes,
    )


def _down_kernel(quant: Q, n_embd: int) -> str:
    """The down kernel's instruction set, and the type it reads where the model holds the matrix in another."""
    held = down_rows_type(quant)
    isa = kernel_isa_used(KernelKind.AXPY_ROWS, held, n_embd).name.lower()
    return isa if held == quant else f"{isa} ({Q(held).name.lower()} copy)"


def format_table(results: list[FfnLayerResult], copy_gb_s: float, spec_line: str, machine: dict[str, str]) -> str:
    around = ", ".join(
        f"{r.quant} dense {r.dense_call_ms - r.dense_ms:.3f} ms, sparse {r.sparse_call_ms - r.sparse_ms:.3f} ms"
        for r in results
    )
    lines = [
        spec_line,
        f"# {machine['cpu']} [{machine['cpu_flags']}] kernels {machine['kernel_isas']} | load {machine['load']} "
        f"| THP {machine['huge_pages']} | commit {machine['commit']}",
        f"machine copy bandwidth (1 thread, read + write): {copy_gb_s:.1f} GB/s",
        f"per call around the graph (not counted): {around}",
        f"{'quant':6} {'dense ms':>9} {'dense GB/s':>10} {'sparse ms':>9} {'sparse GB/s':>11} {'GB/s ratio':>10} "
        f"{'active':>7} {'speedup':>8} {'bytes ceiling':>13} {'kernels (gate/up, down)':>24}",
    ]
    for r in results:
        lines.append(
            f"{r.quant:6} {r.dense_ms:9.2f} {r.dense_gb_s:10.1f} {r.sparse_ms:9.2f} {r.sparse_gb_s:11.1f} "
            f"{r.sparse_gb_s / r.dense_gb_s:10.2f} {r.active:7.3f} {r.speedup:7.2f}x "
            f"{r.dense_bytes / r.sparse_bytes:12.2f}x {r.gate_up_kernel + ', ' + r.down_kernel:>24}"
        )
    lines.append("sparse nodes, mean per call (the rest of the median: predictor, norm, quantization, partial sums):")
    for r in results:
        # a median less two means: on a noisy host it can come out at or below zero, then it says nothing
        rest = r.sparse_ms - r.act_ms - r.down_ms
        rest_text = (
            f"the rest {rest:.3f} ms (predictor bytes over it: "
            f"{(r.sparse_bytes - r.act_bytes - r.down_bytes) / rest / 1e6:.1f} GB/s)"
            if rest > 0
            else "the rest not measurable (the median is below the nodes' means: a noisy run)"
        )
        lines.append(
            f"  {r.quant:6} gate/up {r.act_ms:.3f} ms ({r.act_gb_s:.1f} GB/s), down {r.down_ms:.3f} ms "
            f"({r.down_gb_s:.1f} GB/s), {rest_text}"
        )
    return "\n".join(lines)

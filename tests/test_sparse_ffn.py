"""Sparse decoding in the engine (predictor and exact modes) against the float64 numpy reference."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.bench.ffn_layer import FfnLayerResult, format_table
from turbosparse.bench.runner import tensor_bytes
from turbosparse.binding import NativeContext, NativeModel, SparseMode, down_rows_type

from tinymodel import (
    TinyConfig,
    ffn_activation,
    predictor_logits,
    random_weights,
    reference_forward,
    reference_logits,
    write_gguf,
)

Q = gguf.GGMLQuantizationType
F32_TOLERANCE = 1e-5  # x max |logit|
QUANT_TOLERANCE = 0.15  # x std(logits), as for the dense engine: ggml quantizes activations in its dot products
K_QUANTS = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
SPARSE_TYPES = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def make(
    tmp_path: Path,
    cfg: TinyConfig,
    *,
    rank: int = 0,
    qtype: Q = Q.F32,
    down_layout: str = "transposed",
    predictor_input: str = "residual",
    seed: int = 1,
) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / f"m-{cfg.act}-{rank}-{qtype.name}-{down_layout}-{predictor_input}.gguf"
    extra: dict[str, object] = {"turbosparse.predictor_input": predictor_input}
    # predictor rows are rank long: K-quants (256-blocks) get a Q8_0 predictor, as the converter does
    pred_qtype = Q.Q8_0 if qtype in K_QUANTS and rank % 256 else None
    weights = random_weights(cfg, seed=seed, predictor_rank=rank)
    stored = write_gguf(path, cfg, weights, qtype, extra_kv=extra, down_layout=down_layout, predictor_qtype=pred_qtype)
    return path, stored


def context(path: Path, mode: SparseMode, *, threshold: float | None = None, n_threads: int = 2) -> NativeContext:
    return NativeContext(
        NativeModel(path),
        n_ctx=256,
        n_threads=n_threads,
        n_batch=512,
        sparse_mode=mode,
        threshold=threshold,
        kv_f32=True,
    )


def tokens(cfg: TinyConfig, n: int = 32, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, cfg.n_vocab, n)]


def assert_close(out: np.ndarray, ref: np.ndarray, qtype: Q = Q.F32) -> None:
    if qtype == Q.F32:
        assert np.abs(out - ref).max() <= F32_TOLERANCE * np.abs(ref).max()
    else:
        error = np.abs(out - ref).max() / ref.std()
        assert error <= QUANT_TOLERANCE, f"{qtype.name}: normalized error {error:.4f}"


@pytest.mark.parametrize("act", ["reglu", "drelu"])
@pytest.mark.parametrize("down_layout", ["transposed", "both", "standard"])
def test_exact_mode_equals_dense(tmp_path: Path, act: str, down_layout: str) -> None:
    cfg = TinyConfig(act=act)
    path, stored = make(tmp_path, cfg, down_layout=down_layout)
    toks = tokens(cfg)
    ref = reference_logits(cfg, stored, toks, use_down_t=down_layout != "standard")
    ctx = context(path, SparseMode.EXACT)
    assert_close(ctx.eval(toks, dense_ffn=False, logits_all=True), ref)
    # prefill (dense FFN) and one-token decoding agree too
    ctx.truncate(0)
    assert_close(ctx.eval(toks, dense_ffn=True, logits_all=True), ref)
    ctx.truncate(0)
    steps = np.stack([ctx.eval([t], dense_ffn=False, logits_all=False) for t in toks])
    assert_close(steps, ref)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_0], ids=lambda q: q.name)
def test_exact_mode_with_the_gate_placed_as_a_dense_matrix(tmp_path: Path, qtype: Q) -> None:
    """dense_gate (how Model loads a file for exact mode): the gate of a file with predictors repacked like any dense
    matrix, exact mode unchanged, predictor mode refused."""
    from turbosparse import InvalidArgumentError

    cfg = TinyConfig(act="drelu", n_embd=256, n_ff=512)
    path, stored = make(tmp_path, cfg, rank=32, qtype=qtype)
    toks = tokens(cfg, 16)
    model = NativeModel(path, dense_gate=True)
    assert model.sparse_mode(SparseMode.AUTO) == SparseMode.EXACT
    with pytest.raises(InvalidArgumentError, match="loaded with dense_gate = 1"):
        model.sparse_mode(SparseMode.PREDICTOR)
    ctx = NativeContext(model, n_ctx=256, n_threads=2, n_batch=512, sparse_mode=SparseMode.EXACT, threshold=None,
                        kv_f32=True)  # fmt: skip
    out = ctx.eval(toks, dense_ffn=False, logits_all=True)
    assert_close(out, reference_logits(cfg, stored, toks, use_down_t=True), qtype)
    rows = context(path, SparseMode.EXACT).eval(toks, dense_ffn=False, logits_all=True)
    assert_close(out, rows, qtype)


@pytest.mark.parametrize("act", ["reglu", "drelu"])
@pytest.mark.parametrize("predictor_input", ["residual", "residual_rmsnorm"])
@pytest.mark.parametrize("threshold", [0.0, 0.4])
def test_predictor_mode_matches_masked_reference(
    tmp_path: Path, act: str, predictor_input: str, threshold: float
) -> None:
    cfg = TinyConfig(act=act)
    path, stored = make(tmp_path, cfg, rank=16, predictor_input=predictor_input)
    toks = tokens(cfg)
    ref = reference_logits(
        cfg, stored, toks, predictor_threshold=threshold, predictor_input=predictor_input, use_down_t=True
    )
    dense = reference_logits(cfg, stored, toks, use_down_t=True)
    assert np.abs(ref - dense).max() > 0.01  # the predictor really drops neurons that matter
    ctx = context(path, SparseMode.PREDICTOR, threshold=threshold)
    assert_close(ctx.eval(toks, dense_ffn=False, logits_all=True), ref)


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batch", "token-by-token"])
def test_stats_count_what_the_reference_counts(tmp_path: Path, one_at_a_time: bool) -> None:
    cfg = TinyConfig(act="drelu")
    path, stored = make(tmp_path, cfg, rank=16)
    toks = tokens(cfg, 20)
    _, traces = reference_forward(cfg, stored, toks, predictor_threshold=0.2, use_down_t=True)
    ctx = context(path, SparseMode.PREDICTOR, threshold=0.2)
    ctx.set_measure_recall(True)
    if one_at_a_time:  # decoding's path: one token per evaluation
        for t in toks:
            ctx.eval([t], dense_ffn=False, logits_all=False)
    else:
        ctx.eval(toks, dense_ffn=False, logits_all=True)  # all rows: the last layer runs the FFN for every token
    stats = ctx.layer_stats()
    assert [s.n_tokens for s in stats] == [len(toks)] * cfg.n_layer
    assert [s.n_computed for s in stats] == [int(t.kept.sum()) for t in traces]
    assert [s.n_nonzero for s in stats] == [int(((t.activation != 0) & t.kept).sum()) for t in traces]
    assert [s.n_true_active for s in stats] == [int((t.activation != 0).sum()) for t in traces]
    assert [s.n_true_found for s in stats] == [int(((t.activation != 0) & t.kept).sum()) for t in traces]
    # prefill with the dense FFN is not counted; reset clears
    ctx.eval(toks[:5], dense_ffn=True, logits_all=False)
    assert ctx.layer_stats() == stats
    ctx.reset_stats()
    assert all(s.n_tokens == 0 for s in ctx.layer_stats())


def test_threshold_extremes(tmp_path: Path) -> None:
    cfg = TinyConfig(act="drelu")
    path, stored = make(tmp_path, cfg, rank=8)
    toks = tokens(cfg, 16)
    everything = context(path, SparseMode.PREDICTOR, threshold=-1e30)
    assert_close(
        everything.eval(toks, dense_ffn=False, logits_all=True), reference_logits(cfg, stored, toks, use_down_t=True)
    )
    nothing = context(path, SparseMode.PREDICTOR, threshold=1e30)
    ref = reference_logits(cfg, stored, toks, predictor_threshold=1e30, use_down_t=True)
    assert_close(nothing.eval(toks, dense_ffn=False, logits_all=True), ref)
    assert all(s.n_computed == 0 and s.n_nonzero == 0 for s in nothing.layer_stats())
    everything.threshold = 1e30  # changing the threshold takes effect at once
    everything.truncate(0)
    assert_close(everything.eval(toks, dense_ffn=False, logits_all=True), ref)


def test_layers_without_a_predictor_run_exact(tmp_path: Path) -> None:
    cfg = TinyConfig(act="reglu", n_layer=3)
    weights = random_weights(cfg, seed=5, predictor_rank=8)
    skip = ("blk.1.ffn_pred_fc1.weight", "blk.1.ffn_pred_fc2.weight")
    stored = write_gguf(tmp_path / "m.gguf", cfg, weights, down_layout="transposed", skip=skip)
    assert NativeModel(tmp_path / "m.gguf").predictor_ranks == [8, 0, 8]
    assert NativeModel(tmp_path / "m.gguf").sparse_mode(SparseMode.AUTO) == SparseMode.PREDICTOR
    toks = tokens(cfg, 12)
    ctx = context(tmp_path / "m.gguf", SparseMode.PREDICTOR, threshold=0.0)
    out = ctx.eval(toks, dense_ffn=False, logits_all=True)
    # the reference masks layers 0 and 2 (they have predictors) and keeps layer 1 whole
    assert_close(out, reference_logits(cfg, stored, toks, predictor_threshold=0.0, use_down_t=True))
    _, traces = reference_forward(cfg, stored, toks, predictor_threshold=0.0, use_down_t=True)
    # exact selection computes the neurons whose gate is positive
    assert ctx.layer_stats()[1].n_computed == int((traces[1].activation != 0).sum())


@pytest.mark.parametrize("qtype", SPARSE_TYPES, ids=lambda q: q.name)
def test_every_quant_type_in_the_sparse_path(tmp_path: Path, qtype: Q) -> None:
    cfg = TinyConfig(act="drelu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    toks = tokens(cfg, 16)
    # exact selection: dense gate, sparse up and down
    path, stored = make(tmp_path, cfg, qtype=qtype)
    exact = context(path, SparseMode.EXACT).eval(toks, dense_ffn=False, logits_all=True)
    assert_close(exact, reference_logits(cfg, stored, toks, use_down_t=True), qtype)
    # predictor selection of every neuron: gate rows through the sparse op's own dot products
    path, stored = make(tmp_path, cfg, rank=32, qtype=qtype)
    everything = context(path, SparseMode.PREDICTOR, threshold=-1e30).eval(toks, dense_ffn=False, logits_all=True)
    assert_close(everything, reference_logits(cfg, stored, toks, use_down_t=True), qtype)
    # a real threshold: quantization noise moves a few logits across it, so compare what was selected
    ctx = context(path, SparseMode.PREDICTOR, threshold=0.0)
    ctx.eval(toks, dense_ffn=False, logits_all=True)
    _, traces = reference_forward(cfg, stored, toks, predictor_threshold=0.0, use_down_t=True)
    for stats, trace in zip(ctx.layer_stats(), traces, strict=True):
        assert abs(stats.n_computed - int(trace.kept.sum())) <= 0.02 * trace.kept.size


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q5_0, Q.Q6_K], ids=lambda q: q.name)
def test_bench_counts_transposed_downs_as_the_model_holds_them(tmp_path: Path, qtype: Q) -> None:
    """A transposed down of a type without a fused kernel is read as its Q8_0 copy: bench's bytes say so."""
    cfg = TinyConfig(act="drelu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    path, _ = make(tmp_path, cfg, qtype=qtype)
    blck, size = gguf.GGML_QUANT_SIZES[Q(down_rows_type(qtype))]
    assert tensor_bytes(path).down == [cfg.n_ff * cfg.n_embd // blck * size] * cfg.n_layer


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_deterministic_for_a_thread_count(tmp_path: Path, n_threads: int) -> None:
    cfg = TinyConfig(act="drelu", n_embd=256, n_ff=512)
    path, _ = make(tmp_path, cfg, rank=32, qtype=Q.Q4_0)
    toks = tokens(cfg, 24)
    runs = [
        context(path, SparseMode.PREDICTOR, n_threads=n_threads).eval(toks, dense_ffn=False, logits_all=True)
        for _ in range(3)
    ]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    one = context(path, SparseMode.PREDICTOR, n_threads=1).eval(toks, dense_ffn=False, logits_all=True)
    np.testing.assert_allclose(runs[0], one, rtol=0, atol=1e-3)


def test_sparse_modes_refuse_what_the_file_cannot_do(tmp_path: Path) -> None:
    from turbosparse import InvalidArgumentError

    swiglu, _ = make(tmp_path, TinyConfig(act="swiglu"), down_layout="standard")
    with pytest.raises(InvalidArgumentError, match="predictor mode needs a ReLU-gated FFN"):
        context(swiglu, SparseMode.PREDICTOR)
    no_pred, _ = make(tmp_path, TinyConfig(act="drelu"))
    with pytest.raises(InvalidArgumentError, match="predictor mode needs activation predictors"):
        context(no_pred, SparseMode.PREDICTOR)
    swiglu_t, _ = make(tmp_path, TinyConfig(act="swiglu"), down_layout="transposed")
    with pytest.raises(InvalidArgumentError, match="SwiGLU FFN needs the standard down matrices"):
        context(swiglu_t, SparseMode.OFF)


def test_the_library_decides_the_sparse_mode(tmp_path: Path) -> None:
    """ts_model_sparse_mode is the one rule: auto picks predictor, exact or off by what the file has; a mode the
    file cannot run is refused naming what it needs; names map to modes through one table."""
    from turbosparse import InvalidArgumentError
    from turbosparse.binding import SPARSE_MODES, sparse_mode_named
    from turbosparse.model import Model

    with_pred, _ = make(tmp_path, TinyConfig(act="drelu"), rank=8)
    no_pred, _ = make(tmp_path, TinyConfig(act="drelu"))
    swiglu, _ = make(tmp_path, TinyConfig(act="swiglu"), down_layout="standard")
    for path, auto in ((with_pred, SparseMode.PREDICTOR), (no_pred, SparseMode.EXACT), (swiglu, SparseMode.OFF)):
        assert NativeModel(path).sparse_mode(SparseMode.AUTO) == auto
        assert context(path, SparseMode.AUTO).sparse_mode == auto  # a context resolves auto the same way
    with pytest.raises(InvalidArgumentError, match=r"blk\.N\.ffn_pred_fc1\.weight\); none of the file's 2 layers"):
        NativeModel(no_pred).sparse_mode(SparseMode.PREDICTOR)
    # Model refuses a mode before it reads the vocabulary (these tiny files have none)
    with pytest.raises(InvalidArgumentError, match=r"turbosparse\.group_size"):
        Model(with_pred, sparse="groups", n_ctx=16, n_threads=1)
    assert NativeModel(with_pred).sparse_mode(SparseMode.EXACT) == SparseMode.EXACT
    assert sorted(SPARSE_MODES) == ["auto", "exact", "groups", "off", "predictor"]
    assert sparse_mode_named("off") == SparseMode.OFF
    with pytest.raises(
        InvalidArgumentError, match="sparse must be one of 'off', 'predictor', 'exact', 'groups', 'auto'"
    ):
        Model(with_pred, sparse="fast", n_ctx=16, n_threads=1)  # type: ignore[arg-type]


def test_a_metadata_only_load_answers_what_the_file_is_but_runs_nothing(tmp_path: Path) -> None:
    """metadata_only (Model's probe before its real load): the same info and sparse-mode decisions as a full load,
    no weights placed, and a context refused with the reason."""
    from turbosparse import InvalidArgumentError

    with_pred, _ = make(tmp_path, TinyConfig(act="drelu"), rank=32, qtype=Q.Q4_0)
    no_pred, _ = make(tmp_path, TinyConfig(act="drelu"), qtype=Q.Q8_0)
    for path in (with_pred, no_pred):
        probe, full = NativeModel(path, metadata_only=True), NativeModel(path)
        assert probe.info == full.info and probe.predictor_ranks == full.predictor_ranks
        for mode in SparseMode:
            try:
                want = full.sparse_mode(mode)
            except InvalidArgumentError:
                with pytest.raises(InvalidArgumentError):
                    probe.sparse_mode(mode)
                continue
            assert probe.sparse_mode(mode) == want
        with pytest.raises(InvalidArgumentError, match="loaded with metadata_only = 1"):
            NativeContext(probe, n_ctx=16, n_threads=1, n_batch=16, sparse_mode=SparseMode.OFF, threshold=None)


@pytest.mark.parametrize("mode", [SparseMode.OFF, SparseMode.EXACT, SparseMode.PREDICTOR])
def test_one_ffn_block_alone(tmp_path: Path, mode: SparseMode) -> None:
    """eval_ffn (the kernel benchmark's entry) computes ffn(rms_norm(h)) of one layer as the reference does; the
    timed call returns the same values and a computation time within the call's own."""
    cfg = TinyConfig(act="drelu")
    path, stored = make(tmp_path, cfg, rank=16, predictor_input="residual_rmsnorm")
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    h = np.random.default_rng(3).standard_normal((5, cfg.n_embd)).astype(np.float32)
    x = h / np.sqrt((h.astype(np.float64) ** 2).mean(-1, keepdims=True) + cfg.rms_eps)
    z = x * w["blk.1.ffn_norm.weight"]
    a = ffn_activation(cfg.act, z @ w["blk.1.ffn_gate.weight"].T, z @ w["blk.1.ffn_up.weight"].T)
    if mode == SparseMode.PREDICTOR:
        a = a * (predictor_logits(w, 1, h.astype(np.float64), "residual_rmsnorm", cfg.rms_eps) >= 0.0)
    ref = a @ w["blk.1.ffn_down_t.weight"]
    ctx = context(path, mode, threshold=0.0)
    out = ctx.eval_ffn(1, h, dense_ffn=mode == SparseMode.OFF)
    assert np.abs(out - ref).max() <= F32_TOLERANCE * np.abs(ref).max() * 10
    t0 = time.perf_counter()
    timed, seconds = ctx.eval_ffn_timed(1, h, dense_ffn=mode == SparseMode.OFF)
    assert np.array_equal(timed, out) and 0.0 <= seconds <= time.perf_counter() - t0
    assert ctx.n_past == 0
    with pytest.raises(Exception, match="layer 9 out of"):
        ctx.eval_ffn(9, h, dense_ffn=False)


def test_mistral_7b_ffn_layer(tmp_path: Path) -> None:
    """One 4096 x 14336 dReLU FFN in Q4_0 (the synthetic benchmark layer): the sparse path equals the float64
    reference over the same stored weights, and is bit-identical across runs for each thread count 1-4."""
    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    sparse_path, _ = synthetic_pair(SyntheticSpec(SHAPES["mistral-7b-layer"], Q.Q4_0, 0.10, 256, Q.Q8_0), tmp_path)
    reader = gguf.GGUFReader(str(sparse_path))
    mats = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        for t in reader.tensors
        if t.name.split(".")[-2] in ("ffn_gate", "ffn_up", "ffn_down_t")
    }
    h = np.random.default_rng(5).standard_normal((2, 4096)).astype(np.float32)
    z = h / np.sqrt((h.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)  # norm weights are 1
    a = ffn_activation("drelu", z @ mats["blk.0.ffn_gate.weight"].T, z @ mats["blk.0.ffn_up.weight"].T)
    ref = a @ mats["blk.0.ffn_down_t.weight"]
    for n_threads in (1, 2, 3, 4):
        ctx = context(sparse_path, SparseMode.EXACT, n_threads=n_threads)
        runs = [ctx.eval_ffn(0, h, dense_ffn=False) for _ in range(2)]
        assert np.array_equal(runs[0], runs[1])
        # ggml's dot products use Q8_0 activations: a few tenths of a percent of the output's scale
        assert np.abs(runs[0] - ref).max() <= 0.01 * np.abs(ref).max(), n_threads
    # predictor mode selecting every neuron computes gate and up with the Q4_0 kernel this CPU runs (AVX-512 VNNI,
    # AVX2, else ggml's vec_dot): the same integer dot products as exact mode, summed in another order. The down
    # kernel rounds each row's coefficient to 8 bits (per 8 or 16 rows and 32 columns): that float-order difference can
    # move a rounding by one step, S * |code| <= max|c| / 127 * 8, a few 1e-4 of the output's scale
    everything = context(sparse_path, SparseMode.PREDICTOR, threshold=-1e30).eval_ffn(0, h, dense_ffn=False)
    assert np.abs(everything - runs[0]).max() <= 2e-3 * np.abs(runs[0]).max()
    # node timing (bench --ffn-layer's breakdown): decoded tokens' gate/up and down nodes, each within the graph's
    # computation time (both read ggml's microsecond clock: 1 us of rounding per evaluation); untimed: zeros
    timed, untimed = (context(sparse_path, SparseMode.PREDICTOR, threshold=0.0) for _ in range(2))
    timed.set_node_timing(True)
    compute_us = 0.0
    for i in range(8):
        untimed.eval_ffn(0, h[i % 2 : i % 2 + 1], dense_ffn=False)
        compute_us += 1e6 * timed.eval_ffn_timed(0, h[i % 2 : i % 2 + 1], dense_ffn=False)[1]
    (stats,), (plain,) = timed.layer_stats(), untimed.layer_stats()
    assert stats.n_evals == plain.n_evals == 8 and plain.act_us == plain.down_us == 0
    assert stats.act_us > 0 and stats.down_us > 0
    assert stats.act_us + stats.down_us <= compute_us + 8 * 2
    timed.reset_stats()
    assert timed.layer_stats()[0].act_us == timed.layer_stats()[0].down_us == 0


def test_ffn_layer_table_breaks_the_sparse_time_down() -> None:
    """bench --ffn-layer's lines under the table: each node's ms and GB/s, the rest with the predictor's GB/s over it,
    and no rest where the median fell below the nodes' means (noise)."""
    machine = {k: "x" for k in ("cpu", "cpu_flags", "kernel_isas", "load", "huge_pages", "commit")}
    common = dict(dense_ms=2.0, dense_call_ms=2.1, dense_bytes=80_000_000, active=0.1, gate_up_kernel="avx2",
                  down_kernel="avx2", act_ms=0.2, down_ms=0.1, act_bytes=6_000_000, down_bytes=3_000_000)  # fmt: skip
    fine = FfnLayerResult(quant="q4_0", sparse_ms=0.5, sparse_call_ms=0.6, sparse_bytes=15_000_000, **common)
    noisy = FfnLayerResult(quant="q4_k", sparse_ms=0.29, sparse_call_ms=0.4, sparse_bytes=15_000_000, **common)
    lines = format_table([fine, noisy], 20.0, "spec", machine).splitlines()
    # 6 MB in 0.2 ms = 30 GB/s, 3 MB in 0.1 ms = 30 GB/s, the other 6 MB in the remaining 0.2 ms = 30 GB/s
    assert lines[-2] == (
        "  q4_0   gate/up 0.200 ms (30.0 GB/s), down 0.100 ms (30.0 GB/s), the rest 0.200 ms "
        "(predictor bytes over it: 30.0 GB/s)"
    )
    assert lines[-1].endswith("the rest not measurable (the median is below the nodes' means: a noisy run)")


PREDICTORS = {"q4_0": (Q.Q4_0, True), "q4_0-in-the-mapping": (Q.Q4_0, False), "q8_0": (Q.Q8_0, True),
              "q4_1": (Q.Q4_1, True)}  # fmt: skip


@pytest.mark.parametrize("qtype,repack", PREDICTORS.values(), ids=PREDICTORS.keys())
def test_the_predictor_decodes_one_token_as_it_reads_several(tmp_path: Path, qtype: Q, repack: bool) -> None:
    """A model placed for predictor mode reads the predictor's matrices with the decoding kernels where the CPU has
    them and their rows are long enough (rows_dot.h; Q4_0 in the split layout where the model copies its rows, else
    in the mapping as ggml lays it out), for one token and for several alike. The predictor is built so that its
    logits lie far from the threshold for any rounding: fc1 passes h, whose values are 0 or 1, fc2's entries are +-1
    (stored exactly or nearly, the threshold placed in a gap of the stored weights' logits). So the FFN block selects
    exactly the neurons numpy's predictor selects, one token at a time and all at once, and gives numpy's output with
    that selection (a row or token read from the wrong place selects others)."""
    cfg = TinyConfig(act="drelu", n_embd=1024, n_ff=512, n_head=8, n_head_kv=4)
    rank = 1024
    weights = random_weights(cfg, seed=1, predictor_rank=rank)
    rng = np.random.default_rng(5)
    for layer in range(cfg.n_layer):
        weights[f"blk.{layer}.ffn_pred_fc1.weight"] = np.eye(rank, cfg.n_embd, dtype=np.float32)
        weights[f"blk.{layer}.ffn_pred_fc2.weight"] = rng.choice([-1.0, 1.0], (cfg.n_ff, rank)).astype(np.float32)
    path = tmp_path / "m.gguf"
    stored = write_gguf(path, cfg, weights, qtype, down_layout="transposed")
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    h = rng.integers(0, 2, (12, cfg.n_embd)).astype(np.float32)
    layer = 1
    logits = predictor_logits(w, layer, h.astype(np.float64), "residual", cfg.rms_eps)
    values = np.unique(logits)
    midpoints = (values[:-1] + values[1:]) / 2
    wide = np.flatnonzero(np.diff(values) >= 0.05)  # gaps far wider than any rounding of these logits
    threshold = float(midpoints[wide[np.argmin(np.abs(midpoints[wide] - np.median(logits)))]])
    kept = logits >= threshold
    assert 0.3 < kept.mean() < 0.7
    x = h / np.sqrt((h.astype(np.float64) ** 2).mean(-1, keepdims=True) + cfg.rms_eps)
    z = x * w[f"blk.{layer}.ffn_norm.weight"]
    a = ffn_activation(cfg.act, z @ w[f"blk.{layer}.ffn_gate.weight"].T, z @ w[f"blk.{layer}.ffn_up.weight"].T)
    ref = (a * kept) @ w[f"blk.{layer}.ffn_down_t.weight"]
    ctx = NativeContext(NativeModel(path, repack=repack), n_ctx=64, n_threads=2, n_batch=64,
                        sparse_mode=SparseMode.PREDICTOR, threshold=threshold)  # fmt: skip
    together = ctx.eval_ffn(layer, h, dense_ffn=False)
    assert ctx.layer_stats()[layer].n_computed == int(kept.sum())
    assert_close(together, ref, qtype)
    ctx.reset_stats()
    apart = np.concatenate([ctx.eval_ffn(layer, h[i : i + 1], dense_ffn=False) for i in range(len(h))])
    assert ctx.layer_stats()[layer].n_computed == int(kept.sum())
    np.testing.assert_allclose(apart, together, rtol=0, atol=1e-4 * np.abs(together).max())


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_K], ids=lambda q: q.name)
def test_a_predictor_placement_holds_the_predictor_split(tmp_path: Path, qtype: Q) -> None:
    """Where the gate and up rows are held split (x86 with huge pages), a placement for predictor mode holds the
    predictor's matrices so too; not when the gate is a dense matrix (exact mode's placement) or nothing is copied,
    nor a predictor whose fc2 rows are short (rank 256: ggml's repacked GEMV reads them faster)."""
    cfg = TinyConfig(act="drelu", n_embd=1024, n_ff=512, n_head=8, n_head_kv=4)
    path, _ = make(tmp_path, cfg, rank=1024, qtype=qtype)
    placed = NativeModel(path)
    if placed.n_gate_up_split == 0:
        pytest.skip("no split layout here (another CPU, or transparent huge pages off)")
    assert placed.n_predictor_split == cfg.n_layer
    assert NativeModel(path, dense_gate=True).n_predictor_split == 0
    assert NativeModel(path, repack=False).n_predictor_split == 0
    short, _ = make(tmp_path, cfg, rank=256, qtype=qtype)
    assert NativeModel(short).n_predictor_split == 0

"""Exact mode on SwiGLU files with per-layer FFN thresholds (what `turbosparse calibrate` writes) against the
float64 numpy reference: thresholds of 0 reproduce dense exactly, thresholds select what the reference selects."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import InvalidArgumentError, ModelLoadError
from turbosparse.binding import FfnScales, FfnThresholds, NativeContext, NativeModel, SparseMode

from tinymodel import TinyConfig, gate_activation, random_weights, reference_forward, reference_logits, write_gguf

Q = gguf.GGMLQuantizationType
F32_TOLERANCE = 1e-5  # x max |logit|
QUANT_TOLERANCE = 0.15  # x std(logits): ggml quantizes the activations of its dot products
# the sparse up rows through the gate/up kernels, the down matrix through ggml's dense kernel (in the file's type)
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
GATE_KEY, ACT_KEY = "turbosparse.gate_thresholds", "turbosparse.act_thresholds"
GATE_SCALES_KEY, ACT_SCALES_KEY = "turbosparse.ffn_gate_scales", "turbosparse.ffn_act_scales"


def make(tmp_path: Path, cfg: TinyConfig, qtype: Q = Q.F32, extra: dict | None = None) -> tuple[Path, dict]:
    path = tmp_path / f"swiglu-{qtype.name}-{cfg.n_embd}.gguf"
    return path, write_gguf(path, cfg, random_weights(cfg, seed=3), qtype, extra_kv=extra)


def context(path: Path, mode: SparseMode = SparseMode.EXACT, n_threads: int = 2) -> NativeContext:
    return NativeContext(
        NativeModel(path), n_ctx=256, n_threads=n_threads, n_batch=512, sparse_mode=mode, threshold=None, kv_f32=True
    )


def tokens(cfg: TinyConfig, n: int = 24, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, cfg.n_vocab, n)]


def median_thresholds(
    cfg: TinyConfig, stored: dict, toks: list[int], share: float, scales: FfnScales | None = None
) -> tuple[list[float], list[float]]:
    """Per-layer thresholds near the given quantiles of the reference's |silu(gate)| and |a| (dense forward), times
    the neurons' scales when given."""
    n_ff = cfg.n_ff
    s_gate = scales.gate if scales is not None else np.ones((cfg.n_layer, n_ff))
    s_act = scales.act if scales is not None else np.ones((cfg.n_layer, n_ff))
    gate, act = [], []
    _, traces = reference_forward(cfg, stored, toks)
    for i, t in enumerate(traces):
        act.append(float(np.quantile(np.abs(t.activation) * s_act[i], share)))
    # the gate values themselves: |silu(g)| = |a / up| is not recoverable from the trace, so sample the weights
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    rng = np.random.default_rng(9)
    for i in range(cfg.n_layer):
        z = rng.standard_normal((64, cfg.n_embd)) * w[f"blk.{i}.ffn_norm.weight"]
        g = np.abs(gate_activation("swiglu", z @ w[f"blk.{i}.ffn_gate.weight"].T)) * s_gate[i]
        gate.append(float(np.quantile(g, share)))
    return gate, act


def random_scales(cfg: TinyConfig, seed: int = 5) -> FfnScales:
    """Per-neuron scales spread over two orders of magnitude, as down-column norms times E|up| can be."""
    rng = np.random.default_rng(seed)
    shape = (cfg.n_layer, cfg.n_ff)
    gate, act = (np.exp(rng.normal(0, 1, shape)).astype(np.float32) for _ in range(2))
    return FfnScales(gate, act)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_zero_thresholds_reproduce_dense_exactly(tmp_path: Path, qtype: Q) -> None:
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    path, _ = make(tmp_path, cfg, qtype, {GATE_KEY: [0.0, 0.0], ACT_KEY: [0.0, 0.0]})
    toks = tokens(cfg)
    dense = context(path, SparseMode.OFF)
    exact = context(path)
    assert NativeModel(path).info.has_ffn_thresholds
    for ctx in (dense, exact):  # a batch, then token by token (ggml sums a batch in another order)
        ctx.eval(toks, dense_ffn=False, logits_all=True)
        ctx.truncate(0)
    np.testing.assert_array_equal(
        exact.eval(toks, dense_ffn=False, logits_all=True), dense.eval(toks, dense_ffn=False, logits_all=True)
    )
    for ctx in (dense, exact):
        ctx.truncate(0)
    for t in toks:
        np.testing.assert_array_equal(
            exact.eval([t], dense_ffn=False, logits_all=False), dense.eval([t], dense_ffn=False, logits_all=False)
        )


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_thresholded_ffn_matches_the_reference(tmp_path: Path, qtype: Q) -> None:
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    path, stored = make(tmp_path, cfg, qtype)
    toks = tokens(cfg)
    ctx = context(path)
    # every neuron kept through the sparse path (thresholds above 0): the dense result
    tiny = FfnThresholds([1e-30] * cfg.n_layer, [1e-30] * cfg.n_layer)
    ctx.ffn_thresholds = tiny
    everything = ctx.eval(toks, dense_ffn=False, logits_all=True)
    assert all(s.n_computed == s.n_nonzero == len(toks) * cfg.n_ff for s in ctx.layer_stats())
    dense = reference_logits(cfg, stored, toks)
    if qtype == Q.F32:
        assert np.abs(everything - dense).max() <= F32_TOLERANCE * np.abs(dense).max()
    else:
        assert np.abs(everything - dense).max() / dense.std() <= QUANT_TOLERANCE
    # real thresholds: the reference with the same masks
    gate, act = median_thresholds(cfg, stored, toks, 0.4)
    ctx.ffn_thresholds = FfnThresholds(gate, act)
    ctx.truncate(0)
    ctx.reset_stats()
    out = ctx.eval(toks, dense_ffn=False, logits_all=True)
    ref, traces = reference_forward(cfg, stored, toks, ffn_thresholds=(gate, act))
    assert np.abs(ref - dense).max() > 0.05 * np.abs(dense).max()  # the thresholds really drop neurons that matter
    stats = ctx.layer_stats()
    if qtype == Q.F32:
        assert np.abs(out - ref).max() <= F32_TOLERANCE * np.abs(ref).max()
        assert [s.n_nonzero for s in stats] == [int(t.kept.sum()) for t in traces]
    else:  # quantized activations move a few neurons across a threshold: compare what was kept, and the logits
        # within the quantization noise plus what a few flipped neurons change
        assert np.abs(out - ref).max() / ref.std() <= 2 * QUANT_TOLERANCE
        for s, t in zip(stats, traces, strict=True):
            assert abs(s.n_nonzero - int(t.kept.sum())) <= 0.03 * t.kept.size


def test_mixed_down_types_as_q4_k_m(tmp_path: Path) -> None:
    """llama.cpp's Q4_K_M mixes Q4_K and Q6_K down matrices: each layer's down runs in its own type."""
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    path = tmp_path / "q4_k_m.gguf"
    stored = write_gguf(path, cfg, random_weights(cfg, seed=3), Q.Q4_K, tensor_types={"blk.1.ffn_down.weight": Q.Q6_K})
    toks = tokens(cfg)
    gate, act = median_thresholds(cfg, stored, toks, 0.4)
    ctx = context(path)
    ctx.ffn_thresholds = FfnThresholds(gate, act)
    out = ctx.eval(toks, dense_ffn=False, logits_all=True)
    ref, traces = reference_forward(cfg, stored, toks, ffn_thresholds=(gate, act))
    assert np.abs(out - ref).max() / ref.std() <= 2 * QUANT_TOLERANCE
    for s, t in zip(ctx.layer_stats(), traces, strict=True):
        assert abs(s.n_nonzero - int(t.kept.sum())) <= 0.03 * t.kept.size


def test_thresholds_from_the_file_and_the_counters(tmp_path: Path) -> None:
    cfg = TinyConfig(act="swiglu")
    toks = tokens(cfg, 20)
    plain, stored = make(tmp_path, cfg)
    gate, act = median_thresholds(cfg, stored, toks, 0.5)
    path = tmp_path / "calibrated.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=3), extra_kv={GATE_KEY: gate, ACT_KEY: act})
    model = NativeModel(path)
    np.testing.assert_allclose(model.ffn_thresholds.gate, gate, rtol=1e-6)
    np.testing.assert_allclose(model.ffn_thresholds.act, act, rtol=1e-6)
    assert not NativeModel(plain).info.has_ffn_thresholds
    ctx = context(path)
    np.testing.assert_allclose(ctx.ffn_thresholds.act, act, rtol=1e-6)
    ctx.eval(toks, dense_ffn=False, logits_all=True)
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    _, traces = reference_forward(cfg, w, toks, ffn_thresholds=(gate, act))
    stats = ctx.layer_stats()
    assert [s.n_tokens for s in stats] == [len(toks)] * cfg.n_layer
    assert [s.n_nonzero for s in stats] == [int(t.kept.sum()) for t in traces]
    # up rows computed: the gate rule alone
    assert all(s.n_computed >= s.n_nonzero for s in stats)
    # a threshold of 0 in one layer: that layer runs dense (not counted), the other sparse
    ctx.ffn_thresholds = FfnThresholds([0.0, gate[1]], [0.0, act[1]])
    ctx.reset_stats()
    ctx.truncate(0)
    ctx.eval(toks, dense_ffn=False, logits_all=True)
    assert ctx.layer_stats()[0].n_tokens == 0 and ctx.layer_stats()[1].n_tokens == len(toks)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_deterministic_for_a_thread_count(tmp_path: Path, n_threads: int) -> None:
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512)
    path, stored = make(tmp_path, cfg, Q.Q4_0)
    toks = tokens(cfg)
    thresholds = FfnThresholds(*median_thresholds(cfg, stored, toks, 0.4))
    runs = []
    for _ in range(3):
        ctx = context(path, n_threads=n_threads)
        ctx.ffn_thresholds = thresholds
        runs.append(ctx.eval(toks, dense_ffn=False, logits_all=True))
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_trace_is_the_dense_ffn(tmp_path: Path) -> None:
    cfg = TinyConfig(act="swiglu")
    path, stored = make(tmp_path, cfg)
    toks = tokens(cfg, 12)
    ctx = context(path, SparseMode.OFF)
    trace = ctx.eval_trace(toks[:5])
    trace2 = ctx.eval_trace(toks[5:])  # continues the sequence
    gate = np.concatenate([trace.gate, trace2.gate], axis=1)
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    _, traces = reference_forward(cfg, w, toks)
    for i, t in enumerate(traces):
        up = np.concatenate([trace.up[i], trace2.up[i]])
        a = gate[i] / (1.0 + np.exp(-gate[i])) * up
        assert np.abs(a - t.activation).max() <= 1e-4 * np.abs(t.activation).max()
    assert trace.gate.shape == trace.up.shape == (cfg.n_layer, 5, cfg.n_ff)
    assert ctx.n_past == len(toks)


def test_bad_thresholds_are_refused(tmp_path: Path) -> None:
    cfg = TinyConfig(act="swiglu")
    path, _ = make(tmp_path, cfg, extra={GATE_KEY: [0.1, -0.5]})
    with pytest.raises(ModelLoadError, match=r"turbosparse.gate_thresholds\[1\] = -0.5 is negative"):
        NativeModel(path)
    path, _ = make(tmp_path, TinyConfig(act="swiglu", n_embd=32), extra={ACT_KEY: [0.1, 0.2, 0.3]})
    with pytest.raises(ModelLoadError, match=r"turbosparse\.act_thresholds"):
        NativeModel(path)
    good, _ = make(tmp_path, TinyConfig(act="swiglu", n_embd=96))
    ctx = context(good)
    with pytest.raises(ValueError, match="thresholds must be 2 finite values >= 0"):
        ctx.ffn_thresholds = FfnThresholds([0.1, float("nan")], [0.0, 0.0])
    with pytest.raises(InvalidArgumentError, match="predictor mode needs a ReLU-gated FFN"):
        context(good, SparseMode.PREDICTOR)
    with pytest.raises(InvalidArgumentError, match="sparse_rows = 1"):
        NativeContext(NativeModel(good, sparse_rows=False), n_ctx=64, n_threads=1, n_batch=64,
                      sparse_mode=SparseMode.EXACT, threshold=None)  # fmt: skip


def test_model_api_on_a_calibrated_file(tmp_path: Path) -> None:
    """Model(sparse="auto") chooses exact for a calibrated SwiGLU file, refuses exact on an uncalibrated one, and
    stats() reports the rows read."""
    from turbosparse.model import Model

    cfg = TinyConfig(act="swiglu")
    plain, stored = make(tmp_path, cfg)
    assert NativeModel(plain).sparse_mode(SparseMode.AUTO) == SparseMode.OFF
    with pytest.raises(InvalidArgumentError, match="run `turbosparse calibrate` on it first"):
        Model(plain, sparse="exact", n_ctx=16, n_threads=1)
    toks = tokens(cfg, 16)
    gate, act = median_thresholds(cfg, stored, toks, 0.5)
    path = tmp_path / "calibrated.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=3), extra_kv={GATE_KEY: gate, ACT_KEY: act})
    assert NativeModel(path).sparse_mode(SparseMode.AUTO) == SparseMode.EXACT
    assert Model.__init__.__kwdefaults__["sparse"] == "auto"


def test_key_names_match_the_constants() -> None:
    """This file's key names are turbosparse.constants' (tests/test_gguf_names.py checks the C library's)."""
    from turbosparse import constants as C

    assert (GATE_KEY, ACT_KEY) == (C.KEY_GATE_THRESHOLDS, C.KEY_ACT_THRESHOLDS)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_0, Q.Q4_K], ids=lambda q: q.name)
def test_scaled_thresholds_match_the_reference(tmp_path: Path, qtype: Q) -> None:
    """Per-neuron scales (calibrate's weighted scores): up row j computed when |silu(gate_j)| s_j >= t, down row j
    read when |a_j| r_j >= t', as the numpy reference selects; the file's scales act as the context's."""
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    scales = random_scales(cfg)
    _, stored = make(tmp_path, cfg, qtype)
    toks = tokens(cfg)
    gate, act = median_thresholds(cfg, stored, toks, 0.4, scales)
    keys = {GATE_KEY: gate, ACT_KEY: act, GATE_SCALES_KEY: scales.gate.reshape(-1).tolist(),
            ACT_SCALES_KEY: scales.act.reshape(-1).tolist()}  # fmt: skip
    path = tmp_path / f"scaled-{qtype.name}.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=3), qtype, extra_kv=keys)
    model = NativeModel(path)
    np.testing.assert_array_equal(model.ffn_scales.gate, scales.gate)
    np.testing.assert_array_equal(model.ffn_scales.act, scales.act)
    ctx = context(path)
    out = ctx.eval(toks, dense_ffn=False, logits_all=True)
    ref, traces = reference_forward(cfg, stored, toks, ffn_thresholds=(gate, act), ffn_scales=(scales.gate, scales.act))
    unscaled, unscaled_traces = reference_forward(cfg, stored, toks, ffn_thresholds=(gate, act))
    # the scales change which neurons are kept (else this test could not tell them from their absence)
    changed = sum(int((t.kept != u.kept).sum()) for t, u in zip(traces, unscaled_traces, strict=True))
    assert changed > 0.05 * sum(t.kept.size for t in traces)
    stats = ctx.layer_stats()
    if qtype == Q.F32:
        assert np.abs(out - ref).max() <= F32_TOLERANCE * np.abs(ref).max()
        assert [s.n_nonzero for s in stats] == [int(t.kept.sum()) for t in traces]
    else:
        assert np.abs(out - ref).max() / ref.std() <= 2 * QUANT_TOLERANCE
        for s, t in zip(stats, traces, strict=True):
            assert abs(s.n_nonzero - int(t.kept.sum())) <= 0.03 * t.kept.size
    # the same scales set on a context of the plain file: the same logits
    plain, _ = make(tmp_path, cfg, qtype)
    other = context(plain)
    other.ffn_thresholds = FfnThresholds(gate, act)
    other.set_ffn_scales(scales)
    np.testing.assert_array_equal(other.eval(toks, dense_ffn=False, logits_all=True), out)
    assert np.abs(unscaled - ref).max() > 0.01 * np.abs(ref).max()


def test_absent_scales_select_as_before_bit_for_bit(tmp_path: Path) -> None:
    """No scales: the unscaled rule, bit for bit (also after scales were set and removed); scales of 1 alike."""
    cfg = TinyConfig(act="swiglu", n_embd=256, n_ff=512, n_head=4, n_head_kv=2)
    path, stored = make(tmp_path, cfg, Q.Q4_0)
    toks = tokens(cfg)
    thresholds = FfnThresholds(*median_thresholds(cfg, stored, toks, 0.4))
    assert NativeModel(path).ffn_scales == FfnScales()
    runs = []
    for scales in (None, random_scales(cfg), FfnScales(), FfnScales(*(np.ones((cfg.n_layer, cfg.n_ff)),) * 2)):
        ctx = context(path)
        ctx.ffn_thresholds = thresholds
        if scales is not None:
            ctx.set_ffn_scales(scales)
        runs.append(ctx.eval(toks, dense_ffn=False, logits_all=True))
        if scales is not None and scales.gate is not None and scales.gate.max() != 1:  # then removed again
            ctx.set_ffn_scales(FfnScales())
            ctx.truncate(0)
            runs.append(ctx.eval(toks, dense_ffn=False, logits_all=True))
    plain, scaled, removed, none, ones = runs
    assert not np.array_equal(plain, scaled)
    for r in (removed, none, ones):
        np.testing.assert_array_equal(r, plain)


def test_bad_scales_are_refused(tmp_path: Path) -> None:
    cfg = TinyConfig(act="swiglu")
    n = cfg.n_layer * cfg.n_ff
    cases = [
        ({GATE_SCALES_KEY: [1.0] * (n - 1)}, rf"turbosparse\.ffn_gate_scales' has {n - 1} elements, expected {n}"),
        ({ACT_SCALES_KEY: [1.0] * (n - 3) + [1.0, -2.0, 1.0]},
         rf"turbosparse\.ffn_act_scales\[{n - 2}\] \(layer 1, neuron {cfg.n_ff - 2}\) = -2 is negative"),
        ({ACT_SCALES_KEY: [1.0] * (n - 1) + [float("inf")]}, r"turbosparse\.ffn_act_scales' element \d+ is not finite"),
        ({GATE_SCALES_KEY: "1.0"}, r"turbosparse\.ffn_gate_scales' must be a numeric array"),
    ]  # fmt: skip
    for i, (extra, message) in enumerate(cases):
        path = tmp_path / f"bad-{i}.gguf"
        write_gguf(path, cfg, random_weights(cfg, seed=3), extra_kv={GATE_KEY: [0.1, 0.1], **extra})
        with pytest.raises(ModelLoadError, match=message):
            NativeModel(path)
    good, _ = make(tmp_path, cfg)
    ctx = context(good)
    with pytest.raises(ValueError, match="act scales must be"):
        ctx.set_ffn_scales(FfnScales(act=np.ones((cfg.n_layer, cfg.n_ff + 1))))
    with pytest.raises(ValueError, match="gate scales must be"):
        ctx.set_ffn_scales(FfnScales(gate=np.full((cfg.n_layer, cfg.n_ff), -1.0)))

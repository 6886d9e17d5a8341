"""The grouped sparse route (ggml_ops/src/grouped_ffn.h: top-k neuron groups through ggml_mul_mat_id, the standard
down over their activations set in place) against a float64 numpy reference over the stored weights, and the
converter's grouping (convert/groups.py)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.bench.runner import sparse_ffn_bytes, tensor_bytes
from turbosparse.binding import LayerStats, NativeContext, NativeModel, SparseMode
from turbosparse.errors import InvalidArgumentError, ModelLoadError

from tinymodel import TinyConfig, ffn_activation, predictor_logits, random_weights, write_gguf

Q = gguf.GGMLQuantizationType
G = 32
CFG = TinyConfig(act="drelu", n_ff=256)  # 8 groups of 32
RANK = 16
TOP_K = [3, 5]


def group_tensors(weights: dict[str, np.ndarray], cfg: TinyConfig, g: int = G) -> dict[str, np.ndarray]:
    """The grouped route's tensor in numpy order: the group scores [n_groups, rank] (fc2 rows summed per group)."""
    out = dict(weights)
    n_groups = cfg.n_ff // g
    for i in range(cfg.n_layer):
        fc2 = weights[f"blk.{i}.ffn_pred_fc2.weight"]
        out[f"blk.{i}.ffn_pred_groups.weight"] = fc2.reshape(n_groups, g, -1).sum(axis=1)
    return out


def make(
    tmp_path: Path,
    qtype: Q,
    *,
    bias: bool = False,
    top_k: list[int] = TOP_K,
    g: int = G,
    down_layout: str = "both",
    extra_tensors: dict[str, np.ndarray] | None = None,
    extra_kv: dict[str, object] | None = None,
) -> tuple[Path, dict]:
    weights = random_weights(CFG, seed=4, predictor_rank=RANK)
    if bias:
        rng = np.random.default_rng(9)
        for i in range(CFG.n_layer):
            weights[f"blk.{i}.ffn_gate.bias"] = (0.3 * rng.standard_normal(CFG.n_ff)).astype(np.float32)
            weights[f"blk.{i}.ffn_up.bias"] = (0.3 * rng.standard_normal(CFG.n_ff)).astype(np.float32)
            weights[f"blk.{i}.ffn_down.bias"] = (0.3 * rng.standard_normal(CFG.n_embd)).astype(np.float32)
    path = tmp_path / f"grouped-{qtype.name}-{bias}-{g}.gguf"
    extra = {"turbosparse.predictor_input": "residual_rmsnorm", "turbosparse.group_size": g,
             "turbosparse.group_top_k": top_k} | (extra_kv or {})  # fmt: skip
    # the predictor stays F32: the chosen groups then match the reference's exactly
    tensors = group_tensors(weights, CFG, g) | (extra_tensors or {})
    stored = write_gguf(path, CFG, tensors, qtype, extra_kv=extra, down_layout=down_layout, predictor_qtype=Q.F32)
    return path, stored


def old_down_slices() -> dict[str, np.ndarray]:
    """The per-group down slices that grouped files held before 2026-12-04 (blk.N.ffn_down_groups; contents unread)."""
    return {f"blk.{i}.ffn_down_groups.weight": np.zeros((CFG.n_ff // G, CFG.n_embd, G), np.float32)
            for i in range(CFG.n_layer)}  # fmt: skip


def context(path: Path, mode: SparseMode, n_threads: int = 2) -> NativeContext:
    return NativeContext(NativeModel(path), n_ctx=256, n_threads=n_threads, n_batch=512, sparse_mode=mode,
                         threshold=None, kv_f32=True)  # fmt: skip


def reference_ffn(
    w: dict[str, np.ndarray], layer: int, h: np.ndarray, top_k: int, g: int = G
) -> tuple[np.ndarray, np.ndarray]:
    """(out [T, n_embd], chosen groups [T, k]) of the grouped route in float64."""
    w = {k: v.astype(np.float64) for k, v in w.items() if k.startswith(f"blk.{layer}.")}
    h = h.astype(np.float64)
    b = f"blk.{layer}."
    z = h / np.sqrt((h**2).mean(-1, keepdims=True) + CFG.rms_eps) * w[b + "ffn_norm.weight"]
    logits = predictor_logits(w, layer, h, "residual_rmsnorm", CFG.rms_eps)
    scores = logits.reshape(len(h), -1, g).sum(axis=2)
    chosen = np.argsort(-scores, axis=1)[:, :top_k]
    gate = z @ w[b + "ffn_gate.weight"].T + w.get(b + "ffn_gate.bias", 0.0)
    up = z @ w[b + "ffn_up.weight"].T + w.get(b + "ffn_up.bias", 0.0)
    a = ffn_activation("drelu", gate, up)
    keep = np.zeros_like(a, dtype=bool)
    for t, groups in enumerate(chosen):
        for group in groups:
            keep[t, group * g : (group + 1) * g] = True
    out = (a * keep) @ w[b + "ffn_down.weight"].T + w.get(b + "ffn_down.bias", 0.0)
    return out, chosen


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize(
    ("qtype", "g"), [(Q.F32, 32), (Q.Q8_0, 32), (Q.Q4_0, 32), (Q.Q4_0, 64), (Q.Q4_1, 64)], ids=lambda v: str(v).lower()
)
def test_grouped_ffn_matches_reference(tmp_path: Path, qtype: Q, g: int, bias: bool, n_threads: int) -> None:
    # groups of 64: two quant blocks of each down row per group
    top_k = [k * G // g for k in TOP_K]
    path, stored = make(tmp_path, qtype, bias=bias, top_k=top_k, g=g)
    h = np.random.default_rng(3).standard_normal((5, CFG.n_embd)).astype(np.float32)
    ctx = context(path, SparseMode.GROUPS, n_threads)
    for layer in range(CFG.n_layer):
        ref, _ = reference_ffn(stored, layer, h, top_k[layer], g)
        out = ctx.eval_ffn(layer, h, dense_ffn=False)
        # ggml's quantized dot products take Q8_0 activations: a few tenths of a percent of the output's scale
        tolerance = 1e-5 if qtype == Q.F32 else 0.02
        assert np.abs(out - ref).max() <= tolerance * np.abs(ref).max(), layer
        stats = ctx.layer_stats()[layer]
        assert (stats.n_tokens, stats.n_computed) == (5, 5 * top_k[layer] * g)


def test_rows_read_and_top_k_override(tmp_path: Path) -> None:
    """Stats count k groups of G rows per token, n_union the groups any token chose; k can be changed per layer."""
    path, stored = make(tmp_path, Q.F32)
    h = np.random.default_rng(5).standard_normal((4, CFG.n_embd)).astype(np.float32)
    ctx = context(path, SparseMode.GROUPS)
    assert ctx.group_top_k == TOP_K and ctx.model.group_top_k == TOP_K and ctx.model.info.group_size == G
    ctx.eval_ffn(1, h, dense_ffn=False)
    _, chosen = reference_ffn(stored, 1, h, TOP_K[1])
    assert ctx.layer_stats()[1].n_union == len(np.unique(chosen)) * G
    n_groups = CFG.n_ff // G
    ctx.group_top_k = [n_groups, n_groups]  # every group: the dense FFN
    dense = context(path, SparseMode.OFF).eval_ffn(1, h, dense_ffn=True)
    assert np.abs(ctx.eval_ffn(1, h, dense_ffn=False) - dense).max() <= 1e-5 * np.abs(dense).max()
    with pytest.raises(ValueError, match="out of range"):
        ctx.group_top_k = [0, 1]


def test_whole_model_decodes_in_groups_mode(tmp_path: Path) -> None:
    """Teacher-forced logits through the grouped route with every group read equal the dense ones."""
    # the standard down only: both routes read it (with the transposed down too, dense would read that one)
    path, _ = make(tmp_path, Q.Q8_0, top_k=[CFG.n_ff // G] * CFG.n_layer, down_layout="standard")
    tokens = np.array([1, 5, 9, 200, 7, 3], dtype=np.int32)
    dense = context(path, SparseMode.OFF).eval(tokens, dense_ffn=True, logits_all=True)
    grouped = context(path, SparseMode.GROUPS).eval(tokens, dense_ffn=False, logits_all=True)
    assert np.abs(grouped - dense).max() <= 1e-3 * np.abs(dense).max()


def test_files_without_groups_are_refused(tmp_path: Path) -> None:
    weights = random_weights(CFG, seed=4, predictor_rank=RANK)
    plain = tmp_path / "plain.gguf"
    write_gguf(plain, CFG, weights, Q.F32)
    with pytest.raises(InvalidArgumentError, match="needs neuron groups"):
        context(plain, SparseMode.GROUPS)
    bad, _ = make(tmp_path, Q.F32, top_k=[3, 9])
    with pytest.raises(ModelLoadError, match=r"group_top_k\[1\] = 9 is out of range"):
        NativeModel(bad)
    # a grouped file of before 2026-12-04 with only the transposed down: loads, the other modes run, groups do not
    slices = old_down_slices()
    transposed, _ = make(tmp_path, Q.F32, down_layout="transposed", extra_tensors=slices)
    assert NativeModel(transposed).info.group_size == 0
    context(transposed, SparseMode.PREDICTOR)
    with pytest.raises(InvalidArgumentError, match="stores only their transpose: convert it again with --groups"):
        context(transposed, SparseMode.GROUPS)


def test_files_with_per_group_down_slices_still_load(tmp_path: Path) -> None:
    """Grouped files written before 2026-12-04 also hold the down sliced per group (blk.N.ffn_down_groups): the
    route no longer reads them and computes the same FFN."""
    slices = old_down_slices()
    path, stored = make(tmp_path, Q.F32, extra_tensors=slices)
    h = np.random.default_rng(3).standard_normal((5, CFG.n_embd)).astype(np.float32)
    ref, _ = reference_ffn(stored, 0, h, TOP_K[0])
    out = context(path, SparseMode.GROUPS).eval_ffn(0, h, dense_ffn=False)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("scaled", [False, True])
def test_a_grouped_files_dense_ffn_reads_the_transposed_down_unless_its_columns_are_like_scaled(
    tmp_path: Path, scaled: bool
) -> None:
    """Neurons in a group plan's order spoil the standard down's quant blocks (columns of unrelated scale in one
    block) unless the converter made its columns like-scaled (turbosparse.down_columns_scaled, files since
    2026-12-04): where an older grouped file has both layouts, the CPU's dense FFN reads the transposed down."""
    path, stored = make(tmp_path, Q.Q4_0, extra_kv={"turbosparse.down_columns_scaled": 1} if scaled else None)
    h = np.random.default_rng(8).standard_normal((6, CFG.n_embd)).astype(np.float32)
    w = {k: v.astype(np.float64) for k, v in stored.items() if k.startswith("blk.0.")}
    z = h / np.sqrt((h.astype(np.float64) ** 2).mean(-1, keepdims=True) + CFG.rms_eps) * w["blk.0.ffn_norm.weight"]
    a = ffn_activation("drelu", z @ w["blk.0.ffn_gate.weight"].T, z @ w["blk.0.ffn_up.weight"].T)
    through_t, through_standard = a @ w["blk.0.ffn_down_t.weight"], a @ w["blk.0.ffn_down.weight"].T
    out = context(path, SparseMode.OFF).eval_ffn(0, h, dense_ffn=True)
    err_t, err_standard = np.abs(out - through_t).max(), np.abs(out - through_standard).max()
    if scaled:
        assert err_standard < err_t / 2, (err_t, err_standard)
    else:
        assert err_t < err_standard / 2, (err_t, err_standard)


def test_bench_counts_the_whole_standard_down_for_groups(tmp_path: Path) -> None:
    """bench's bytes per token of the grouped route: the chosen groups' gate/up rows, fc1 and the group scores, and
    the whole standard down, whatever k; the per-group slices of older files count nowhere."""
    slices = old_down_slices()
    (tmp_path / "old").mkdir()
    old, _ = make(tmp_path / "old", Q.Q4_0, extra_tensors=slices)
    new, _ = make(tmp_path, Q.Q4_0)
    tb, tb_old = tensor_bytes(new), tensor_bytes(old)
    assert tb == tb_old
    down = CFG.n_embd * CFG.n_ff // 32 * 18  # Q4_0: 18 bytes per 32 values
    assert tb.standard_down == [down] * CFG.n_layer
    rows = TOP_K[0] * G
    stats = LayerStats(n_tokens=1, n_computed=rows, n_nonzero=rows, n_true_active=0, n_true_found=0, n_evals=1,
                       n_union=rows)  # fmt: skip
    share = rows / CFG.n_ff
    expected = share * (tb.gate[0] + tb.up[0]) + tb.predictor[0] - tb.fc2[0] + tb.group_scores[0] + down
    assert sparse_ffn_bytes(tb, 0, stats, CFG.n_ff, exact=False, groups=True) == pytest.approx(expected)

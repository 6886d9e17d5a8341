"""The sparse down kernel (sum of scaled, dequantized rows) against numpy, for every quant type."""

from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest

from turbosparse.binding import (
    KernelIsa,
    KernelKind,
    axpy_rows,
    down_rows_type,
    isa_supported,
    kernel_isa_used,
    quantize,
    row_sums_batch,
)

Q = gguf.GGMLQuantizationType
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL]
# the types each instruction set has a fused kernel for (the rest run the generic one: ggml's dequantizer), most
# specialised first, as decoding picks them
FAST_TYPES = {
    KernelIsa.AVX512_VNNI: [Q.Q4_0, Q.Q8_0, Q.Q4_K],
    KernelIsa.AVX2: [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K],
    KernelIsa.NEON: [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K],
}
TOLERANCE = 1e-5  # relative to sum_i |coef_i| * max|row_i|: float32 rounding only, the rows are dequantized exactly
# kernels that quantize each row's coefficient times its block scale to 8 bits (shared by a few rows and 32 columns)
INTEGER_KERNELS = {
    KernelIsa.AVX512_VNNI: [Q.Q4_0, Q.Q8_0, Q.Q4_K],
    KernelIsa.AVX2: [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K],
    KernelIsa.NEON: [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K],
}


def stored(values: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(bytes as the file stores them, the float values they decode to)."""
    if qtype == Q.F32:
        return values.view(np.uint8).reshape(values.shape[0], -1), values
    q = quantize(values, qtype)
    return q, gguf.quants.dequantize(q, qtype).reshape(values.shape)


def block_scales(w: np.ndarray, qtype: Q, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """[rows, n_cols] twice: the scale d and min m of the 32 values each value belongs to (value = d * code + m):
    the block's fp16 d and m (Q4_0, Q8_0: m = 0), a Q4_K sub-block's d * sc and -dmin * mn (6-bit scales and mins
    packed as ggml-common.h describes)."""
    if qtype == Q.Q4_K:
        blocks = w.reshape(w.shape[0], n_cols // 256, 144)
        dd = blocks[:, :, :4].copy().view(np.float16).astype(np.float64)  # d, dmin
        packed = blocks[:, :, 4:16].astype(np.int64)
        sc, mn = np.empty((*dd.shape[:2], 8)), np.empty((*dd.shape[:2], 8))
        sc[:, :, :4], mn[:, :, :4] = packed[:, :, :4] & 63, packed[:, :, 4:8] & 63
        sc[:, :, 4:] = (packed[:, :, 8:12] & 15) | ((packed[:, :, :4] >> 6) << 4)
        mn[:, :, 4:] = (packed[:, :, 8:12] >> 4) | ((packed[:, :, 4:8] >> 6) << 4)
        d, m = dd[:, :, :1] * sc, -dd[:, :, 1:] * mn
        return np.repeat(d.reshape(w.shape[0], -1), 32, axis=1), np.repeat(m.reshape(w.shape[0], -1), 32, axis=1)
    block_bytes = {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q8_0: 34}[qtype]
    blocks = w.reshape(w.shape[0], n_cols // 32, block_bytes)
    d = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float64)
    m = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float64) if qtype == Q.Q4_1 else np.zeros_like(d)
    return np.repeat(d, 32, axis=1), np.repeat(m, 32, axis=1)


def error_bound(
    w: np.ndarray, deq: np.ndarray, qtype: Q, isa: KernelIsa, idx: np.ndarray, coef: np.ndarray
) -> np.ndarray:
    """Per output value, what the kernel may differ from the exact sum. Integer kernels round c_r = coef_r * d_r to
    S * k_r with S = max |c| / 127 over at most all rows: each row adds at most S / 2 * |code_r| of error, where
    code_r = (value_r - m_r) / d_r (Q4_0: the nibble minus 8, taken off in integers). Every kernel: float32 rounding."""
    scale = max(1.0, float(np.abs(coef).sum() * np.abs(deq).max()))
    bound = np.full(deq.shape[1], TOLERANCE * scale)
    if qtype in INTEGER_KERNELS.get(isa, []) and idx.size:
        d, m = (x[idx] for x in block_scales(w, qtype, deq.shape[1]))
        c_max = np.abs(coef[:, None].astype(np.float64) * d).max(0)
        codes = np.abs(np.divide(deq[idx] - m, d, out=np.zeros_like(d), where=d != 0))
        bound += c_max / 254 * codes.sum(0) * (1 + 1e-5)
    return bound


def isas_for(qtype: Q) -> list[KernelIsa]:
    return [KernelIsa.GENERIC] + [i for i, types in FAST_TYPES.items() if qtype in types and isa_supported(i)]


# (n_cols, n_rows, n_idx): whole row groups and a tail (n_idx % 4), several 1024-column tiles, no rows at all, and
# for 32-value block types a row of 13 units (the split-layout kernels take 8 units at a time)
SHAPES = [(256, 7, 3), (768, 40, 40), (512, 100, 0), (2304, 50, 7), (416, 20, 17)]
CASES = [
    (qtype, isa, *shape)
    for qtype in TYPES
    for isa in isas_for(qtype)
    for shape in SHAPES
    if shape[0] % gguf.GGML_QUANT_SIZES[qtype][0] == 0
]


@pytest.mark.parametrize("qtype,isa,n_cols,n_rows,n_idx", CASES, ids=str)
def test_matches_numpy(qtype: Q, isa: KernelIsa, n_cols: int, n_rows: int, n_idx: int) -> None:
    rng = np.random.default_rng(n_cols + n_idx)
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    idx = rng.choice(n_rows, n_idx, replace=False).astype(np.int32)
    coef = rng.standard_normal(n_idx).astype(np.float32)
    out = rng.standard_normal(n_cols).astype(np.float32)
    expected = out.astype(np.float64) + (coef[:, None].astype(np.float64) * deq[idx]).sum(0)
    axpy_rows(w, qtype, n_cols, idx, coef, out, isa=isa)
    assert np.all(np.abs(out - expected) <= error_bound(w, deq, qtype, isa, idx, coef))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_decoding_runs_the_fused_kernel_where_the_cpu_has_one(qtype: Q) -> None:
    fused = next((i for i, types in FAST_TYPES.items() if isa_supported(i) and qtype in types), KernelIsa.GENERIC)
    assert kernel_isa_used(KernelKind.AXPY_ROWS, qtype, 4096) == fused


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_models_hold_downs_without_a_fused_kernel_as_q8_0(qtype: Q) -> None:
    """A loaded model requantizes a transposed down to Q8_0 where no fused kernel of this CPU reads its type (the
    generic kernel's scalar dequantizer made those sparse FFNs no faster than dense ones); float types and the types
    with a fused kernel are held as they are."""
    fused = any(isa_supported(i) and qtype in types for i, types in FAST_TYPES.items())
    q8_0_fused = any(isa_supported(i) and Q.Q8_0 in types for i, types in FAST_TYPES.items())
    kept = fused or not q8_0_fused or qtype in (Q.F32, Q.F16, Q.BF16)
    assert down_rows_type(qtype) == (qtype if kept else Q.Q8_0)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
def test_column_ranges_compose(qtype: Q) -> None:
    """Threads split the columns on block boundaries: any split gives the whole call's values bit for bit."""
    rng = np.random.default_rng(0)
    # odd unit counts and offsets; Q4_K: 11 super-blocks, ranges starting and ending inside the x86 layout's groups
    # of 8 and in its last group of 3
    n_cols, bounds = (2816, [0, 256, 768, 2304, 2560, 2816]) if qtype == Q.Q4_K else (1536, [0, 96, 448, 480, 1536])
    w, _ = stored(rng.standard_normal((19, n_cols)).astype(np.float32), qtype)
    idx, coef = np.arange(19, dtype=np.int32), rng.standard_normal(19).astype(np.float32)
    whole = np.zeros(n_cols, np.float32)
    axpy_rows(w, qtype, n_cols, idx, coef, whole)
    parts = np.zeros(n_cols, np.float32)
    for col0, col1 in itertools.pairwise(bounds):
        axpy_rows(w, qtype, n_cols, idx, coef, parts[col0:col1], col0=col0)
    np.testing.assert_array_equal(parts, whole)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K], ids=lambda q: q.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_scale_that_is_not_finite_spoils_only_its_own_block(qtype: Q, bad: float) -> None:
    """A row's block scale of NaN or infinity (a corrupt or fuzzed file) gives that block's columns garbage or
    non-finite values and every other column the right sum; no arithmetic on the garbage coefficient it turns into may
    be undefined behaviour (the sanitized run: a fuzzed file's NaN scale made the split Q4_0 kernels multiply
    INT_MIN by 8 in int)."""
    rng = np.random.default_rng(5)
    n_cols, n_rows = 768, 40
    block_cols = 256 if qtype == Q.Q4_K else 32
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    w = w.copy()
    row, block, block_bytes = 3, 1, w.shape[1] // (n_cols // block_cols)
    w[row, block * block_bytes : block * block_bytes + 2] = np.array([bad], np.float16).view(np.uint8)
    spoilt = np.zeros(n_cols, bool)
    spoilt[block * block_cols : (block + 1) * block_cols] = True
    idx = np.arange(n_rows, dtype=np.int32)
    coef = rng.standard_normal(n_rows).astype(np.float32)
    expected = (coef[:, None].astype(np.float64) * deq).sum(0)
    for isa in isas_for(qtype):
        out = np.zeros(n_cols, np.float32)
        axpy_rows(w, qtype, n_cols, idx, coef, out, isa=isa)
        bound = error_bound(w, deq, qtype, isa, idx, coef)
        assert np.all(np.abs(out - expected)[~spoilt] <= bound[~spoilt]), isa


def test_bad_arguments_are_errors() -> None:
    w, _ = stored(np.ones((4, 64), np.float32), Q.Q8_0)
    out = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="row index 4 out of"):
        axpy_rows(w, Q.Q8_0, 64, np.array([4]), np.ones(1), out)
    with pytest.raises(ValueError, match="whole 32-blocks"):
        axpy_rows(w, Q.Q8_0, 64, np.array([0]), np.ones(1), out[:48])
    w16, _ = stored(np.ones((4, 64), np.float32), Q.F16)
    with pytest.raises(ValueError, match="no avx512vnni kernel for f16"):
        axpy_rows(w16, Q.F16, 64, np.array([0]), np.ones(1), out, isa=KernelIsa.AVX512_VNNI)
    with pytest.raises(ValueError, match="w's rows hold 68 bytes; 96 q8_0 values take 102"):
        axpy_rows(w, Q.Q8_0, 96, np.array([0]), np.ones(1), np.zeros(96, np.float32))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16], ids=lambda q: q.name)
def test_float_rows_of_any_length(qtype: Q) -> None:
    rng = np.random.default_rng(1)
    w, deq = stored(rng.standard_normal((9, 40)).astype(np.float32), qtype)
    idx, coef = np.array([8, 0, 3, 5, 1], np.int32), rng.standard_normal(5).astype(np.float32)
    out = np.zeros(40, np.float32)
    axpy_rows(w, qtype, 40, idx, coef, out)
    np.testing.assert_allclose(out, (coef[:, None] * deq[idx]).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0, Q.Q4_K, Q.F16], ids=lambda q: q.name)
def test_mistral_7b_down_matrix(qtype: Q) -> None:
    """The transposed down matrix of Mistral-7B (14336 rows of 4096) at 10% active, split as two threads split it."""
    rng = np.random.default_rng(7)
    values = (rng.standard_normal((14336, 4096), dtype=np.float32) * 0.02).astype(np.float32)
    w = quantize(values, qtype) if qtype != Q.F16 else values.astype(np.float16).view(np.uint8)
    idx = np.sort(rng.choice(14336, 1434, replace=False)).astype(np.int32)
    coef = rng.standard_normal(1434).astype(np.float32)
    deq = gguf.quants.dequantize(w[idx], qtype).reshape(1434, 4096).astype(np.float64)
    expected = (coef[:, None].astype(np.float64) * deq).sum(0)
    out = np.zeros(4096, np.float32)
    for col0 in (0, 2048):
        axpy_rows(w, qtype, 4096, idx, coef, out[col0 : col0 + 2048], col0=col0)
    isa = kernel_isa_used(KernelKind.AXPY_ROWS, qtype, 4096)
    rows = np.arange(1434)
    assert np.all(np.abs(out - expected) <= error_bound(w[idx], deq, qtype, isa, rows, coef))
    # the bound holds for any rounding; rounding to nearest stays near what ggml's 8-bit quantization of the dense
    # down's input costs (~0.5-1 % rms)
    relative_rms = np.sqrt(((out - expected) ** 2).mean() / (expected**2).mean())
    assert relative_rms <= (1.5e-2 if qtype in INTEGER_KERNELS.get(isa, []) else 1e-5)


# (type, columns): 2048 = two whole tiles; float rows also with last columns that make no whole 32-column unit
BATCH_CASES = [(q, 2048) for q in (Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K)]
BATCH_CASES += [(Q.F32, 2063), (Q.F16, 1041)]


@pytest.mark.parametrize("qtype,n", BATCH_CASES, ids=[f"{q.name}-{n}" for q, n in BATCH_CASES])
def test_a_batch_gives_each_token_its_own_values(qtype: Q, n: int) -> None:
    """A batch's down walks the rows in blocks (128-910 rows here) and the columns in 1024-column tiles, and cuts a
    token's list of neurons between blocks only where every kernel's row group ends: each token gets bit for bit
    what the one-token kernel gives over its whole list (tokens from all-zero to dense; float rows whose last
    columns are no whole 32-column unit)."""
    rng = np.random.default_rng(3)
    n_rows, n_cols, col0 = 2100, 2560, 256
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    act = rng.standard_normal((5, n_rows)).astype(np.float32)
    act[rng.random(act.shape) < np.array([[0.9], [0.5], [0.97], [1.0], [0.0]])] = 0.0
    got = row_sums_batch(w, qtype, n_cols, act, col0=col0, n=n)
    isa = kernel_isa_used(KernelKind.AXPY_ROWS, qtype, n_cols)
    for t in range(act.shape[0]):
        idx = np.flatnonzero(act[t]).astype(np.int32)
        one = np.zeros(n, np.float32)
        axpy_rows(w, qtype, n_cols, idx, act[t, idx], one, col0=col0)
        np.testing.assert_array_equal(got[t], one)
        expected = (act[t, idx, None].astype(np.float64) * deq[idx, col0 : col0 + n]).sum(0)
        bound = error_bound(w[:, :], deq, qtype, isa, idx, act[t, idx])[col0 : col0 + n]
        assert np.all(np.abs(got[t] - expected) <= bound)


def test_bad_batch_arguments_are_errors() -> None:
    w, _ = stored(np.ones((4, 64), np.float32), Q.Q8_0)
    with pytest.raises(ValueError, match=r"act must have shape \(T, 4\)"):
        row_sums_batch(w, Q.Q8_0, 64, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="whole 32-blocks"):
        row_sums_batch(w, Q.Q8_0, 64, np.ones((2, 4), np.float32), col0=16)
    with pytest.raises(ValueError, match="w's rows hold 68 bytes; 96 q8_0 values take 102"):
        row_sums_batch(w, Q.Q8_0, 96, np.ones((2, 4), np.float32))

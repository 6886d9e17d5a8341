"""The sparse gate/up kernels (gathered rows dotted with one activation) against numpy and against ggml's own
vec_dot, for every quant type and every instruction set this CPU runs."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from turbosparse.binding import KernelIsa, KernelKind, dot_rows, isa_supported, kernel_isa_used, quantize

Q = gguf.GGMLQuantizationType
GENERIC_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# the types each instruction set has its own kernel for (the rest run the generic kernel on that CPU)
FAST_TYPES = {
    KernelIsa.AVX2: [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K],
    KernelIsa.AVX512_VNNI: [Q.Q4_0, Q.Q8_0, Q.Q4_K],
    KernelIsa.NEON: [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K],
    KernelIsa.NEON_DOTPROD: [Q.Q4_0, Q.Q8_0, Q.Q4_1, Q.Q4_K],
}
# most specialised first: the order in which decoding picks a kernel
PREFERENCE = [KernelIsa.AVX512_VNNI, KernelIsa.AVX2, KernelIsa.NEON_DOTPROD, KernelIsa.NEON]
MAX_N = 16384  # longest row the fast kernels take (TS_DOT_MAX_N)
SAME_ACTIVATION_TOLERANCE = 1e-5  # x sum|w||x|: a fast kernel and ggml's vec_dot see one quantized activation
BLOCK_VALUES = {Q.Q2_K: 256, Q.Q3_K: 256, Q.Q4_K: 256, Q.Q5_K: 256, Q.Q6_K: 256, Q.F32: 1, Q.F16: 1, Q.BF16: 1}


def stored(values: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(bytes as the file stores them, the float values they decode to)."""
    if qtype == Q.F32:
        return values.view(np.uint8).reshape(values.shape[0], -1), values
    q = quantize(values, qtype)
    return q, gguf.quants.dequantize(q, qtype).reshape(values.shape)


def activation_error_bound(deq: np.ndarray, x: np.ndarray, qtype: Q) -> np.ndarray:
    """Per row, the most that quantizing x to the type's vec_dot type can move w . x: 8-bit blocks of 32 or 256
    values with step d = max|x| / 127, rounded to nearest (d / 2), d itself stored as fp16 (127 d 2^-11), plus
    float rounding."""
    if qtype in (Q.F32, Q.F16, Q.BF16):  # F16/BF16 rows dot an F16/BF16 activation: 2^-8 relative at most
        return np.abs(deq) @ np.abs(x) * (2.0**-8) + 1e-6
    block = 256 if BLOCK_VALUES.get(qtype) == 256 else 32
    step = np.abs(x.reshape(-1, block)).max(1) / 127.0
    per_block = np.abs(deq).reshape(deq.shape[0], x.size // block, block).sum(-1)
    return per_block @ (step * (0.5 + 127 * 2.0**-11)) + 1e-5 * (np.abs(deq) @ np.abs(x))


def isas_for(qtype: Q) -> list[KernelIsa]:
    return [KernelIsa.GENERIC] + [i for i, types in FAST_TYPES.items() if qtype in types and isa_supported(i)]


CASES = [(qtype, isa) for qtype in GENERIC_TYPES for isa in isas_for(qtype)]


@pytest.mark.parametrize("qtype,isa", CASES, ids=lambda v: v.name.lower())
# row groups of 4 and 8 (AVX-512's pass) and pairs with tails (n_idx % 8: 7, 0, 5, 6, 1, 0, 4), one row, none, a
# repeated row; one block per row, the Mistral-7B width and the longest row the fast kernels take
@pytest.mark.parametrize(
    "n_cols,n_rows,idx",
    [
        (256, 9, [8, 0, 3, 5, 1, 2, 7]),
        (4096, 40, [*range(0, 40, 3), 4, 4]),
        (1024, 30, [*range(0, 26, 2)]),
        (1024, 30, [*range(29, 1, -2)]),
        (512, 6, [5]),
        (512, 6, []),
        (MAX_N, 5, [4, 1, 3, 0]),
    ],
    ids=["n256", "n4096", "n1024-13rows", "n1024-14rows", "one-row", "no-rows", "n16384"],
)
def test_matches_numpy(qtype: Q, isa: KernelIsa, n_cols: int, n_rows: int, idx: list[int]) -> None:
    rng = np.random.default_rng(n_cols + len(idx))
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    x = rng.standard_normal(n_cols).astype(np.float32)
    rows = np.array(idx, dtype=np.int32)
    out = dot_rows(w, qtype, n_cols, rows, x, isa)
    expected = deq[rows].astype(np.float64) @ x.astype(np.float64)
    assert out.shape == (len(idx),)
    assert np.all(np.abs(out - expected) <= activation_error_bound(deq[rows], x, qtype))
    if isa != KernelIsa.GENERIC:  # the same quantized activation as ggml's vec_dot: float rounding apart
        reference = dot_rows(w, qtype, n_cols, rows, x, KernelIsa.GENERIC)
        scale = np.abs(deq[rows]) @ np.abs(x)
        assert np.all(np.abs(out - reference) <= SAME_ACTIVATION_TOLERANCE * scale)


ROW_PAIR_CASES = [c for c in CASES if c[0] in (Q.Q4_0, Q.Q8_0, Q.Q4_1)]


@pytest.mark.parametrize("qtype,isa", ROW_PAIR_CASES, ids=lambda v: v.name.lower())
def test_rows_of_an_odd_number_of_block_pairs(qtype: Q, isa: KernelIsa) -> None:
    """6 blocks of 32: the AVX-512 Q4_0 kernel takes two pairs of blocks per step, then the last pair alone."""
    test_matches_numpy(qtype, isa, 192, 7, [6, 2, 0, 3, 5])


@pytest.mark.parametrize("qtype", sorted({q for types in FAST_TYPES.values() for q in types}), ids=lambda q: q.name)
def test_decoding_runs_the_best_kernel_this_cpu_has(qtype: Q) -> None:
    best = next((i for i in PREFERENCE if isa_supported(i) and qtype in FAST_TYPES[i]), KernelIsa.GENERIC)
    assert kernel_isa_used(KernelKind.DOT_ROWS, qtype, 4096) == best
    # rows longer than a prepared activation holds take ggml's vec_dot
    assert kernel_isa_used(KernelKind.DOT_ROWS, qtype, MAX_N + 256) == KernelIsa.GENERIC


def test_avx512_leaves_odd_block_counts_to_avx2() -> None:
    """The AVX-512 kernels take 32-blocks in pairs: a row of an odd number of blocks runs the AVX2 kernel."""
    if not isa_supported(KernelIsa.AVX512_VNNI):
        pytest.skip("this CPU has no AVX-512 VNNI")
    for qtype in (Q.Q4_0, Q.Q8_0):
        assert kernel_isa_used(KernelKind.DOT_ROWS, qtype, 4096) == KernelIsa.AVX512_VNNI
        assert kernel_isa_used(KernelKind.DOT_ROWS, qtype, 4096 + 32) == KernelIsa.AVX2


def test_bad_arguments_are_errors() -> None:
    w, _ = stored(np.ones((4, 64), np.float32), Q.Q8_0)
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="row index 4 out of"):
        dot_rows(w, Q.Q8_0, 64, np.array([4]), x)
    with pytest.raises(ValueError, match="whole 32-blocks"):
        dot_rows(w, Q.Q8_0, 48, np.array([0]), x[:48])
    w1, _ = stored(np.ones((4, 64), np.float32), Q.Q4_1)
    with pytest.raises(ValueError, match="no avx512vnni kernel for q4_1"):
        dot_rows(w1, Q.Q4_1, 64, np.array([0]), x, KernelIsa.AVX512_VNNI)
    with pytest.raises(ValueError, match="must have shape"):
        dot_rows(w, Q.Q8_0, 64, np.array([0]), x[:32])
    with pytest.raises(ValueError, match="w's rows hold 68 bytes; 96 q8_0 values take 102"):
        dot_rows(w, Q.Q8_0, 96, np.array([0]), np.ones(96, np.float32))

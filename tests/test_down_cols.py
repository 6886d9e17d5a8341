"""The exact column layout of a standard down matrix (down_cols.c) against numpy: the sparse down of SwiGLU files
without a transposed down, for every type that has the layout, vectorized and plain C paths alike. The activations
are quantized per 32 neurons as ggml quantizes the dense down's input (one scale max|a| / 127, rounded to nearest)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from turbosparse.binding import down_cols_add, quantize

Q = gguf.GGMLQuantizationType
TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
TOLERANCE = 1e-5  # relative to sum_i |coef_i| * max|W|: float32 rounding only, the layout holds the file's own values


def quantized_activations(idx: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """coef as the kernels use it: per group of 32 neurons, S * round(a / S) with S = max |a| / 127."""
    out = coef.astype(np.float64).copy()
    for g in np.unique(idx // 32):
        sel = idx // 32 == g
        s = np.abs(coef[sel]).max() / np.float32(127)
        if s > 0:
            out[sel] = s * np.rint(coef[sel] * (np.float32(127) / np.abs(coef[sel]).max()))
    return out


def standard_down(rng: np.random.Generator, n_embd: int, n_ff: int, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(the file's bytes of a down matrix, n_embd rows of n_ff values; the float64 values ggml decodes them to)"""
    raw = quantize(rng.standard_normal((n_embd, n_ff)).astype(np.float32), qtype)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(n_embd, n_ff).astype(np.float64)


@pytest.mark.parametrize("reference", [False, True], ids=["vectorized", "plain"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
# whole and partial groups of 32 neurons, one neuron, none, all; column ranges inside the rows
@pytest.mark.parametrize(
    "n_embd,n_ff,n_idx,col0,n",
    [
        (64, 96, 30, 0, 64),
        (256, 320, 1, 96, 128),
        (128, 64, 0, 0, 128),
        (96, 160, 160, 32, 32),
        (4096, 512, 77, 2048, 2048),
    ],
)
def test_matches_numpy(qtype: Q, reference: bool, n_embd: int, n_ff: int, n_idx: int, col0: int, n: int) -> None:
    rng = np.random.default_rng(n_embd + n_ff + n_idx)
    raw, w = standard_down(rng, n_embd, n_ff, qtype)
    idx = np.sort(rng.choice(n_ff, n_idx, replace=False)).astype(np.int32)
    coef = rng.standard_normal(n_idx).astype(np.float32)
    out = rng.standard_normal(n).astype(np.float32)
    expected = out.astype(np.float64) + w[col0 : col0 + n, idx] @ quantized_activations(idx, coef)
    down_cols_add(raw, qtype, n_ff, idx, coef, out, col0, reference=reference)
    scale = max(1.0, float(np.abs(coef).sum() * np.abs(w).max()))
    assert np.abs(out - expected).max() <= TOLERANCE * scale


@pytest.mark.parametrize("reference", [False, True], ids=["vectorized", "plain"])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K], ids=lambda q: q.name)
@pytest.mark.parametrize(
    "n_embd,n_ff,n_idx,col0,n", [(64, 256, 30, 0, 64), (256, 512, 200, 96, 128), (96, 256, 256, 32, 64)]
)
def test_k_quants_match_numpy(qtype: Q, reference: bool, n_embd: int, n_ff: int, n_idx: int, col0: int, n: int) -> None:
    """K-quant sub-blocks as groups: the file's codes, each sub-block's scale d * sc and min dmin * m in fp16."""
    rng = np.random.default_rng(n_embd + n_ff + n_idx)
    raw, w = standard_down(rng, n_embd, n_ff, qtype)
    idx = np.sort(rng.choice(n_ff, n_idx, replace=False)).astype(np.int32)
    coef = rng.standard_normal(n_idx).astype(np.float32)
    out = np.zeros(n, np.float32)
    expected = w[col0 : col0 + n, idx] @ quantized_activations(idx, coef)
    down_cols_add(raw, qtype, n_ff, idx, coef, out, col0, reference=reference)
    # fp16 scale and min: each value off by at most 2^-11 * (|scale| * max code + |min|) <= ~3 * 2^-11 * max|W|
    assert np.abs(out - expected).max() <= 3 * 2.0**-11 * np.abs(coef).sum() * np.abs(w).max()


def test_zero_scale_blocks() -> None:
    """A block of equal values has scale 0 (Q4_1: everything in the min): its codes carry nothing."""
    rng = np.random.default_rng(1)
    values = rng.standard_normal((32, 64)).astype(np.float32)
    values[5, :32] = 0.25  # row 5, block 0: constant
    values[7, 32:] = 0.0
    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        raw = quantize(values, qtype)
        w = gguf.quants.dequantize(raw, qtype).reshape(32, 64).astype(np.float64)
        idx = np.arange(64, dtype=np.int32)
        coef = rng.standard_normal(64).astype(np.float32)
        out = np.zeros(32, np.float32)
        down_cols_add(raw, qtype, 64, idx, coef, out)
        expected = w @ quantized_activations(idx, coef)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(coef).sum() * np.abs(w).max())


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(2)
    raw, _ = standard_down(rng, 64, 64, Q.Q4_0)
    out = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="not ascending"):
        down_cols_add(raw, Q.Q4_0, 64, np.array([3, 1], np.int32), np.ones(2, np.float32), out)
    with pytest.raises(ValueError, match="out of"):
        down_cols_add(raw, Q.Q4_0, 64, np.array([64], np.int32), np.ones(1, np.float32), out)
    with pytest.raises(ValueError, match="no exact column layout"):
        down_cols_add(quantize(np.zeros((64, 256), np.float32), Q.Q6_K), Q.Q6_K, 256, np.array([0], np.int32),
                      np.ones(1, np.float32), out)  # fmt: skip
    with pytest.raises(ValueError, match="whole 32-blocks"):
        down_cols_add(raw, Q.Q4_0, 64, np.array([0], np.int32), np.ones(1, np.float32), out[:48], col0=16)

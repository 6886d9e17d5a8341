"""ggml's quantizers through libturbosparse agree with gguf-py's independent implementation."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from turbosparse.binding import dequantize, quantize, type_info

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", [Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_bit_identical_to_gguf_py(qtype: Q) -> None:
    x = np.random.default_rng(0).standard_normal((7, 96)).astype(np.float32)
    ours = quantize(x, qtype)
    assert np.array_equal(ours, gguf.quants.quantize(x, qtype))


@pytest.mark.parametrize(
    "qtype", [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL], ids=lambda q: q.name
)
def test_dequantize_matches_gguf_py(qtype: Q) -> None:
    x = np.random.default_rng(1).standard_normal((3, 512)).astype(np.float32)
    q = quantize(x, qtype)
    ours = dequantize(q, qtype, 512)
    np.testing.assert_array_equal(ours, gguf.quants.dequantize(q, qtype).reshape(3, 512))
    assert np.sqrt(((ours - x) ** 2).mean() / (x**2).mean()) < 0.4  # a real quantization, not garbage


def test_type_info_and_errors() -> None:
    info = type_info(Q.Q4_K)
    assert (info.name, info.block_size, info.type_size, info.row_bytes(512)) == ("q4_K", 256, 144, 288)
    with pytest.raises(ValueError, match="not a multiple"):
        quantize(np.zeros((2, 100), np.float32), Q.Q4_0)
    with pytest.raises(ValueError, match="importance matrix"):
        quantize(np.zeros((2, 256), np.float32), Q.IQ2_XXS)
    with pytest.raises(ValueError, match="unknown ggml type"):
        type_info(4)

"""ggml's quantizers through libturbosparse agree with gguf-py's independent implementation."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from turbosparse.binding import dequantize, quantize, type_info
from turbosparse.errors import InvalidArgumentError

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


def test_every_type_is_quantized_or_refused() -> None:
    """ggml_quantize_chunk writes a fixed set of types and aborts the process on the others (Q8_1 among them, which
    has an activation quantizer): those are refused before ggml is called."""
    x = np.random.default_rng(2).standard_normal((2, 1024)).astype(np.float32)
    imatrix = np.ones(1024, np.float32)
    written, refused = set(), set()
    for qtype in Q:
        try:
            info = type_info(qtype)
        except ValueError:  # a type this ggml does not have
            continue
        try:
            out = quantize(x, qtype, imatrix)
        except InvalidArgumentError as exc:
            assert "ggml cannot quantize" in str(exc)
            refused.add(qtype.name)
            continue
        assert out.shape == (2, info.row_bytes(1024))
        written.add(qtype.name)
    assert {"F32", "F16", "BF16", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_NL", "TQ1_0", "MXFP4"} <= written
    assert {"Q8_1", "Q8_K", "I8", "I32", "F64"} <= refused

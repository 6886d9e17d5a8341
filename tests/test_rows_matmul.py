"""The prompt kernel of the sparse modes (every row of a plain-layout matrix against many tokens) against numpy and
against ggml's own vec_dot, for the types and CPUs that have it."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from test_dot_rows import SAME_ACTIVATION_TOLERANCE, activation_error_bound, stored

from turbosparse.binding import KernelIsa, dot_rows, isa_supported, rows_matmul

Q = gguf.GGMLQuantizationType
# the types with a prompt kernel: AVX2, and for Q4_0 rows of whole 64-value pairs of blocks AVX-512 VNNI where the CPU
# has it (on such CPUs these cases test that one, and the AVX2 Q4_0 kernel only on the one-block rows)
TYPES = [Q.Q4_0, Q.Q4_1]
needs_avx2 = pytest.mark.skipif(not isa_supported(KernelIsa.AVX2), reason="the prompt kernels are AVX2 kernels")


# rows in passes of 4 and a tail of 1-3; blocks in steps of 8 and a tail (n = 576: 18 blocks, the default model's
# width); one token, several, and more tokens than one prepared chunk holds at the longest rows
SHAPES = {
    "n256": (256, 8, 3),
    "n576-tail": (576, 7, 5),
    "n4096-one-token": (4096, 9, 1),
    "n4096": (4096, 6, 17),
    "one-block": (32, 2, 2),
    "n16384-chunks": (16384, 5, 14),
    "n768": (768, 3, 4),
}
CASES = [
    pytest.param(qtype, *shape, id=f"{qtype.name.lower()}-{name}") for qtype in TYPES for name, shape in SHAPES.items()
]


@needs_avx2
@pytest.mark.parametrize("qtype,n_cols,n_rows,n_tokens", CASES)
def test_matches_numpy_and_ggml(qtype: Q, n_cols: int, n_rows: int, n_tokens: int) -> None:
    rng = np.random.default_rng(n_cols + n_rows)
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = rows_matmul(w, qtype, n_cols, x)
    assert out.shape == (n_tokens, n_rows)
    every_row = np.arange(n_rows, dtype=np.int32)
    for t in range(n_tokens):
        expected = deq.astype(np.float64) @ x[t].astype(np.float64)
        assert np.all(np.abs(out[t] - expected) <= activation_error_bound(deq, x[t], qtype))
        # the same quantized activation as ggml's vec_dot: float rounding apart
        reference = dot_rows(w, qtype, n_cols, every_row, x[t], KernelIsa.GENERIC)
        assert np.all(np.abs(out[t] - reference) <= SAME_ACTIVATION_TOLERANCE * (np.abs(deq) @ np.abs(x[t])))


@needs_avx2
def test_a_broken_kernel_would_fail() -> None:
    """The comparison with ggml can fail: one weight block off by one step moves its row's result past the bound."""
    rng = np.random.default_rng(1)
    w, deq = stored(rng.standard_normal((4, 256)).astype(np.float32), Q.Q4_0)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    broken = w.copy()
    broken[2, 2:18] ^= 0x11  # row 2, first block: every nibble moved by one
    out = rows_matmul(broken, Q.Q4_0, 256, x)
    reference = dot_rows(w, Q.Q4_0, 256, np.arange(4, dtype=np.int32), x[0], KernelIsa.GENERIC)
    bound = SAME_ACTIVATION_TOLERANCE * (np.abs(deq) @ np.abs(x[0]))
    assert np.abs(out[0, 2] - reference[2]) > bound[2]
    assert np.all(np.abs(np.delete(out[0] - reference, 2)) <= np.delete(bound, 2))


def test_types_without_a_kernel_are_refused() -> None:
    # Q8_0 and Q4_K have none: kernels of this design were no faster than ggml's plain paths for them
    for qtype in (Q.Q8_0, Q.Q4_K):
        w, _ = stored(np.ones((2, 256), dtype=np.float32), qtype)
        with pytest.raises(ValueError, match=f"(?i)no kernel for {qtype.name} rows of 256"):
            rows_matmul(w, qtype, 256, np.ones((1, 256), dtype=np.float32))

"""The prompt kernel of the sparse modes (every row of a plain-layout matrix against many tokens) against numpy and
against ggml's own vec_dot, for the types and CPUs that have it."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from test_dot_rows import SAME_ACTIVATION_TOLERANCE, activation_error_bound, stored

from turbosparse.binding import KernelIsa, KernelKind, dot_rows, isa_name, isa_supported, kernel_isa_used, rows_matmul

Q = gguf.GGMLQuantizationType
# the prompt kernels of each instruction set (AVX-512 VNNI: Q4_0 rows of whole 64-value pairs of blocks), most
# specialised first, as prompts pick them
PROMPT_KERNELS = {KernelIsa.AVX512_VNNI: [Q.Q4_0, Q.Q8_0], KernelIsa.AVX2: [Q.Q4_0, Q.Q4_1]}
needs_avx2 = pytest.mark.skipif(not isa_supported(KernelIsa.AVX2), reason="the prompt kernels are x86 kernels")


def takes(isa: KernelIsa, qtype: Q, n_cols: int) -> bool:
    return n_cols % (64 if (isa, qtype) == (KernelIsa.AVX512_VNNI, Q.Q4_0) else 32) == 0


# rows in passes of 4 (AVX2) or 16 (AVX-512) and a tail; blocks in steps of 8 and a tail (n = 576: 18 blocks, the
# default model's width); one token, several (odd counts: the AVX-512 kernel takes tokens in pairs), and more tokens
# than one prepared chunk holds at the longest rows
SHAPES = {
    "n4096-passes": (4096, 37, 5),
    "n576-passes": (576, 48, 2),
    "n256": (256, 8, 3),
    "n576-tail": (576, 7, 5),
    "n4096-one-token": (4096, 9, 1),
    "n4096": (4096, 6, 17),
    "one-block": (32, 2, 2),
    "n16384-chunks": (16384, 5, 14),
    "n768": (768, 3, 4),
}
CASES = [
    pytest.param(
        qtype,
        isa,
        *shape,
        id=f"{qtype.name.lower()}-{isa.name.lower()}-{name}",
        marks=pytest.mark.skipif(not isa_supported(isa), reason=f"this CPU has no {isa.name}"),
    )
    for isa, types in PROMPT_KERNELS.items()
    for qtype in types
    for name, shape in SHAPES.items()
    if takes(isa, qtype, shape[0])
]


@pytest.mark.parametrize("qtype,isa,n_cols,n_rows,n_tokens", CASES)
def test_matches_numpy_and_ggml(qtype: Q, isa: KernelIsa, n_cols: int, n_rows: int, n_tokens: int) -> None:
    rng = np.random.default_rng(n_cols + n_rows)
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = rows_matmul(w, qtype, n_cols, x, isa)
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
    # Q4_K has none (one of the row-at-a-time design was no faster than ggml's plain path), Q8_0 none on AVX2
    for qtype in (Q.Q8_0, Q.Q4_K):
        w, _ = stored(np.ones((2, 256), dtype=np.float32), qtype)
        if not any(qtype in types and isa_supported(isa) for isa, types in PROMPT_KERNELS.items()):
            with pytest.raises(ValueError, match=f"no rows_matmul kernel for ggml type id {int(qtype)}"):
                rows_matmul(w, qtype, 256, np.ones((1, 256), dtype=np.float32))
        for isa, types in PROMPT_KERNELS.items():
            if qtype not in types:
                with pytest.raises(ValueError, match=f"(?i)no {isa_name(isa)} kernel for {qtype.name} rows of 256"):
                    rows_matmul(w, qtype, 256, np.ones((1, 256), dtype=np.float32), isa)


def test_rows_of_another_length_are_refused() -> None:
    w, _ = stored(np.ones((2, 256), dtype=np.float32), Q.Q4_0)
    with pytest.raises(ValueError, match="w's rows hold 144 bytes; 512 q4_0 values take 288"):
        rows_matmul(w, Q.Q4_0, 512, np.ones((1, 512), dtype=np.float32))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda q: q.name)
def test_prompts_run_the_most_specialised_kernel(qtype: Q) -> None:
    chosen = kernel_isa_used_or_none(qtype, 4096)
    best = next((i for i, types in PROMPT_KERNELS.items() if qtype in types and isa_supported(i)), None)
    assert chosen == best
    # rows of an odd number of blocks: not the AVX-512 Q4_0 kernel's pairs
    odd = next(
        (
            i
            for i, types in PROMPT_KERNELS.items()
            if qtype in types and isa_supported(i) and takes(i, qtype, 4096 + 32)
        ),
        None,
    )
    assert kernel_isa_used_or_none(qtype, 4096 + 32) == odd


def kernel_isa_used_or_none(qtype: Q, n_cols: int) -> KernelIsa | None:
    try:
        return kernel_isa_used(KernelKind.ROWS_MATMUL, qtype, n_cols)
    except ValueError:
        return None

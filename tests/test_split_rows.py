"""Gate and up rows held in the split layout (gate_up_dot.h: ts_gate_up_split; AVX-512 VNNI and AVX2: Q4_0 rows of a
multiple of 64 values and Q4_K rows (q4_k_split.h), a row's last group of 8 blocks possibly shorter): each instruction
set's split decoding and prompt kernels against numpy and ggml's vec_dot, and whole models (a dense FFN and experts)
whose rows are held so, in every mode, against the plain layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_dot_rows import SAME_ACTIVATION_TOLERANCE, activation_error_bound, stored
from test_gate_up_layout import huge_pages_enabled

from turbosparse.binding import KernelIsa, NativeContext, NativeModel, SparseMode, dot_rows, isa_supported, rows_matmul

from tinymodel import TinyConfig, random_weights, write_gguf

Q = gguf.GGMLQuantizationType
pytestmark = pytest.mark.skipif(not isa_supported(KernelIsa.AVX2), reason="the split kernels are x86 kernels")
# the sets with split kernels that this CPU runs
ISAS = [i for i in (KernelIsa.AVX512_VNNI, KernelIsa.AVX2) if isa_supported(i)]
DENSE = TinyConfig(n_vocab=384, n_embd=256, n_ff=512, act="drelu")
MOE = dataclasses.replace(DENSE, n_expert=4, n_expert_used=2)
SHORT_LAST_GROUP = dataclasses.replace(DENSE, n_embd=192)  # 6 blocks: one group, of 6


# (type, n_cols, n_rows, idx): Q4_0 in groups of 8 blocks of 32, Q4_K in groups of 8 super-blocks of 256
DECODING_CASES = {
    "q4_0-n256": (Q.Q4_0, 256, 9, [8, 0, 3, 5, 1, 2, 7]),
    "q4_0-n4096": (Q.Q4_0, 4096, 40, [*range(0, 40, 3), 4, 4]),
    "q4_0-n16384": (Q.Q4_0, 16384, 5, [4, 1, 3, 0]),
    "q4_0-no-rows": (Q.Q4_0, 512, 6, []),
    "q4_0-n576": (Q.Q4_0, 576, 11, [*range(10, -1, -1)]),  # the default model's width: the last group holds 2
    "q4_0-n192": (Q.Q4_0, 192, 9, [8, 0, 3, 5, 1, 2, 7]),  # one group of 6
    "q4_0-n16320": (Q.Q4_0, 16320, 3, [2, 0]),  # 510 blocks: a last group of 6, the activation's last quad half empty
    "q4_k-n256": (Q.Q4_K, 256, 9, [8, 0, 3, 5, 1, 2, 7]),  # one group of 1
    "q4_k-n4096": (Q.Q4_K, 4096, 40, [*range(0, 40, 3), 4, 4]),  # two groups of 8; passes of 8 and 4 with tails
    "q4_k-n16384": (Q.Q4_K, 16384, 5, [4, 1, 3, 0]),
    "q4_k-no-rows": (Q.Q4_K, 512, 6, []),
    "q4_k-n2816": (Q.Q4_K, 2816, 11, [*range(10, -1, -1)]),  # 11 super-blocks: a last group of 3
    "q4_k-n1792": (Q.Q4_K, 1792, 4, [3, 1, 2]),  # one group of 7
}


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name.lower())
@pytest.mark.parametrize("qtype,n_cols,n_rows,idx", DECODING_CASES.values(), ids=DECODING_CASES.keys())
def test_decoding_kernel_matches_numpy_and_ggml(
    isa: KernelIsa, qtype: Q, n_cols: int, n_rows: int, idx: list[int]
) -> None:
    rng = np.random.default_rng(n_cols + len(idx))
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    x = rng.standard_normal(n_cols).astype(np.float32)
    rows = np.array(idx, dtype=np.int32)
    out = dot_rows(w, qtype, n_cols, rows, x, isa, split=True)
    assert out.shape == (len(idx),)
    assert np.all(np.abs(out - deq[rows].astype(np.float64) @ x) <= activation_error_bound(deq[rows], x, qtype))
    reference = dot_rows(w, qtype, n_cols, rows, x, KernelIsa.GENERIC)  # the same quantized activation
    assert np.all(np.abs(out - reference) <= SAME_ACTIVATION_TOLERANCE * (np.abs(deq[rows]) @ np.abs(x)))


PROMPT_CASES = [
    (Q.Q4_0, 256, 8, 3), (Q.Q4_0, 4096, 37, 5), (Q.Q4_0, 512, 20, 1), (Q.Q4_0, 576, 19, 4), (Q.Q4_0, 192, 8, 2),
    (Q.Q4_0, 1344, 5, 3), (Q.Q4_K, 256, 8, 3), (Q.Q4_K, 4096, 37, 5), (Q.Q4_K, 2816, 19, 4), (Q.Q4_K, 512, 20, 1),
]  # fmt: skip
PROMPT_KERNELS = [(isa, *case) for isa in ISAS for case in PROMPT_CASES]


@pytest.mark.parametrize(
    "isa,qtype,n_cols,n_rows,n_tokens", PROMPT_KERNELS, ids=lambda v: v.name.lower() if hasattr(v, "name") else str(v)
)
def test_prompt_kernel_matches_numpy_and_ggml(
    isa: KernelIsa, qtype: Q, n_cols: int, n_rows: int, n_tokens: int
) -> None:
    rng = np.random.default_rng(n_cols + n_rows)
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), qtype)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = rows_matmul(w, qtype, n_cols, x, isa, split=True)
    every_row = np.arange(n_rows, dtype=np.int32)
    if qtype == Q.Q4_0:  # the same unpacked values as the plain layout's prompt kernel: the same sums, bit for bit
        np.testing.assert_array_equal(out, rows_matmul(w, qtype, n_cols, x, isa))
    for t in range(n_tokens):
        assert np.all(np.abs(out[t] - deq.astype(np.float64) @ x[t]) <= activation_error_bound(deq, x[t], qtype))
        reference = dot_rows(w, qtype, n_cols, every_row, x[t], KernelIsa.GENERIC)
        assert np.all(np.abs(out[t] - reference) <= SAME_ACTIVATION_TOLERANCE * (np.abs(deq) @ np.abs(x[t])))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name.lower())
def test_only_q4_0_rows_of_whole_block_pairs_and_q4_k_rows_have_a_split_kernel(isa: KernelIsa) -> None:
    w, _ = stored(np.ones((2, 288), np.float32), Q.Q4_0)  # 9 blocks
    x = np.ones(288, np.float32)
    with pytest.raises(ValueError, match="in the split layout"):
        dot_rows(w, Q.Q4_0, 288, np.array([0]), x, isa, split=True)
    w8, _ = stored(np.ones((2, 256), np.float32), Q.Q8_0)
    with pytest.raises(ValueError, match="in the split layout"):
        rows_matmul(w8, Q.Q8_0, 256, np.ones((1, 256), np.float32), isa, split=True)
    wk, _ = stored(np.ones((2, 16640), np.float32), Q.Q4_K)  # longer than the fast kernels take
    with pytest.raises(ValueError, match="in the split layout"):
        dot_rows(wk, Q.Q4_K, 16640, np.array([0]), np.ones(16640, np.float32), isa, split=True)


def logits(model: NativeModel, toks: list[int], mode: SparseMode, n_threads: int) -> np.ndarray:
    """Logits of every prompt position (the prompt nodes), then of 6 tokens decoded one at a time. Predictor mode
    selects every neuron: a predictor's logit within rounding of its threshold would otherwise flip a neuron, and the
    logits by its whole activation, on any change of arithmetic (here: ggml's attention kernels)."""
    threshold = -1e30 if mode == SparseMode.PREDICTOR else None
    ctx = NativeContext(model, n_ctx=128, n_threads=n_threads, n_batch=64, sparse_mode=mode, threshold=threshold,
                        kv_f32=1)  # fmt: skip
    rows = [ctx.eval(toks[:-6], dense_ffn=mode == SparseMode.OFF, logits_all=True)]
    rows += [ctx.eval([t], dense_ffn=mode == SparseMode.OFF, logits_all=False)[None] for t in toks[-6:]]
    return np.concatenate(rows)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


MODELS = {
    "dense-ffn": (DENSE, Q.Q4_0),
    "experts": (MOE, Q.Q4_0),
    "short-last-group": (SHORT_LAST_GROUP, Q.Q4_0),
    "q4_k-dense-ffn": (DENSE, Q.Q4_K),
    "q4_k-experts": (MOE, Q.Q4_K),
    "q4_k-group-of-3": (dataclasses.replace(DENSE, n_embd=768), Q.Q4_K),
}


@pytest.mark.parametrize("cfg,qtype", MODELS.values(), ids=MODELS.keys())
def test_models_holding_split_rows_give_the_plain_layouts_logits(tmp_path: Path, cfg: TinyConfig, qtype: Q) -> None:
    """Every mode, prompts and decoded tokens, 1 and 3 threads: the same logits as the file's own layout read from the
    mapping (repack off: no copy, no split), within rounding. The split kernel sums a row's blocks in another order,
    and repack off also leaves ggml's attention matrices unrepacked, whose kernels round differently; the down kernels
    quantize a group of rows' coefficients to 8 bits, where such a difference can move one coefficient by a step (up
    to 1/127 of the group's largest), a few 1e-4 of the logits' scale, and the next layers (the experts' router
    among them) carry it on; an activation's 8-bit rounding flipped by such a difference moves the logits by a step
    too: up to 1.2e-2 measured (the 768-wide model against a ggml built for AVX2 only, as the AVX2 kind builds it: steps
    of 4e-3 to 8e-3 at some positions, none at the first). A row or a scale read from the wrong place moves them by
    their whole scale, from the first position on."""
    if not huge_pages_enabled():
        pytest.skip("transparent huge pages are off here: the rows stay in the mapping as the file has them")
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=4, predictor_rank=16), qtype, down_layout="both",
               predictor_qtype=Q.F16)  # fmt: skip
    split, plain = NativeModel(str(path)), NativeModel(str(path), repack=False)
    assert split.n_gate_up_split == cfg.n_layer and plain.n_gate_up_split == 0
    assert NativeModel(str(path), dense_gate=True).n_gate_up_split == 0  # a dense gate is ggml's to read
    toks = [int(t) for t in np.random.default_rng(7).integers(0, cfg.n_vocab, 20)]
    for mode in (SparseMode.OFF, SparseMode.PREDICTOR, SparseMode.EXACT):
        for n_threads in (1, 3):
            got, want = logits(split, toks, mode, n_threads), logits(plain, toks, mode, n_threads)
            assert rel_error(got[:1], want[:1]) <= 1e-4 and rel_error(got, want) <= 3e-2

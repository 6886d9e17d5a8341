"""Gate and up rows held in the split layout (gate_up_dot.h: ts_gate_up_split; AVX-512 VNNI and AVX2, Q4_0 rows of a
multiple of 64 values, a row's last group of 8 blocks possibly shorter): each instruction set's split decoding and
prompt kernels against numpy and ggml's vec_dot, and whole models (a dense FFN and experts) whose rows are held so, in
every mode, against the plain layout."""

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


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name.lower())
@pytest.mark.parametrize(
    "n_cols,n_rows,idx",
    [
        (256, 9, [8, 0, 3, 5, 1, 2, 7]),
        (4096, 40, [*range(0, 40, 3), 4, 4]),
        (16384, 5, [4, 1, 3, 0]),
        (512, 6, []),
        (576, 11, [*range(10, -1, -1)]),  # the default model's width: 18 blocks, the last group holds 2
        (192, 9, [8, 0, 3, 5, 1, 2, 7]),  # one group of 6
        (16320, 3, [2, 0]),  # 510 blocks: a last group of 6, the activation's last quad half empty
    ],
    ids=["n256", "n4096", "n16384", "no-rows", "n576", "n192", "n16320"],
)
def test_decoding_kernel_matches_numpy_and_ggml(isa: KernelIsa, n_cols: int, n_rows: int, idx: list[int]) -> None:
    rng = np.random.default_rng(n_cols + len(idx))
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), Q.Q4_0)
    x = rng.standard_normal(n_cols).astype(np.float32)
    rows = np.array(idx, dtype=np.int32)
    out = dot_rows(w, Q.Q4_0, n_cols, rows, x, isa, split=True)
    assert out.shape == (len(idx),)
    assert np.all(np.abs(out - deq[rows].astype(np.float64) @ x) <= activation_error_bound(deq[rows], x, Q.Q4_0))
    reference = dot_rows(w, Q.Q4_0, n_cols, rows, x, KernelIsa.GENERIC)  # the same quantized activation
    assert np.all(np.abs(out - reference) <= SAME_ACTIVATION_TOLERANCE * (np.abs(deq[rows]) @ np.abs(x)))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name.lower())
@pytest.mark.parametrize(
    "n_cols,n_rows,n_tokens",
    [(256, 8, 3), (4096, 37, 5), (512, 20, 1), (576, 19, 4), (192, 8, 2), (1344, 5, 3)],
    ids=str,
)
def test_prompt_kernel_matches_numpy_and_ggml(isa: KernelIsa, n_cols: int, n_rows: int, n_tokens: int) -> None:
    rng = np.random.default_rng(n_cols + n_rows)
    w, deq = stored(rng.standard_normal((n_rows, n_cols)).astype(np.float32), Q.Q4_0)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    out = rows_matmul(w, Q.Q4_0, n_cols, x, isa, split=True)
    # the same unpacked values as the plain layout's prompt kernel: the same sums, bit for bit
    np.testing.assert_array_equal(out, rows_matmul(w, Q.Q4_0, n_cols, x, isa))
    every_row = np.arange(n_rows, dtype=np.int32)
    for t in range(n_tokens):
        assert np.all(np.abs(out[t] - deq.astype(np.float64) @ x[t]) <= activation_error_bound(deq, x[t], Q.Q4_0))
        reference = dot_rows(w, Q.Q4_0, n_cols, every_row, x[t], KernelIsa.GENERIC)
        assert np.all(np.abs(out[t] - reference) <= SAME_ACTIVATION_TOLERANCE * (np.abs(deq) @ np.abs(x[t])))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: i.name.lower())
def test_only_q4_0_rows_of_whole_block_pairs_have_a_split_kernel(isa: KernelIsa) -> None:
    w, _ = stored(np.ones((2, 288), np.float32), Q.Q4_0)  # 9 blocks
    x = np.ones(288, np.float32)
    with pytest.raises(ValueError, match="in the split layout"):
        dot_rows(w, Q.Q4_0, 288, np.array([0]), x, isa, split=True)
    w8, _ = stored(np.ones((2, 256), np.float32), Q.Q8_0)
    with pytest.raises(ValueError, match="in the split layout"):
        rows_matmul(w8, Q.Q8_0, 256, np.ones((1, 256), np.float32), isa, split=True)


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


@pytest.mark.parametrize("cfg", [DENSE, MOE, SHORT_LAST_GROUP], ids=["dense-ffn", "experts", "short-last-group"])
def test_models_holding_split_rows_give_the_plain_layouts_logits(tmp_path: Path, cfg: TinyConfig) -> None:
    """Every mode, prompts and decoded tokens, 1 and 3 threads: the same logits as the file's own layout read from the
    mapping (repack off: no copy, no split), within rounding. The split kernel sums a row's blocks in another order,
    and repack off also leaves ggml's attention matrices unrepacked, whose kernels round differently; the down kernels
    quantize a group of rows' coefficients to 8 bits, where such a difference can move one coefficient by a step (up
    to 1/127 of the group's largest), a few 1e-4 of the logits' scale, and the next layers (the experts' router
    among them) carry it on: up to 2.4e-3 measured. A row or a scale read from the wrong place moves them by their
    whole scale."""
    if not huge_pages_enabled():
        pytest.skip("transparent huge pages are off here: the rows stay in the mapping as the file has them")
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=4, predictor_rank=16), Q.Q4_0, down_layout="both",
               predictor_qtype=Q.F16)  # fmt: skip
    split, plain = NativeModel(str(path)), NativeModel(str(path), repack=False)
    assert split.n_gate_up_split == cfg.n_layer and plain.n_gate_up_split == 0
    assert NativeModel(str(path), dense_gate=True).n_gate_up_split == 0  # a dense gate is ggml's to read
    toks = [int(t) for t in np.random.default_rng(7).integers(0, cfg.n_vocab, 20)]
    for mode in (SparseMode.OFF, SparseMode.PREDICTOR, SparseMode.EXACT):
        for n_threads in (1, 3):
            assert rel_error(logits(split, toks, mode, n_threads), logits(plain, toks, mode, n_threads)) <= 1e-2

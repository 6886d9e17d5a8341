"""Several sequences in one context: each with its own KV cache, decoded together in one forward pass
(decode_batch), every token's logits as if its sequence were decoded alone."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import InvalidArgumentError
from turbosparse.binding import NativeContext, NativeModel, SparseMode

from tinymodel import TinyConfig, random_weights, write_gguf

Q = gguf.GGMLQuantizationType
TOLERANCE = 1e-5  # x max |logit|: batching changes at most the float summation order


def make(tmp_path: Path, qtype: Q = Q.F32, rank: int = 32) -> Path:
    cfg = TinyConfig(act="drelu", n_ctx=1024)
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=2, predictor_rank=rank), qtype, down_layout="both")
    return path


def context(path: Path, mode: SparseMode, n_seq: int, n_ctx: int = 320) -> NativeContext:
    return NativeContext(
        NativeModel(path), n_ctx=n_ctx, n_threads=2, n_batch=64, sparse_mode=mode, threshold=0.0, n_seq=n_seq,
        kv_f32=True,
    )  # fmt: skip


def streams(n: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 384, length)] for _ in range(n)]


def solo_logits(path: Path, mode: SparseMode, toks: list[int], n_prompt: int) -> np.ndarray:
    """A sequence alone: prompt prefilled, then decoded one token at a time; logits after each decoded token."""
    ctx = context(path, mode, n_seq=1)
    ctx.eval(toks[:n_prompt], dense_ffn=True, logits_all=False)
    return np.stack([ctx.eval([t], dense_ffn=False, logits_all=False) for t in toks[n_prompt:]])


@pytest.mark.parametrize("mode", [SparseMode.OFF, SparseMode.EXACT, SparseMode.PREDICTOR])
@pytest.mark.parametrize("qtype", [Q.F32, Q.Q4_0])
def test_batched_decode_equals_each_sequence_alone(tmp_path: Path, mode: SparseMode, qtype: Q) -> None:
    path = make(tmp_path, qtype)
    seqs = streams(3, 24)
    prompts = [5, 9, 2]  # different lengths: every sequence at its own position
    ctx = context(path, mode, n_seq=3)
    for i, toks in enumerate(seqs):
        ctx.eval(toks[: prompts[i]], dense_ffn=True, logits_all=False, seq=i)
    batched: list[list[np.ndarray]] = [[], [], []]
    for step in range(12):
        order = [2, 0, 1] if step % 2 else [0, 1, 2]  # the batch's row order does not matter
        rows = ctx.decode_batch(order, [seqs[i][prompts[i] + step] for i in order])
        for r, i in enumerate(order):
            batched[i].append(rows[r].copy())
    for i, toks in enumerate(seqs):
        assert ctx.n_past_of(i) == prompts[i] + 12
        alone = solo_logits(path, mode, toks[: prompts[i] + 12], prompts[i])
        ours = np.stack(batched[i])
        assert np.abs(ours - alone).max() <= TOLERANCE * np.abs(alone).max(), f"sequence {i}"


def test_a_subset_of_sequences_decodes_while_others_wait(tmp_path: Path) -> None:
    path = make(tmp_path)
    seqs = streams(2, 16, seed=1)
    ctx = context(path, SparseMode.PREDICTOR, n_seq=2)
    for i in range(2):
        ctx.eval(seqs[i][:4], dense_ffn=True, logits_all=False, seq=i)
    ctx.decode_batch([1], [seqs[1][4]])
    ctx.decode_batch([1], [seqs[1][5]])
    both = ctx.decode_batch([0, 1], [seqs[0][4], seqs[1][6]])
    alone0 = solo_logits(path, SparseMode.PREDICTOR, seqs[0][:5], 4)[-1]
    alone1 = solo_logits(path, SparseMode.PREDICTOR, seqs[1][:7], 4)[-1]
    assert np.abs(both[0] - alone0).max() <= TOLERANCE * np.abs(alone0).max()
    assert np.abs(both[1] - alone1).max() <= TOLERANCE * np.abs(alone1).max()
    # truncating one sequence leaves the other alone
    ctx.truncate(2, seq=0)
    assert (ctx.n_past_of(0), ctx.n_past_of(1)) == (2, 7)


def test_decoding_token_by_token_equals_teacher_forcing(tmp_path: Path) -> None:
    """Decoding reuses its graph from step to step (only the inputs change) and rebuilds it when the attention
    span grows past a multiple of its step (32-256 cells): the logits stay those of one teacher-forced evaluation."""
    path = make(tmp_path)
    toks = streams(1, 300, seed=3)[0]
    ref = context(path, SparseMode.OFF, n_seq=1).eval(toks, dense_ffn=True, logits_all=True)
    ctx = context(path, SparseMode.OFF, n_seq=2)
    ctx.eval(toks[:1], dense_ffn=True, logits_all=False, seq=1)
    steps = np.stack([ctx.decode_batch([1], [t])[0].copy() for t in toks[1:]])
    assert np.abs(steps - ref[1:]).max() <= TOLERANCE * np.abs(ref).max()


def test_a_batch_reads_the_union_of_its_tokens_rows(tmp_path: Path) -> None:
    path = make(tmp_path)
    ctx = context(path, SparseMode.PREDICTOR, n_seq=3)
    same = [7, 8, 9]
    for i in range(3):
        ctx.eval(same, dense_ffn=True, logits_all=False, seq=i)
    ctx.reset_stats()
    ctx.decode_batch([0, 1, 2], [4, 4, 4])  # three identical tokens select identical rows
    for s in ctx.layer_stats():
        assert s.n_evals == 1 and s.n_tokens == 3
        assert s.n_computed == 3 * s.n_union > 0
    ctx.reset_stats()
    ctx.decode_batch([0, 1], [10, 200])
    for s in ctx.layer_stats():
        assert s.n_union <= s.n_computed <= 2 * s.n_union


def test_bad_batches_are_refused(tmp_path: Path) -> None:
    path = make(tmp_path)
    ctx = context(path, SparseMode.OFF, n_seq=2, n_ctx=8)
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        ctx.decode_batch([0, 0], [1, 2])
    with pytest.raises(InvalidArgumentError, match="sequence 2 out of"):
        ctx.decode_batch([2], [1])
    with pytest.raises(InvalidArgumentError, match="1 to 2 tokens"):
        ctx.decode_batch([0, 1, 1], [1, 2, 3])
    with pytest.raises(InvalidArgumentError, match="out of the vocabulary"):
        ctx.decode_batch([0], [384])
    with pytest.raises(InvalidArgumentError, match="sequence 3 out of"):
        ctx.eval([1], dense_ffn=True, logits_all=False, seq=3)
    ctx.eval(list(range(8)), dense_ffn=True, logits_all=False, seq=1)
    from turbosparse import ContextOverflowError

    with pytest.raises(ContextOverflowError, match="sequence 1 holds 8 tokens"):
        ctx.decode_batch([0, 1], [1, 2])
    assert (ctx.n_past_of(0), ctx.n_past_of(1)) == (0, 8)  # a refused batch changes nothing
    with pytest.raises(ValueError, match="sequence 5 out of"):
        ctx.n_past_of(5)

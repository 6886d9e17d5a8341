"""Sliding-window layers (Gemma 2 and 3) caching a window's worth of positions, as llama-server's SWA cache: the same
logits as caching every position (swa_full), bit for bit, as prompts and decoded token by token while the window
moves through its cells many times, for one sequence and several decoded in one batch; the KV cache's size; which
prefixes a sequence can still keep. Tiny gemma3 models (window of 8 positions) against the float64 reference; the
real Gemma 3 past its window cache, against llama.cpp, and a Model evaluating again what it cannot keep:
tests/test_gemma.py."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.bench.runner import kv_bytes_per_token
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.errors import InvalidArgumentError

from tinymodel import TinyConfig, random_weights, reference_logits, spm_tokens, write_gguf

# layers 0-4 slide over 8 positions, layer 5 attends to all (gemma3's pattern of 6)
CFG = TinyConfig(arch="gemma3", n_layer=6, n_swa=8, n_vocab=256)
N_CTX = 1024
N_BATCH = 16  # the window's cells: 8 + 16 + a step (32, 64 or 128), its checkpoint's 8 + a step: far fewer than 1024
N_TOKENS = 300  # the window moves to the front of its cells several times
TOLERANCE = 1e-5  # x max |logit|: F32 weights and KV cache
FLASH_TOLERANCE = 2e-3  # ... which flash attention rounds to F16, as llama.cpp's does


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("swa") / "gemma3.gguf"
    stored = write_gguf(path, CFG, random_weights(CFG, seed=11))
    return path, stored


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [int(t) for t in np.random.default_rng(12).integers(0, CFG.n_vocab, N_TOKENS)]


def context(path: Path, *, swa_full: bool, n_seq: int = 1, flash_attn: bool = False) -> NativeContext:
    """With flash attention, one thread: with two, ggml splits a token's attention over 512 cells or more into a chunk
    per thread, and a window's cells are not split as every position's are (context.c: kv_span)."""
    return NativeContext(
        NativeModel(path),
        n_ctx=N_CTX,
        n_threads=1 if flash_attn else 2,
        n_batch=N_BATCH,
        sparse_mode=SparseMode.OFF,
        threshold=None,
        kv_f32=True,
        n_seq=n_seq,
        swa_full=swa_full,
        flash_attn=flash_attn,
    )


def decoded(ctx: NativeContext, tokens: list[int], seq: int = 0) -> np.ndarray:
    return np.stack([ctx.eval([t], dense_ffn=True, logits_all=False, seq=seq) for t in tokens])


@pytest.mark.parametrize("flash_attn", [False, True], ids=["plain", "flash"])
def test_a_windows_worth_gives_every_positions_logits(gemma, tokens: list[int], flash_attn: bool) -> None:
    """With flash attention the V cache's cells are rows, as K's, and move as rows."""
    path, stored = gemma
    ref = reference_logits(CFG, stored, tokens)
    full = context(path, swa_full=True, flash_attn=flash_attn)
    window = context(path, swa_full=False, flash_attn=flash_attn)
    prompt = window.eval(tokens, dense_ffn=True, logits_all=True)
    bound = (FLASH_TOLERANCE if flash_attn else TOLERANCE) * np.abs(ref).max()
    np.testing.assert_array_equal(prompt, full.eval(tokens, dense_ffn=True, logits_all=True))
    assert np.abs(prompt - ref).max() <= bound
    for ctx in (full, window):
        ctx.truncate(0)
    steps = decoded(window, tokens)
    np.testing.assert_array_equal(steps, decoded(full, tokens))
    assert np.abs(steps - ref).max() <= bound


def test_sequences_decoded_together_are_each_alone(gemma, tokens: list[int]) -> None:
    """Two sequences of different lengths decoded in one batch, their windows moving at different steps."""
    path, _ = gemma
    other = tokens[::-1]
    alone = context(path, swa_full=True)
    want_a = decoded(alone, tokens[:251])
    alone.truncate(0)
    want_b = decoded(alone, other[:200])
    ctx = context(path, swa_full=False, n_seq=2)
    ctx.eval(tokens[:50], dense_ffn=True, logits_all=False, seq=0)
    got_a = [ctx.eval(tokens[50:51], dense_ffn=True, logits_all=False, seq=0)]
    got_b = []
    for i in range(200):
        rows = ctx.decode_batch([0, 1], [tokens[51 + i], other[i]])
        got_a.append(rows[0])
        got_b.append(rows[1])
    # one row or two in a matrix product may round otherwise (tests/test_batch_decode.py)
    np.testing.assert_allclose(np.stack(got_a), want_a[50:], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.stack(got_b), want_b, rtol=0, atol=1e-4)


def test_the_cache_holds_a_window_of_the_sliding_layers(gemma) -> None:
    """The KV cache's bytes, and what the bench counts a decoded token reading of it."""
    path, _ = gemma
    assert NativeModel(path, metadata_only=True).sliding_windows == [8, 8, 8, 8, 8, 0]
    n_embd_kv = CFG.n_head_kv * CFG.head_dim
    assert kv_bytes_per_token(path, 100) == 2 * n_embd_kv * 2 * (5 * 8 + 100)  # F16
    assert kv_bytes_per_token(path, 5) == 2 * n_embd_kv * 2 * 6 * 5
    assert kv_bytes_per_token(path, 5, "q8_0", "f16") == (n_embd_kv // 32 * 34 + n_embd_kv * 2) * 6 * 5  # Q8_0 K
    full, window = context(path, swa_full=True, n_seq=3), context(path, swa_full=False, n_seq=3)
    per_cell = 2 * n_embd_kv * 4 * 3  # K and V, F32, 3 sequences
    assert full.kv_bytes == CFG.n_layer * N_CTX * per_cell
    sliding_cells = (window.kv_bytes - N_CTX * per_cell) / (5 * per_cell)  # one full layer, five sliding ones
    # the window's 8 + 16 + a step and the checkpoint's 8 + a step, each rounded up to the step (32 with AVX2, 64 with
    # AVX-512, 128 with AVX512-FP16)
    assert sliding_cells in {-(-(8 + 16 + s) // s) * s + -(-(8 + s) // s) * s for s in (32, 64, 128)}


def test_what_a_sequence_can_keep(gemma, tokens: list[int]) -> None:
    """A prefix whose next position's window was moved out is refused (naming the choice) and reported unkeepable;
    one whose window is still cached, or in the checkpoint of the prompt's last whole block, is kept and continues as
    it would have; nothing is always kept."""
    path, _ = gemma
    full, window = context(path, swa_full=True), context(path, swa_full=False)
    want = full.eval(tokens, dense_ffn=True, logits_all=True)
    window.eval(tokens, dense_ffn=True, logits_all=False)
    assert full.keepable(20) == 20 and full.keepable(10**6) == N_TOKENS
    assert window.keepable(20) == 0 and window.keepable(N_TOKENS) == N_TOKENS
    with pytest.raises(InvalidArgumentError, match=r"cannot keep 20 tokens of sequence 0: its sliding-window layers .*"
                       r"swa_full"):  # fmt: skip
        window.truncate(20)
    assert window.n_past == N_TOKENS  # untouched
    window.truncate(N_TOKENS - 5)
    again = window.eval(tokens[N_TOKENS - 5 :], dense_ffn=True, logits_all=True)
    np.testing.assert_allclose(again, want[N_TOKENS - 5 :], rtol=0, atol=1e-4)
    # the shortest prefix it keeps: the window of its next position starts at the checkpoint's first position
    shortest = min(n for n in range(1, N_TOKENS + 1) if window.keepable(n) == n)
    assert shortest < N_TOKENS // N_BATCH * N_BATCH
    assert window.keepable(shortest - 1) == 0
    window.truncate(shortest)
    again = window.eval(tokens[shortest:], dense_ffn=True, logits_all=True)
    np.testing.assert_allclose(again, want[shortest:], rtol=0, atol=1e-4)
    window.truncate(0)
    assert window.keepable(5) == 0
    np.testing.assert_array_equal(window.eval(tokens[:40], dense_ffn=True, logits_all=True), want[:40])
    assert window.keepable(20) == 20  # the window has not moved yet


def test_a_file_without_sliding_layers_keeps_one_cache(tmp_path: Path) -> None:
    cfg = TinyConfig(arch="gemma3", n_layer=2, n_swa=0)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=2), gguf.GGMLQuantizationType.F32)
    a, b = context(path, swa_full=False), context(path, swa_full=True)
    assert a.kv_bytes == b.kv_bytes


@pytest.mark.parametrize("flash_attn", [False, True], ids=["plain", "flash"])
def test_a_prompts_last_whole_block_stays_keepable_while_decoding(gemma, tokens: list[int], flash_attn: bool) -> None:
    """The checkpoint: after a prompt, decoding moves the window on, yet the prompt's last whole n_batch block (what a
    next prompt keeps) stays keepable, and continuing from there gives every position's logits again."""
    path, _ = gemma
    prompt, answer = tokens[:150], tokens[150:]
    full = context(path, swa_full=True, flash_attn=flash_attn)
    window = context(path, swa_full=False, flash_attn=flash_attn)
    for ctx in (full, window):
        ctx.eval(prompt, dense_ffn=True, logits_all=False)
        decoded(ctx, answer)
    kept = len(prompt) // N_BATCH * N_BATCH
    assert window.keepable(kept + 1) == 0  # decoding moved the window past it
    assert window.keepable(kept) == kept and window.keepable(kept - 3) == kept - 3
    for ctx in (full, window):
        ctx.truncate(kept)
    again = window.eval(tokens[kept:], dense_ffn=True, logits_all=True)
    np.testing.assert_array_equal(again, full.eval(tokens[kept:], dense_ffn=True, logits_all=True))
    np.testing.assert_array_equal(decoded(window, tokens[:40]), decoded(full, tokens[:40]))  # and decoding on
    # the evaluation from kept on was a prompt too: its last whole block is the checkpoint now
    last = len(tokens) // N_BATCH * N_BATCH
    assert window.keepable(last) == last and window.keepable(kept) == 0


def test_a_prompt_in_blocks_keeps_the_checkpoint_of_one_call(tmp_path: Path, tokens: list[int]) -> None:
    """Model evaluates a prompt one n_batch block per call (Ctrl-C lands between them); the window's checkpoint
    still goes where one call for the whole prompt puts it: 17 tokens after 15 kept end at 32, a whole block, whose
    window a later prompt can keep after the window has moved on (split into 16 + 1 tokens, the last call of one
    token took no checkpoint)."""
    from turbosparse import Model

    cfg = TinyConfig(arch="gemma3", n_layer=6, n_swa=8, n_vocab=300)  # room for a vocabulary Model can load
    path = tmp_path / "gemma3.gguf"
    vocabulary = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": spm_tokens(cfg.n_vocab)}
    write_gguf(path, cfg, random_weights(cfg, seed=11), extra_kv=vocabulary)
    with Model(path, n_threads=2, n_ctx=N_CTX, n_batch=N_BATCH, sparse="off") as model:

        class User:
            pass

        user = User()
        model.evaluate(user, tokens[:15], logits_from=0)
        model.evaluate(user, tokens[:32], logits_from=15)  # keeps 15, evaluates 17
        for n in range(33, 33 + 100):  # decoded: the window moves far past position 32
            model.evaluate(user, tokens[:n])
        assert model._ctx.keepable(32) == 32

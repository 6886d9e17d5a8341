"""A sequence's state as bytes (ts_context_seq_state_*, NativeContext.save_seq / load_seq): restored into the same
context after it moved on, or into another sequence of another context, decoding goes on with the very logits it would
have given had it never left; every cache layout (V transposed, flash attention's rows over quantized caches,
sliding-window caches holding a window's worth and their checkpoint); states that do not fit are refused by name and
change nothing. Model / Llama on top: tests/test_llama_compat.py (save_state, load_state, set_cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.errors import ContextOverflowError, InvalidArgumentError

from tinymodel import TinyConfig, random_weights, write_gguf

N_BATCH = 16


@dataclass(frozen=True)
class Layout:
    name: str
    cfg: TinyConfig
    flash_attn: bool = False
    cache_type: str = "f16"
    n_ctx: int = 256


LAYOUTS = [
    Layout("v_transposed_f16", TinyConfig()),
    Layout("flash_q8_0", TinyConfig(n_embd=128), flash_attn=True, cache_type="q8_0"),  # heads of 32: whole blocks
    # layers 0-4 slide over 8 positions: their caches hold a window's worth (and a checkpoint), layer 5 every position
    Layout("sliding_window", TinyConfig(arch="gemma3", n_layer=6, n_swa=8, n_vocab=256), n_ctx=1024),
]


@pytest.fixture(scope="module", params=LAYOUTS, ids=lambda layout: layout.name)
def layout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, Path]:
    spec: Layout = request.param
    path = tmp_path_factory.mktemp("state") / f"{spec.name}.gguf"
    write_gguf(path, spec.cfg, random_weights(spec.cfg, seed=5))
    return spec, path


def context(spec: Layout, path: Path, *, n_seq: int = 1, n_ctx: int | None = None, **changed: object) -> NativeContext:
    options: dict[str, object] = dict(
        n_ctx=spec.n_ctx if n_ctx is None else n_ctx, n_threads=1, n_batch=N_BATCH, sparse_mode=SparseMode.OFF,
        threshold=None, n_seq=n_seq, flash_attn=spec.flash_attn, type_k=spec.cache_type, type_v=spec.cache_type,
    )  # fmt: skip
    options.update(changed)
    return NativeContext(NativeModel(path), **options)  # type: ignore[arg-type]


def tokens(spec: Layout, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, spec.cfg.n_vocab, n)]


def decoded(ctx: NativeContext, toks: list[int], seq: int = 0) -> np.ndarray:
    return np.stack([ctx.eval([t], dense_ffn=True, logits_all=False, seq=seq) for t in toks])


def test_a_restored_sequence_goes_on_as_if_it_never_left(layout: tuple[Layout, Path]) -> None:
    """A prompt of 13 whole blocks and a bit (past the window caches' 128 cells: the window has moved; their checkpoint
    at its last whole block), 7 decoded tokens, saved; then the context evaluates 150 other tokens and the state comes
    back; in another context it goes into sequence 1 of 2, where its checkpoint still takes it back to that block."""
    spec, path = layout
    prompt, after, later = tokens(spec, 213, 1), tokens(spec, 7, 2), tokens(spec, 12, 3)
    ctx = context(spec, path)
    if spec.cfg.n_swa:  # the sliding layers' caches hold a window's worth
        assert ctx.kv_bytes < context(spec, path, swa_full=True).kv_bytes / 2
    ctx.eval(prompt, dense_ffn=True, logits_all=False)
    decoded(ctx, after)
    n = len(prompt) + len(after)
    keepable = [ctx.keepable(k) for k in range(0, n + 1, 4)]
    state = ctx.save_seq()
    expected = decoded(ctx, later)

    ctx.truncate(0)
    ctx.eval(tokens(spec, 150, 4), dense_ffn=True, logits_all=False)
    ctx.load_seq(state)
    assert ctx.n_past == n
    assert [ctx.keepable(k) for k in range(0, n + 1, 4)] == keepable
    np.testing.assert_array_equal(decoded(ctx, later), expected)

    other = context(spec, path, n_seq=2)
    other.eval(tokens(spec, 30, 5), dense_ffn=True, logits_all=False, seq=1)
    other.load_seq(state, seq=1)
    assert (other.n_past_of(0), other.n_past_of(1)) == (0, n)
    np.testing.assert_array_equal(decoded(other, later, seq=1), expected)
    if spec.cfg.n_swa:  # the checkpoint came along: the window goes back to the prompt's last whole block
        decoded(other, tokens(spec, 100, 6), seq=1)
        other.truncate(208, seq=1)
        fresh = context(spec, path)
        fresh.eval(prompt[:208], dense_ffn=True, logits_all=False)
        np.testing.assert_array_equal(decoded(other, later, seq=1), decoded(fresh, later))


def test_an_empty_sequence_saves_its_header_alone(layout: tuple[Layout, Path]) -> None:
    spec, path = layout
    ctx = context(spec, path)
    empty = ctx.save_seq()
    ctx.eval(tokens(spec, 20, 7), dense_ffn=True, logits_all=False)
    assert len(ctx.save_seq()) > len(empty)
    ctx.load_seq(empty)
    assert ctx.n_past == 0
    fresh = context(spec, path)
    toks = tokens(spec, 5, 8)
    np.testing.assert_array_equal(decoded(ctx, toks), decoded(fresh, toks))


def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(layout: tuple[Layout, Path]) -> None:
    spec, path = layout
    source = context(spec, path)
    source.eval(tokens(spec, 40, 9), dense_ffn=True, logits_all=False)
    state = source.save_seq()

    target = context(spec, path)
    target.eval(tokens(spec, 21, 10), dense_ffn=True, logits_all=False)
    probe = tokens(spec, 3, 11)
    refusals: list[tuple[bytes, type[Exception], str]] = [
        (b"", InvalidArgumentError, "not a sequence state"),
        (b"XXXX" + state[4:], InvalidArgumentError, "not a sequence state"),
        (state[:-1], InvalidArgumentError, "corrupt sequence state"),
        (state + b"\0", InvalidArgumentError, "corrupt sequence state"),
        (state[:4] + b"\x07" + state[5:], InvalidArgumentError, "version 7"),
    ]
    other_type = "f32" if spec.cache_type != "f32" else "f16"
    other_cache = context(spec, path, type_k=other_type, type_v=other_type).save_seq()
    refusals.append((other_cache, InvalidArgumentError, "cache is K"))
    if spec.cfg.n_swa:  # caches of every position (swa_full) against a window's worth
        refusals.append((context(spec, path, swa_full=True).save_seq(), InvalidArgumentError, "sliding-window caches"))
    for data, error, words in refusals:
        with pytest.raises(error, match=words):
            target.load_seq(data)
        assert target.n_past == 21
    with pytest.raises(InvalidArgumentError, match="sequence 1 out of"):
        target.load_seq(state, seq=1)
    if not spec.cfg.n_swa:  # (a context that small caches every position: refused for that first)
        with pytest.raises(ContextOverflowError, match="holds 40 tokens, n_ctx is 32"):
            context(spec, path, n_ctx=32).load_seq(state)

    untouched = context(spec, path)
    untouched.eval(tokens(spec, 21, 10), dense_ffn=True, logits_all=False)
    np.testing.assert_array_equal(decoded(target, probe), decoded(untouched, probe))


def test_forged_positions_and_token_counts_are_refused(layout: tuple[Layout, Path]) -> None:
    """Header fields that no sequence can hold: a window that no longer holds the next position's window (where the
    layers slide), a position count past n_ctx, another token count than the caller's bookkeeping."""
    spec, path = layout
    ctx = context(spec, path)
    ctx.eval(tokens(spec, 200, 12), dense_ffn=True, logits_all=False)
    state = bytearray(ctx.save_seq())
    target = context(spec, path)
    with pytest.raises(InvalidArgumentError, match="199 tokens expected, keys and values of 200"):
        target.load_seq(bytes(state), n_tokens=199)
    if spec.cfg.n_swa:
        forged = bytearray(state)
        forged[_field("swa_base") : _field("swa_base") + 4] = (200 - spec.cfg.n_swa + 2).to_bytes(4, "little")
        with pytest.raises(InvalidArgumentError, match="corrupt sequence state: window from position"):
            target.load_seq(bytes(forged))
    forged = bytearray(state)
    forged[_field("n_past") : _field("n_past") + 4] = (spec.n_ctx + 1).to_bytes(4, "little")
    with pytest.raises(ContextOverflowError):
        target.load_seq(bytes(forged))
    assert target.n_past == 0
    target.load_seq(bytes(state), n_tokens=200)
    assert target.n_past == 200


def _field(name: str) -> int:
    """Byte offset of an int32 header field (seq_state.c: seq_state_header)."""
    names = ["version", "n_layer", "n_embd_kv", "type_k", "type_v", "flash_attn", "rope_factors", "windowed",
             "n_cells_swa", "n_cells_ckpt", "n_past", "swa_base", "ckpt_pos", "ckpt_start"]  # fmt: skip
    return 4 + 4 * names.index(name)


def test_keys_roped_with_other_factors_are_refused(tmp_path: Path) -> None:
    """phi3 (LongRoPE) ropes with its long factors where a sequence's cells pass the original context, else its short
    ones: a state saved at one size does not go into a context of the other."""
    cfg = TinyConfig(arch="phi3", n_rot=12, rope_attn_factor=1.2)
    path = tmp_path / "phi3.gguf"
    write_gguf(path, cfg, random_weights(cfg, seed=5), extra_kv={"phi3.rope.scaling.original_context_length": 256})
    spec = Layout("phi3", cfg)
    long = context(spec, path, n_ctx=512)
    long.eval(tokens(spec, 40, 13), dense_ffn=True, logits_all=False)
    with pytest.raises(InvalidArgumentError, match="rope_long factors, this context ropes with rope_short"):
        context(spec, path, n_ctx=256).load_seq(long.save_seq())
    context(spec, path, n_ctx=1024).load_seq(long.save_seq())  # long factors too


def test_mutated_states_load_or_are_refused(layout: tuple[Layout, Path]) -> None:
    """Header fields set to edge values or one off, keys and values overwritten, bytes cut short: each state is refused
    by name, or loads and decoding goes on (run under ASan / UBSan too: tests/test_sanitizers.py; a type number past
    ggml's named in the message crashed), and the sequence beside it keeps what it holds."""
    spec, path = layout
    source = context(spec, path)
    source.eval(tokens(spec, 150, 14), dense_ffn=True, logits_all=False)
    state = source.save_seq()
    target = context(spec, path, n_seq=2)
    target.eval(tokens(spec, 9, 15), dense_ffn=True, logits_all=False)
    probe = tokens(spec, 2, 16)
    alone = context(spec, path)
    alone.eval(tokens(spec, 9, 15), dense_ffn=True, logits_all=False)
    expected = decoded(alone, probe)
    edges = [0, 1, -1, 7, 8, 150, 151, 257, 2**31 - 1, -(2**31), spec.n_ctx, spec.n_ctx + 1, 1 << 20]
    rng = np.random.default_rng(17)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(80):
        data = bytearray(state)
        for _ in range(int(rng.integers(1, 4))):
            at = 4 * int(rng.integers(1, 15))  # an int32 field after the magic: an edge value, or one off its own
            own = int.from_bytes(data[at : at + 4], "little", signed=True)
            value = int(rng.choice(edges)) if rng.random() < 0.6 else own + int(rng.choice([-1, 1]))
            if rng.random() < 0.3:  # or the keys and values' bytes (NaN and infinities among them): it loads
                at, value = int(rng.integers(60, len(data) - 4)), int(rng.integers(-(2**31), 2**31))
            data[at : at + 4] = value.to_bytes(4, "little", signed=True)
        if rng.random() < 0.25:
            data = data[: int(rng.integers(0, len(data)))]
        try:
            target.load_seq(bytes(data), seq=1)
        except (InvalidArgumentError, ContextOverflowError):
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert target.n_past_of(1) == 150
        target.eval(probe[:1], dense_ffn=True, logits_all=False, seq=1)  # any values: no crash
        target.truncate(0, seq=1)
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes
    np.testing.assert_array_equal(decoded(target, probe), expected)

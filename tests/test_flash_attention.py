"""Flash attention (ggml's flash_attn_ext, V cached untransposed) and the KV cache's types (llama.cpp's -fa, -ctk,
-ctv) on tiny models against the float64 reference: every architecture's attention (Gemma 2's soft-capped scores,
Gemma 3's sliding windows), prompts and token by token, sequences decoded together, each quantized type within its
rounding, the cache's bytes, and the settings refused. Bit for bit against llama.cpp with the same settings on the
real SmolLM2 and Gemma 3: tests/test_llama_parity.py, tests/test_gemma.py; with a window cache:
tests/test_sliding_window_cache.py."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.errors import InvalidArgumentError

from tinymodel import TinyConfig, random_weights, reference_logits, write_gguf

ARCHS = {
    "llama": TinyConfig(n_head=8, n_head_kv=2),
    "gemma2": TinyConfig(arch="gemma2", act="geglu", n_layer=3, tied=True, n_swa=12, logit_softcap=30.0,
                         attn_softcap=50.0),
    "gemma3": TinyConfig(arch="gemma3", act="geglu", n_layer=3, tied=True, n_swa=12),
}  # fmt: skip
# heads of 64 values, so that every quantized type's blocks fill them and the caches are rotated (context.h: rot_k)
HEADS_OF_64 = TinyConfig(n_embd=256, n_ff=256, n_head=4, n_head_kv=2)
# x max |logit|: F32 weights, the attention in F16 (ggml's flash attention rounds queries, keys and values to F16;
# F32 caches are cast to F16 for it, as llama.cpp casts them)
FLASH_TOLERANCE = 2e-3
# max |ours - reference| / std(reference) with K and V cached in a type, on HEADS_OF_64 (F32 weights): measured
# 0.002 / 0.007 / 0.027 / 0.17 / 0.40 on two seeds; the bounds leave room, and order the types by their bits
CACHE_BOUNDS = {"f32": 0.005, "f16": 0.005, "bf16": 0.02, "q8_0": 0.06, "q5_1": 0.3, "q5_0": 0.3, "q4_1": 0.6,
                "q4_0": 0.6, "iq4_nl": 0.6}  # fmt: skip


def context(path: Path, n_seq: int = 1, n_batch: int = 512, **attention: object) -> NativeContext:
    return NativeContext(NativeModel(path), n_ctx=256, n_threads=2, n_batch=n_batch, sparse_mode=SparseMode.OFF,
                         threshold=None, n_seq=n_seq, **attention)  # fmt: skip


def tokens(cfg: TinyConfig, n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, cfg.n_vocab, n)]


def decoded(ctx: NativeContext, toks: list[int], seq: int = 0) -> np.ndarray:
    return np.stack([ctx.eval([t], dense_ffn=True, logits_all=False, seq=seq) for t in toks])


@pytest.mark.parametrize("arch", ARCHS)
def test_flash_attention_matches_the_reference(tmp_path: Path, arch: str) -> None:
    """The reference within the attention's F16 rounding, as a prompt in blocks and token by token, past Gemma's
    window."""
    cfg = ARCHS[arch]
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=3))
    toks = tokens(cfg, 50)
    ref = reference_logits(cfg, stored, toks)
    bound = FLASH_TOLERANCE * np.abs(ref).max()
    ctx = context(tmp_path / "m.gguf", n_batch=16, flash_attn=True)
    assert np.abs(ctx.eval(toks, dense_ffn=True, logits_all=True) - ref).max() <= bound
    ctx.truncate(0)
    assert np.abs(decoded(ctx, toks) - ref).max() <= bound


def test_sequences_decoded_together_are_each_alone(tmp_path: Path) -> None:
    """Each sequence of a batch attends through its own flash-attention node over its own cells."""
    cfg = ARCHS["gemma3"]
    write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=4))
    a, b = tokens(cfg, 60, seed=1), tokens(cfg, 40, seed=2)
    alone = context(tmp_path / "m.gguf", flash_attn=True)
    want_a = decoded(alone, a)
    alone.truncate(0)
    want_b = decoded(alone, b)
    ctx = context(tmp_path / "m.gguf", n_seq=2, flash_attn=True)
    ctx.eval(a[:20], dense_ffn=True, logits_all=False, seq=0)
    rows = [ctx.decode_batch([0, 1], [a[20 + i], b[i]]) for i in range(40)]
    # one row or two in a matrix product may round otherwise (tests/test_batch_decode.py), and GEGLU and the
    # attention to F16
    bound = 1e-4 * np.abs(want_a).max()
    np.testing.assert_allclose(np.stack([r[0] for r in rows]), want_a[20:], rtol=0, atol=bound)
    np.testing.assert_allclose(np.stack([r[1] for r in rows]), want_b, rtol=0, atol=bound)


@pytest.mark.parametrize("cache_type", CACHE_BOUNDS)
def test_each_cache_type_stays_within_its_rounding(tmp_path: Path, cache_type: str) -> None:
    stored = write_gguf(tmp_path / "m.gguf", HEADS_OF_64, random_weights(HEADS_OF_64, seed=1))
    toks = tokens(HEADS_OF_64, 40, seed=1)
    ref = reference_logits(HEADS_OF_64, stored, toks)
    ctx = context(tmp_path / "m.gguf", flash_attn=True, type_k=cache_type, type_v=cache_type)
    prompt = ctx.eval(toks, dense_ffn=True, logits_all=True)
    error = np.abs(prompt - ref).max() / ref.std()
    assert error <= CACHE_BOUNDS[cache_type], f"{cache_type}: normalized error {error:.4f}"
    assert (prompt.argmax(1) == ref.argmax(1)).mean() >= 0.85
    ctx.truncate(0)
    np.testing.assert_allclose(decoded(ctx, toks), prompt, rtol=0, atol=1e-3 * np.abs(ref).max())
    if cache_type == "q8_0":  # quantized keys without flash attention: ggml's matmul over them
        plain = context(tmp_path / "m.gguf", type_k="q8_0").eval(toks, dense_ffn=True, logits_all=True)
        assert np.abs(plain - ref).max() / ref.std() <= CACHE_BOUNDS["q8_0"]


def test_a_quantized_cache_takes_its_types_bytes(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", HEADS_OF_64, random_weights(HEADS_OF_64, seed=1))
    f16 = context(tmp_path / "m.gguf").kv_bytes
    q8 = context(tmp_path / "m.gguf", flash_attn=True, type_k="q8_0", type_v="q8_0").kv_bytes
    q4_keys = context(tmp_path / "m.gguf", type_k="q4_0").kv_bytes  # K alone
    rotations = 2 * 64 * 64 * 4  # the two F32 Walsh-Hadamard matrices, and the buffer's alignment
    assert f16 * 34 / 64 <= q8 <= f16 * 34 / 64 + rotations + 4096
    assert f16 * (18 / 64 + 1) / 2 <= q4_keys <= f16 * (18 / 64 + 1) / 2 + rotations + 4096


def test_settings_refused(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf", HEADS_OF_64, random_weights(HEADS_OF_64, seed=1))
    with pytest.raises(InvalidArgumentError, match=r"quantized V cache \(q8_0\) needs flash attention \(flash_attn\)"):
        context(tmp_path / "m.gguf", type_v="q8_0")
    with pytest.raises(InvalidArgumentError, match=r"KV cache type 'q4_k' is not one of f32, f16, bf16, q8_0"):
        context(tmp_path / "m.gguf", type_k="q4_k")
    context(tmp_path / "m.gguf", type_v="bf16")  # not quantized: V stays transposed
    small_heads = TinyConfig()  # heads of 16 values
    write_gguf(tmp_path / "s.gguf", small_heads, random_weights(small_heads, seed=1), gguf.GGMLQuantizationType.F32)
    with pytest.raises(InvalidArgumentError, match=r"s\.gguf: K cache type q8_0 stores blocks of 32 values, which do "
                       r"not divide the heads of 16 values"):  # fmt: skip
        context(tmp_path / "s.gguf", type_k="q8_0")

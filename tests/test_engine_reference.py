"""The engine against a float64 numpy forward pass on tiny random models, for every FFN activation, every ggml quant
type llama.cpp users ship, Gemma's and Mistral 3's blocks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import NativeContext, NativeModel, SparseMode

from tinymodel import TinyConfig, random_weights, reference_forward, reference_logits, write_gguf

Q = gguf.GGMLQuantizationType

# max |ours - reference| / std(reference logits). F32 is exact up to float32 rounding; other types also
# quantize the activations (to Q8_0 / Q8_1 / Q8_K, or F16 for F16 weights) inside ggml's matmul.
TOLERANCE = {Q.F32: 1e-5, Q.F16: 5e-3, Q.BF16: 3e-2}
# F32 with GEGLU: ggml's gelu rounds its input and output to F16; a gate value that float32 and float64 round to
# neighbouring F16 values moves its neuron by an F16 step
GEGLU_TOLERANCE = 1e-4
QUANT_TOLERANCE = 0.15
QUANT_TYPES = [
    Q.F16,
    Q.BF16,
    Q.Q8_0,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
    Q.IQ4_NL,
    Q.IQ4_XS,
]


def context(path: Path, n_threads: int = 2, n_batch: int = 512) -> NativeContext:
    return NativeContext(
        NativeModel(path),
        n_ctx=256,
        n_threads=n_threads,
        n_batch=n_batch,
        sparse_mode=SparseMode.OFF,
        threshold=None,
        kv_f32=True,
    )


def tokens(cfg: TinyConfig, n: int, seed: int = 0) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, cfg.n_vocab, n)]


def assert_prompt_and_steps_are(path: Path, toks: list[int], ref: np.ndarray, bound: float) -> None:
    """The model at path gives ref's logits within bound (absolute), as the prompt's batch and token by token through
    the KV cache."""
    ctx = context(path)
    assert np.abs(ctx.eval(toks, dense_ffn=True, logits_all=True) - ref).max() <= bound
    ctx.truncate(0)
    steps = np.stack([ctx.eval([t], dense_ffn=True, logits_all=False) for t in toks])
    assert np.abs(steps - ref).max() <= bound


@pytest.mark.parametrize("act", ["swiglu", "reglu", "drelu"])
@pytest.mark.parametrize("tied", [False, True], ids=["output", "tied"])
def test_f32_matches_reference(tmp_path: Path, act: str, tied: bool) -> None:
    cfg = TinyConfig(act=act, tied=tied)
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=1))
    toks = tokens(cfg, 40)
    ref = reference_logits(cfg, stored, toks)
    ctx = context(tmp_path / "m.gguf")
    prefill = ctx.eval(toks, dense_ffn=True, logits_all=True)
    assert np.abs(prefill - ref).max() <= TOLERANCE[Q.F32] * np.abs(ref).max()
    # decoding one token at a time through the KV cache gives the same logits
    ctx.truncate(0)
    steps = np.stack([ctx.eval([t], dense_ffn=True, logits_all=False) for t in toks])
    assert np.abs(steps - ref).max() <= TOLERANCE[Q.F32] * np.abs(ref).max()


def test_batches_threads_and_truncation_agree(tmp_path: Path) -> None:
    cfg = TinyConfig(n_head=8, n_head_kv=2)
    write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=3))
    toks = tokens(cfg, 70, seed=4)
    whole = context(tmp_path / "m.gguf").eval(toks, dense_ffn=True, logits_all=True)
    chunked = context(tmp_path / "m.gguf", n_batch=16).eval(toks, dense_ffn=True, logits_all=True)
    one_thread = context(tmp_path / "m.gguf", n_threads=1).eval(toks, dense_ffn=True, logits_all=True)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one_thread, whole, rtol=0, atol=1e-4)
    ctx = context(tmp_path / "m.gguf")
    ctx.eval(toks[:50], dense_ffn=True, logits_all=False)
    ctx.truncate(30)
    again = ctx.eval(toks[30:], dense_ffn=True, logits_all=True)
    np.testing.assert_allclose(again, whole[30:], rtol=0, atol=1e-4)
    last = context(tmp_path / "m.gguf").eval(toks, dense_ffn=True, logits_all=False)
    np.testing.assert_allclose(last, whole[-1], rtol=0, atol=1e-4)


def test_embeddings_are_the_final_norms_output(tmp_path: Path) -> None:
    """Embeddings (llama.cpp's: the final norm's output) against the reference, over several prompt blocks, for every
    token or the last; the logits after them are as before (the embeddings' graph is not kept)."""
    cfg = TinyConfig(n_head=8, n_head_kv=2)
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=5))
    toks = tokens(cfg, 37, seed=6)
    ref = reference_forward(cfg, stored, toks, final_norm=True)[0]
    ctx = context(tmp_path / "m.gguf", n_batch=16)
    rows = ctx.embed(toks, all_tokens=True)
    assert rows.shape == ref.shape
    assert np.abs(rows - ref).max() <= TOLERANCE[Q.F32] * np.abs(ref).max()
    ctx.truncate(0)
    np.testing.assert_allclose(ctx.embed(toks, all_tokens=False), rows[-1], rtol=0, atol=1e-5)
    ctx.truncate(0)
    logits = reference_logits(cfg, stored, toks)
    assert np.abs(ctx.eval(toks, dense_ffn=True, logits_all=True) - logits).max() <= 1e-5 * np.abs(logits).max()


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_quant_types_match_reference(tmp_path: Path, qtype: Q) -> None:
    # K-quants need rows that are multiples of 256
    cfg = TinyConfig(n_embd=256, n_ff=512, n_head=4, n_head_kv=2, tied=qtype == Q.Q4_0)
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=2), qtype)
    toks = tokens(cfg, 24)
    ref = reference_logits(cfg, stored, toks)
    out = context(tmp_path / "m.gguf").eval(toks, dense_ffn=True, logits_all=True)
    error = np.abs(out - ref).max() / ref.std()
    assert error <= TOLERANCE.get(qtype, QUANT_TOLERANCE), f"{qtype.name}: normalized error {error:.4f}"
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_a_rope_factor_without_a_type_scales_linearly(tmp_path: Path) -> None:
    """llama.cpp reads a missing rope.scaling.type as linear: a factor alone (2023's rope.scale_linear files, or
    rope.scaling.factor) scales positions as type linear does; an explicit none does not."""
    cfg = TinyConfig()
    weights = random_weights(cfg, seed=5)
    toks = tokens(cfg, 40, seed=6)
    kvs = {"explicit": {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
           "legacy": {"llama.rope.scale_linear": 4.0}, "factor": {"llama.rope.scaling.factor": 4.0},
           "none": {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0}, "plain": {}}  # fmt: skip
    logits = {}
    for name, extra in kvs.items():
        write_gguf(tmp_path / f"{name}.gguf", cfg, weights, extra_kv=extra)
        logits[name] = context(tmp_path / f"{name}.gguf").eval(toks, dense_ffn=True, logits_all=True)
    assert np.abs(logits["explicit"] - logits["plain"]).max() > 1e-2
    for name in ("legacy", "factor"):
        np.testing.assert_array_equal(logits[name], logits["explicit"])
    np.testing.assert_array_equal(logits["none"], logits["plain"])


def test_mistral3_matches_reference(tmp_path: Path) -> None:
    """YaRN with the file's betas and magnitude multiplier, and the queries' temperature stepping every 16 positions:
    prompt and token by token; each feature matters on this model."""
    cfg = TinyConfig(arch="mistral3", n_embd_head=32, rope_base=1e6, rope_factor=4.0, yarn_orig_ctx=16,
                     yarn_betas=(16.0, 2.0), yarn_log_mul=0.5, attn_temp_scale=0.5, attn_temp_floor=16)  # fmt: skip
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=5))
    toks = tokens(cfg, 60)
    ref = reference_logits(cfg, stored, toks)
    assert_prompt_and_steps_are(tmp_path / "m.gguf", toks, ref, TOLERANCE[Q.F32] * ref.std())
    for change in ({"attn_temp_scale": 0.0}, {"yarn_betas": (32.0, 1.0)}, {"yarn_log_mul": 0.0}, {"yarn_orig_ctx": 0}):
        changed = reference_logits(TinyConfig(**{**cfg.__dict__, **change}), stored, toks)
        assert np.abs(changed - ref).max() > 100 * TOLERANCE[Q.F32] * ref.std(), change


@pytest.mark.parametrize("long_context", [False, True], ids=["short", "long"])
def test_phi3_matches_reference(tmp_path: Path, long_context: bool) -> None:
    """q, k, v and gate, up stacked in the file, a partial rope (12 of 16 dimensions), the rope factors of short
    contexts or, past the original context (64 positions here, 256 cells), of long ones, and the rope's magnitude."""
    cfg = TinyConfig(arch="phi3", n_rot=12, rope_attn_factor=1.2, rope_long=long_context)
    original = {"phi3.rope.scaling.original_context_length": 64 if long_context else 256}
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=5), extra_kv=original)
    assert "blk.0.attn_qkv.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    toks = tokens(cfg, 40)
    ref = reference_logits(cfg, stored, toks)
    assert_prompt_and_steps_are(tmp_path / "m.gguf", toks, ref, TOLERANCE[Q.F32] * ref.std())
    for change in ({"rope_long": not long_context}, {"rope_attn_factor": 1.0}):
        changed = reference_logits(TinyConfig(**{**cfg.__dict__, **change}), stored, toks)
        assert np.abs(changed - ref).max() > 100 * TOLERANCE[Q.F32] * ref.std(), change


@pytest.mark.parametrize("roped", [True, False], ids=["roped", "unroped"])
def test_granite_matches_reference(tmp_path: Path, roped: bool) -> None:
    """Granite's multipliers (a negative one too: llama.cpp applies any but 0), and its rope turned off
    (rope.scaling.finetuned false: no position input at all)."""
    cfg = TinyConfig(arch="granite", embedding_scale=2.0 if roped else -2.0, attention_scale=0.5, residual_scale=0.6,
                     logit_scale=4.0, no_rope_step=0 if roped else 1)  # fmt: skip
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=5))
    toks = tokens(cfg, 30)
    ref = reference_logits(cfg, stored, toks)
    assert_prompt_and_steps_are(tmp_path / "m.gguf", toks, ref, TOLERANCE[Q.F32] * ref.std())


GEMMA = {  # 7 layers: the sliding ones and the global ones (every 2nd in Gemma 2, every 6th in Gemma 3)
    "gemma2": TinyConfig(arch="gemma2", act="geglu", n_swa=6, n_layer=7, tied=True, logit_softcap=30.0,
                         attn_softcap=2.0, rope_base=1e6),  # a cap that bites on these scores; every layer roped alike
    "gemma3": TinyConfig(arch="gemma3", act="geglu", n_swa=6, n_layer=7, tied=True, logit_softcap=30.0,
                         rope_base=1e6),  # the sliding layers rope with 1e4
}  # fmt: skip


def differs(
    cfg: TinyConfig, weights: dict[str, np.ndarray], toks: list[int], ref: np.ndarray, **change: object
) -> bool:
    """Whether the reference with one feature changed is far from ref (the feature matters on this model)."""
    changed = reference_logits(TinyConfig(**{**cfg.__dict__, **change}), weights, toks)
    return bool(np.abs(changed - ref).max() > 100 * GEGLU_TOLERANCE * np.abs(ref).max())


@pytest.mark.parametrize("arch", GEMMA)
def test_gemma_matches_reference(tmp_path: Path, arch: str) -> None:
    """Sliding-window layers, scaled embeddings, post norms, GEGLU, soft-capped logits; Gemma 3's per-head q / k norms
    and its sliding layers' own rope base, Gemma 2's soft-capped scores: prompt and token by token, past the window."""
    cfg = GEMMA[arch]
    stored = write_gguf(tmp_path / "m.gguf", cfg, random_weights(cfg, seed=5))
    toks = tokens(cfg, 40)
    ref = reference_logits(cfg, stored, toks)
    assert_prompt_and_steps_are(tmp_path / "m.gguf", toks, ref, GEGLU_TOLERANCE * np.abs(ref).max())
    assert differs(cfg, stored, toks, ref, n_swa=10**6) and differs(cfg, stored, toks, ref, logit_softcap=0.0)
    assert differs(cfg, stored, toks, ref, rope_base=1e4)  # gemma2: every layer's; gemma3: the global layer's
    if arch == "gemma2":
        assert differs(cfg, stored, toks, ref, attn_softcap=0.0)


def test_gemma2_defaults(tmp_path: Path) -> None:
    """A gemma2 file without the soft-cap and window keys: llama.cpp's 50, 30 and 4096."""
    cfg = TinyConfig(arch="gemma2", act="geglu", n_layer=3, tied=True, logit_softcap=30.0, attn_softcap=50.0,
                     n_swa=4096)  # fmt: skip
    weights = random_weights(cfg, seed=6)
    write_gguf(tmp_path / "said.gguf", cfg, weights)
    bare = tmp_path / "bare.gguf"
    write_gguf(bare, TinyConfig(**{**cfg.__dict__, "n_swa": 0, "logit_softcap": 0.0, "attn_softcap": 0.0}), weights)
    assert {"gemma2.attention.sliding_window", "gemma2.final_logit_softcapping"}.isdisjoint(
        gguf.GGUFReader(bare).fields
    )
    toks = tokens(cfg, 12)
    np.testing.assert_array_equal(
        context(bare).eval(toks, dense_ffn=True, logits_all=True),
        context(tmp_path / "said.gguf").eval(toks, dense_ffn=True, logits_all=True),
    )


def test_the_sliding_window_pattern_as_a_number_or_per_layer(tmp_path: Path) -> None:
    """attention.sliding_window_pattern: absent (6: both layers of two slide), a number, or a bool per layer."""
    cfg = TinyConfig(arch="gemma3", act="geglu", n_swa=4)
    weights = random_weights(cfg)
    toks = tokens(cfg, 16)
    key = "gemma3.attention.sliding_window_pattern"
    logits = {}
    for name, extra in {"default": {}, "slide": {key: [True, True]}, "one": {key: 1}, "global": {key: [False, False]},
                        "second": {key: [False, True]}}.items():  # fmt: skip
        write_gguf(tmp_path / f"{name}.gguf", cfg, weights, extra_kv=extra)
        logits[name] = context(tmp_path / f"{name}.gguf").eval(toks, dense_ffn=True, logits_all=True)
    write_gguf(tmp_path / "none.gguf", TinyConfig(**{**cfg.__dict__, "n_swa": 0}), weights)
    np.testing.assert_array_equal(logits["slide"], logits["default"])
    np.testing.assert_array_equal(logits["global"], logits["one"])  # every layer global: as without a window
    np.testing.assert_array_equal(logits["one"], context(tmp_path / "none.gguf").eval(toks, dense_ffn=True,
                                                                                       logits_all=True))  # fmt: skip
    assert not np.array_equal(logits["second"], logits["default"])
    assert not np.array_equal(logits["second"], logits["one"])

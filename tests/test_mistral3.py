"""The mistral3 architecture (Ministral 3, and Mistral Small 3.x / Magistral / Devstral GGUFs as llama.cpp's converter
writes them now): llama's block with YaRN read in full (its ramp's betas, the magnitude's mscale_all_dim) and Llama 4's
query temperature over long contexts. llama.cpp itself, transformers and the float64 numpy reference agree with our
engine, densely and in exact mode with the thresholds `turbosparse calibrate` picks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import Model, ModelLoadError, TrainingError
from turbosparse.binding import NativeModel
from turbosparse.predictor_train.hf_import import gguf_to_hf
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    TORCH_TOLERANCE,
    assert_exact_mode_is_the_references,
    assert_logits_are_llama_cpps,
    converted,
    ministral3_model,
    model_logits,
    rel_error,
    rewritten,
)
from tinymodel import read_gguf, reference_logits

VOCAB = SPM_VOCAB + 8
F32 = gguf.GGUFValueType.FLOAT32


@pytest.fixture(scope="module")
def ministral3(tmp_path_factory: pytest.TempPathFactory):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter)."""
    model = ministral3_model(VOCAB)
    path = converted(model, tmp_path_factory.mktemp("mistral3"), "mistral3")
    fields = gguf.GGUFReader(path).fields
    assert fields["mistral3.attention.temperature_scale"].contents() == 0.5
    assert fields["mistral3.rope.scaling.type"].contents() == "yarn"
    return model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    """100 positions: the queries' temperature steps every 16 (the original context)."""
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 99).tolist()]


def test_dense_logits_are_llama_cpps_bit_for_bit(ministral3, tokens: list[int]) -> None:
    model, path = ministral3
    theirs = assert_logits_are_llama_cpps(path, tokens, n_ctx=256)
    assert rel_error(theirs, model_logits(model, tokens)) <= TORCH_TOLERANCE  # the file is the checkpoint


def llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits with YaRN's betas from the file, as llama-cli and llama-server read them
    (llama-cpp-python passes 32 and 1 unless told -1)."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=256, logits_all=True, n_threads=2, verbose=False, yarn_beta_fast=-1.0,
                yarn_beta_slow=-1.0)  # fmt: skip
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def test_temperature_betas_and_magnitude_are_read_as_llama_cpp_reads_them(
    ministral3, tokens: list[int], tmp_path: Path
) -> None:
    """Each key changes the logits (so each is read), and llama.cpp's logits change the same way, bit for bit (YaRN's
    betas and yarn_log_multiplier are read for mistral3 only, as llama.cpp reads them: test_qwen.py)."""
    _, path = ministral3
    base = Model(path, n_threads=2, n_ctx=256, sparse="off").eval_logits(tokens)
    variants = {
        "no temperature": {"mistral3.attention.temperature_scale": (0.0, F32)},
        "betas": {"mistral3.rope.scaling.yarn_beta_fast": (8.0, F32),
                  "mistral3.rope.scaling.yarn_beta_slow": (2.0, F32)},
        "magnitude": {"mistral3.rope.scaling.yarn_log_multiplier": (0.5, F32)},
        "linear": {"mistral3.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING)},  # the floor stays 16
    }  # fmt: skip
    for name, keys in variants.items():
        variant = rewritten(path, tmp_path / f"{name}.gguf", keys=keys)
        ours = Model(variant, n_threads=2, n_ctx=256, sparse="off").eval_logits(tokens)
        np.testing.assert_array_equal(ours, llama_cpp_logits(variant, tokens), err_msg=name)
        assert rel_error(ours, base) > 1e-3, name


def test_the_reference_and_exact_mode_with_calibrated_thresholds(ministral3, tokens: list[int], tmp_path: Path) -> None:
    """The numpy reference (YaRN and the temperature) is transformers' forward, and `turbosparse calibrate`'s
    thresholds decoded in exact mode are the reference's logits with the same neurons skipped."""
    model, path = ministral3
    cfg, weights, _ = read_gguf(path)
    want = model_logits(model, tokens)
    assert rel_error(reference_logits(cfg, weights, tokens), want) <= TORCH_TOLERANCE
    assert rel_error(reference_logits(cfg.__class__(**{**cfg.__dict__, "attn_temp_scale": 0.0}), weights, tokens),
                     want) > 10 * TORCH_TOLERANCE  # fmt: skip
    assert_exact_mode_is_the_references(path, tokens, tmp_path / "calibrated.gguf", want)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"mistral3.attention.temperature_scale": (float("nan"), F32)}, "temperature_scale must be finite"),
        ({"mistral3.rope.scaling.yarn_beta_fast": (float("inf"), F32)}, "yarn_beta_fast, _slow and"),
        ({"mistral3.rope.scaling.yarn_log_multiplier": (float("nan"), F32)}, "yarn_log_multiplier must be finite"),
        (
            {"mistral3.rope.scaling.original_context_length": (0, gguf.GGUFValueType.UINT32)},
            "temperature_scale with a zero rope.scaling.original_context_length",
        ),  # llama.cpp refuses it too
    ],
)
def test_bad_keys_are_refused_by_name(ministral3, tmp_path: Path, keys: dict, message: str) -> None:
    _, path = ministral3
    with pytest.raises(ModelLoadError, match=message):
        NativeModel(rewritten(path, tmp_path / "bad.gguf", keys=keys))


def test_training_refuses_it_rather_than_load_it_as_llama(ministral3, tmp_path: Path) -> None:
    """Loaded as Llama, the temperature and YaRN would be dropped: relufy / imatrix / train-predictors point at
    calibrate."""
    _, path = ministral3
    with pytest.raises(TrainingError, match=r"model_type 'ministral3'.*turbosparse calibrate"):
        load_causal_lm(path.parent / "hf")
    with pytest.raises(TrainingError, match=r"general\.architecture 'mistral3'"):
        gguf_to_hf(path, tmp_path / "hf")

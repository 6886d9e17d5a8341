"""The granite architecture (IBM Granite 3.x GGUFs as llama.cpp's converter writes them): llama's block with its
multipliers on the embeddings, scores, residual branches and logits. llama.cpp itself, transformers and the float64
numpy reference agree with our engine, densely and in exact mode with the thresholds `turbosparse calibrate` picks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import Model, ModelLoadError, TrainingError
from turbosparse.binding import NativeModel
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    TORCH_TOLERANCE,
    assert_engine_is_the_checkpoint,
    assert_logits_are_llama_cpps,
    converted,
    granite_model,
    rel_error,
    rewritten,
)
from tinymodel import read_gguf, reference_logits

VOCAB = SPM_VOCAB + 8


@pytest.fixture(scope="module")
def granite(tmp_path_factory: pytest.TempPathFactory):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter)."""
    model = granite_model(VOCAB)
    path = converted(model, tmp_path_factory.mktemp("granite"), "granite")
    assert gguf.GGUFReader(path).fields["granite.logit_scale"].contents() == 4.0
    return model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 39).tolist()]


def test_logits_are_llama_cpps_and_the_references(granite, tokens: list[int], tmp_path: Path) -> None:
    """Bit for bit llama.cpp's; transformers' and the numpy reference's (each multiplier moving it past the tolerance
    when left out); exact mode with calibrate's thresholds is the reference with the same neurons skipped."""
    model, path = granite
    scales = ("embedding_scale", "attention_scale", "residual_scale", "logit_scale")
    assert_engine_is_the_checkpoint(model, path, tokens, tmp_path, {scale: {scale: 0.0} for scale in scales})


def test_an_unroped_granite_and_a_file_without_its_logit_scale(granite, tokens: list[int], tmp_path: Path) -> None:
    """rope.scaling.finetuned false: no layer roped, as llama.cpp builds it; logit_scale is required (llama.cpp too)."""
    _, path = granite
    unroped = rewritten(path, tmp_path / "unroped.gguf",
                        keys={"granite.rope.scaling.finetuned": (False, gguf.GGUFValueType.BOOL)})  # fmt: skip
    theirs = assert_logits_are_llama_cpps(unroped, tokens)
    cfg, weights, _ = read_gguf(unroped)
    assert cfg.no_rope_step == 1
    assert rel_error(reference_logits(cfg, weights, tokens), theirs) <= TORCH_TOLERANCE
    assert (
        rel_error(theirs, Model(path, n_threads=2, n_ctx=128, sparse="off").eval_logits(tokens)) > 10 * TORCH_TOLERANCE
    )
    scaled = rewritten(path, tmp_path / "zero.gguf", keys={"granite.logit_scale": (0.0, gguf.GGUFValueType.FLOAT32)})
    with pytest.raises(ModelLoadError, match="logit_scale finite and not 0"):
        NativeModel(scaled)
    biased = rewritten(path, tmp_path / "biased.gguf", tensors={"output.bias": np.ones(VOCAB, dtype=np.float32)})
    with pytest.raises(ModelLoadError, match=r"tensor 'output\.bias' in a granite file"):  # llama.cpp refuses it too
        NativeModel(biased)


def test_training_refuses_it_rather_than_load_it_as_llama(granite) -> None:
    """Loaded as Llama, the multipliers would be dropped."""
    _, path = granite
    with pytest.raises(TrainingError, match=r"model_type 'granite'.*turbosparse calibrate"):
        load_causal_lm(path.parent / "hf")

"""The smollm3 architecture (SmolLM3 GGUFs as llama.cpp's converter writes them): llama's block with every fourth
layer attending without a rope (NoPE). llama.cpp itself, transformers and the float64 numpy reference agree with our
engine, densely and in exact mode with the thresholds `turbosparse calibrate` picks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from turbosparse import ModelLoadError, TrainingError
from turbosparse.binding import NativeModel
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    assert_engine_is_the_checkpoint,
    converted,
    rewritten,
    smollm3_model,
)

VOCAB = SPM_VOCAB + 8


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory: pytest.TempPathFactory):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter)."""
    model = smollm3_model(VOCAB)
    return model, converted(model, tmp_path_factory.mktemp("smollm3"), "smollm3")


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 39).tolist()]


def test_logits_are_llama_cpps_and_the_references(smollm3, tokens: list[int], tmp_path: Path) -> None:
    """Bit for bit llama.cpp's; transformers' and the numpy reference's (which moves past the tolerance with the
    fourth layer roped); exact mode with calibrate's thresholds is the reference with the same neurons skipped."""
    model, path = smollm3
    assert_engine_is_the_checkpoint(model, path, tokens, tmp_path, {"NoPE": {"no_rope_step": 0}})


@pytest.mark.parametrize(
    ("name", "size"),
    [("rope_freqs.weight", 8), ("rope_factors_long.weight", 8), ("output.bias", VOCAB), ("blk.1.ffn_down.bias", 64)],
)
def test_tensors_llama_cpp_refuses_are_refused_by_name(smollm3, tmp_path: Path, name: str, size: int) -> None:
    """llama.cpp's smollm3 ropes without factors and has no biases: it refuses a file with any (so do we)."""
    _, path = smollm3
    extra = rewritten(path, tmp_path / "extra.gguf", tensors={name: np.ones(size, dtype=np.float32)})
    with pytest.raises(ModelLoadError, match=rf"tensor '{re.escape(name)}' in a smollm3 file"):
        NativeModel(extra)


def test_training_refuses_it_rather_than_load_it_as_llama(smollm3) -> None:
    """Loaded as Llama, the unroped layers would be roped."""
    _, path = smollm3
    with pytest.raises(TrainingError, match=r"model_type 'smollm3'.*turbosparse calibrate"):
        load_causal_lm(path.parent / "hf")

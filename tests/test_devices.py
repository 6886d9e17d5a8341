"""Devices: Model(device=...) and ggml's device list on the CPU (every build), and on a GPU device the dense and
grouped-sparse logits of the default model against a float64 numpy forward pass over its stored weights (only where
ggml has a GPU device: a llama-cpp-python built with Vulkan, Metal or CUDA; `scripts/setup.sh --vulkan` builds the
Vulkan one, whose software device lavapipe runs on any Linux machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import Model, devices
from turbosparse.binding import CACHE_TYPES, DeviceInfo, NativeContext, NativeModel, SparseMode, find_device
from turbosparse.errors import InvalidArgumentError, ModelLoadError

from tinymodel import (
    TinyConfig,
    chosen_groups,
    ffn_activation,
    ffn_down,
    ffn_gate_up,
    random_weights,
    read_gguf,
    reference_logits,
    rms_norm,
    write_gguf,
)

GPU = next((d for d in devices() if not d.is_cpu), None)
needs_gpu = pytest.mark.skipif(
    GPU is None,
    reason="no GPU device in this ggml (a CPU-only llama-cpp-python); scripts/setup.sh --vulkan builds one with "
    "Vulkan, whose software device (lavapipe) ggml lists with GGML_VK_VISIBLE_DEVICES=0",
)


def computes_in_f32(device: DeviceInfo) -> bool:
    """ggml-vulkan with GGML_VK_DISABLE_F16 (conftest.py sets it) computes in f32, so a float64 forward pass is its
    yardstick. ggml-cuda (and Metal) quantize activations to 8 bits in quantized matrix products, as ggml's CPU does:
    measured on an NVIDIA H200 (README, "On an NVIDIA GPU"), its logits stand as far from float64 as the CPU's, and
    its decoded steps differ from its own batched logits by 1-2 % of the largest logit on any model (llama.cpp's
    alike), so there the yardstick is llama.cpp on the same device."""
    return device.name.startswith("Vulkan") and bool(os.environ.get("GGML_VK_DISABLE_F16"))


needs_f32_gpu = pytest.mark.skipif(
    GPU is None or not computes_in_f32(GPU),
    reason="held to a float64 reference: needs a GPU device that computes in f32 (ggml-vulkan with "
    "GGML_VK_DISABLE_F16); CUDA and Metal are held to llama.cpp on the same device instead",
)
N_TOKENS = 128  # teacher-forced positions of real text compared
# A GPU device's logits against a float64 numpy forward pass over the file's stored (dequantized) weights: argmax
# agreement, and max |difference| over max |logit|. conftest.py sets GGML_VK_DISABLE_F16, so ggml-vulkan computes in
# f32: measured on lavapipe 1.000 and 0.0014, dense and grouped alike. (With its f16 shaders 0.96 against the
# reference; ggml's CPU backend, which quantizes activations to 8 bits in its quantized dot products, as llama.cpp
# does, 0.91 - so the CPU is not the yardstick: the two devices agree 0.89, README.)
MIN_AGREEMENT = 0.98
MAX_REL_DIFF = 0.01
# The grouped route at the file's k is discontinuous: where two group scores nearly tie, any rounding difference
# picks other groups, that token's FFN output moves by ~20 % and the change grows through the later layers (lavapipe
# in f32 against float64, 128 tokens teacher-forced: 0.71 agreement; the CPU 0.12). So at the file's k the route is
# compared one layer's FFN at a time on the same inputs, where a swap would stay in its token; end to end, with every
# group chosen (the whole grouped graph, the dense FFN's values).
MAX_TOKEN_REL_DIFF = 1e-3  # one token's FFN output, max |difference| over max |output| (measured < 1e-5)


def test_the_cpu_is_always_a_device() -> None:
    cpus = [d for d in devices() if d.is_cpu]
    assert len(cpus) == 1 and cpus[0].name == "CPU"
    assert find_device("cpu") == cpus[0] == find_device("CPU") == find_device("")


def test_device_cpu_is_the_default_path(smollm2_path: Path, smollm2_model: Model) -> None:
    model = Model(smollm2_path, n_threads=2, n_ctx=1024, sparse="off", device="cpu")
    assert model.device.is_cpu and model.device.name == "CPU" and smollm2_model.device == model.device
    tokens = model.tokenize("The quick brown fox jumps over the lazy dog")
    np.testing.assert_array_equal(model.eval_logits(tokens), smollm2_model.eval_logits(tokens))


def test_an_unknown_device_is_refused_with_the_list(smollm2_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Model(smollm2_path, device="Vulkan7")
    message = str(info.value)
    assert "unknown device 'Vulkan7'" in message
    for device in devices():
        assert device.name in message
    with pytest.raises(ModelLoadError, match="unknown device 'nope'"):
        NativeModel(str(smollm2_path), device="nope")


def test_cli_device_flag(smollm2_path: Path) -> None:
    run = [sys.executable, "-m", "turbosparse", "run", "-m", str(smollm2_path), "-p", "Hi", "-n", "2", "-t", "1"]
    ok = subprocess.run([*run, "--device", "cpu", "--temp", "0"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*run, "--device", "nope"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown device 'nope'" in bad.stderr


@pytest.mark.skipif(GPU is not None, reason="this ggml has a GPU device")
def test_gpu_without_a_gpu_device_is_refused(smollm2_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no GPU device: this ggml has CPU"):
        Model(smollm2_path, device="gpu")


def tiny_with_predictors(path: Path, group_size: int) -> NativeModel:
    """A tiny dReLU model with predictors, and neuron groups of group_size (0: none)."""
    cfg = TinyConfig(act="drelu", n_ff=256)
    extra: dict = {"turbosparse.predictor_input": "residual_rmsnorm"}
    weights = random_weights(cfg, seed=4, predictor_rank=16)
    if group_size:
        n_groups = cfg.n_ff // group_size
        extra |= {"turbosparse.group_size": group_size, "turbosparse.group_top_k": [2] * cfg.n_layer}
        for i in range(cfg.n_layer):
            fc2 = weights[f"blk.{i}.ffn_pred_fc2.weight"]
            weights[f"blk.{i}.ffn_pred_groups.weight"] = fc2.reshape(n_groups, group_size, -1).sum(axis=1)
    write_gguf(path, cfg, weights, gguf.GGMLQuantizationType.F32, extra_kv=extra, down_layout="both")
    return NativeModel(str(path))


def test_the_library_decides_the_modes_a_gpu_runs(tmp_path: Path) -> None:
    grouped = tiny_with_predictors(tmp_path / "grouped.gguf", 32)
    plain = tiny_with_predictors(tmp_path / "plain.gguf", 0)
    for model in (grouped, plain):  # on the CPU every mode the file allows runs as asked
        assert model.sparse_mode(SparseMode.PREDICTOR) == SparseMode.PREDICTOR
        assert model.sparse_mode(SparseMode.AUTO) == SparseMode.PREDICTOR
        assert model.sparse_mode(SparseMode.OFF, on_cpu=False) == SparseMode.OFF
        with pytest.raises(InvalidArgumentError, match="sparse='exact' runs on the CPU only"):
            model.sparse_mode(SparseMode.EXACT, on_cpu=False)
    assert grouped.sparse_mode(SparseMode.GROUPS, on_cpu=False) == SparseMode.GROUPS
    # predictor means the grouped route on a GPU; auto takes it where the file has groups, else runs dense
    assert grouped.sparse_mode(SparseMode.PREDICTOR, on_cpu=False) == SparseMode.GROUPS
    assert grouped.sparse_mode(SparseMode.AUTO, on_cpu=False) == SparseMode.GROUPS
    assert plain.sparse_mode(SparseMode.AUTO, on_cpu=False) == SparseMode.OFF
    with pytest.raises(InvalidArgumentError, match=r"means the grouped route.*convert the model with --groups"):
        plain.sparse_mode(SparseMode.PREDICTOR, on_cpu=False)
    with pytest.raises(InvalidArgumentError, match="needs neuron groups"):
        plain.sparse_mode(SparseMode.GROUPS, on_cpu=False)


# ---- on a GPU device ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_path() -> Path:
    from turbosparse import default_model

    return Path(default_model())


@pytest.fixture(scope="module")
def grouped_default(default_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model converted again with neuron groups of 32 (its own file has none): the same checkpoint,
    quantization and predictors, k per layer from the file's predicted activation rates."""
    from turbosparse.convert import convert
    from turbosparse.predictor_train.default_model import Recipe

    recipe = Recipe()
    out = tmp_path_factory.mktemp("grouped") / "default-g32.gguf"
    convert(default_path.parent / "bamboo", out, outtype=recipe.outtype, pred_type=recipe.predictors.quant,
            vocab_pre="smollm", down_layout="both", groups=32)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def tokens(default_path: Path, macbeth: str) -> list[int]:
    return Model(default_path, n_ctx=64, sparse="off").tokenize(macbeth[2000:8000])[:N_TOKENS]


def reference(path: Path, tokens: list[int]) -> np.ndarray:
    """Dense float64 logits over the file's stored weights."""
    cfg, weights, _ = read_gguf(path)
    return reference_logits(cfg, weights, tokens)


class Decoder:
    """A sequence's user (Model.evaluate tracks them by weak reference)."""


def compare(ref: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(argmax agreement, max |difference| / max |logit|) of [T, n_vocab] logits against the reference's."""
    agreement = float(np.mean(ref.argmax(axis=1) == logits.argmax(axis=1)))
    return agreement, float(np.abs(ref - logits).max() / np.abs(ref).max())


def on_device(path: Path, sparse: str, device: str) -> Model:
    model = Model(path, n_threads=2, n_ctx=256, sparse=sparse, device=device)  # type: ignore[arg-type]
    if sparse == "groups":  # every group
        model.group_top_k = [model.info.n_ff // model.info.group_size] * model.info.n_layer
    return model


@needs_f32_gpu
@pytest.mark.parametrize("route", ["off", "groups"])
def test_logits_on_the_gpu_match_the_reference(
    route: str, default_path: Path, grouped_default: Path, tokens: list[int]
) -> None:
    """Teacher-forced logits of held-out text, every position as decoding computes it: dense, and the grouped graph
    with every group chosen (top-k, mul_mat_id over the groups, their sum)."""
    path = default_path if route == "off" else grouped_default
    ref = reference(path, tokens)
    gpu = on_device(path, route, "gpu")
    assert gpu.device == GPU
    agreement, rel_diff = compare(ref, gpu.eval_logits(tokens))
    cpu_agreement, cpu_rel_diff = compare(ref, on_device(path, route, "cpu").eval_logits(tokens))
    print(f"{route} against float64: {GPU.name} ({GPU.description}) argmax agreement {agreement:.3f}, max |diff| "
          f"{rel_diff:.4f} of max |logit|; CPU {cpu_agreement:.3f}, {cpu_rel_diff:.4f}")  # fmt: skip
    assert agreement >= MIN_AGREEMENT and rel_diff <= MAX_REL_DIFF


@needs_f32_gpu
def test_the_grouped_ffn_on_the_gpu_matches_the_reference_layer_by_layer(grouped_default: Path) -> None:
    """The file's k groups per token (top-k of the group scores on the device), one layer's FFN on the same inputs
    against float64 over the stored weights: every token alike."""
    native = NativeModel(str(grouped_default), device=GPU.name)
    context = NativeContext(native, n_ctx=64, n_threads=2, n_batch=64, sparse_mode=SparseMode.GROUPS, threshold=None)
    cfg, weights, keys = read_gguf(grouped_default)
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    h = np.random.default_rng(0).standard_normal((64, cfg.n_embd)).astype(np.float32)
    x = h.astype(np.float64)
    for layer in (0, cfg.n_layer // 2, cfg.n_layer - 1):
        gate, up = ffn_gate_up(w, layer, rms_norm(x, w[f"blk.{layer}.ffn_norm.weight"], cfg.rms_eps))
        kept = chosen_groups(w, layer, x, keys["turbosparse.predictor_input"], cfg.rms_eps,
                             context.group_top_k[layer])  # fmt: skip
        ref = ffn_down(w, layer, ffn_activation(cfg.act, gate, up) * kept)
        out = context.eval_ffn(layer, h, dense_ffn=False)
        rel_diff = np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)
        print(f"layer {layer}, k = {context.group_top_k[layer]}: max |diff| {rel_diff.max():.2e} of max |out|")
        assert rel_diff.max() <= MAX_TOKEN_REL_DIFF


@needs_f32_gpu
def test_decoding_token_by_token_on_the_gpu(grouped_default: Path, tokens: list[int]) -> None:
    """One token per step reuses the allocated graph on the scheduler: the steps' logits are the reference's."""
    tokens = tokens[:32]
    ref = reference(grouped_default, tokens)
    gpu = on_device(grouped_default, "groups", "gpu")
    user = Decoder()
    gpu.evaluate(user, tokens[:1])  # the prompt (dense FFN); then one decoded token per call
    steps = np.stack([gpu.evaluate(user, tokens[: i + 1]) for i in range(1, len(tokens))])
    agreement, rel_diff = compare(ref[1:], steps)
    assert agreement >= MIN_AGREEMENT and rel_diff <= MAX_REL_DIFF


@needs_gpu
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"], ids=["plain", "flash-q8_0"])
def test_dense_logits_on_the_gpu_are_llama_cpps_there(smollm2_path: Path, macbeth: str, cache_type: str) -> None:
    """On any GPU device, dense turbosparse computes what llama.cpp computes on that device with every layer
    offloaded: a prompt in one batch and tokens one at a time (on an NVIDIA H200 both were bit for bit equal); also
    with flash attention and Q8_0 K and V (rotated by Walsh-Hadamard matrices, which a GPU multiplies by)."""
    from llama_cpp import LLAMA_SPLIT_MODE_NONE, Llama

    attention = {"flash_attn": cache_type != "f16", "type_k": cache_type, "type_v": cache_type}
    ids = {key: CACHE_TYPES[value] if key != "flash_attn" else value for key, value in attention.items()}
    # every layer on the first GPU, where device="gpu" puts turbosparse's (not split over several GPUs)
    llm = Llama(str(smollm2_path), n_ctx=128, n_batch=128, n_gpu_layers=-1, split_mode=LLAMA_SPLIT_MODE_NONE,
                main_gpu=0, logits_all=True, verbose=False, **ids)  # fmt: skip
    tokens = llm.tokenize(macbeth[:2000].encode(), add_bos=True)[:64]
    llm.eval(tokens)
    llama_batch = np.array(llm.scores[: len(tokens)])
    llm.reset()
    llama_steps = []
    for token in tokens[:16]:
        llm.eval([token])
        llama_steps.append(np.array(llm.scores[llm.n_tokens - 1]))
    model = Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off", device="gpu", **attention)
    batch = model.eval_logits(tokens)
    user = Decoder()
    steps = [np.atleast_2d(model.evaluate(user, tokens[:1]))[-1]]
    steps += [model.evaluate(user, tokens[: i + 1]) for i in range(1, 16)]
    for ours, theirs in ((batch, llama_batch), (np.stack(steps), np.stack(llama_steps))):
        agreement, rel_diff = compare(theirs, ours)
        print(f"{GPU.name}: against llama.cpp argmax agreement {agreement:.3f}, max |diff| {rel_diff:.2e}")
        assert agreement >= MIN_AGREEMENT and rel_diff <= 1e-3


@needs_gpu
def test_row_sparse_modes_on_the_gpu(default_path: Path, grouped_default: Path) -> None:
    assert Model(grouped_default, n_ctx=64, sparse="predictor", device="gpu").sparse_mode == SparseMode.GROUPS
    assert Model(default_path, n_ctx=64, sparse="auto", device="gpu").sparse_mode == SparseMode.OFF
    with pytest.raises(InvalidArgumentError, match="convert the model with --groups"):
        Model(default_path, n_ctx=64, sparse="predictor", device="gpu")
    with pytest.raises(InvalidArgumentError, match="runs on the CPU only"):
        Model(default_path, n_ctx=64, sparse="exact", device="gpu")
    # the engine itself refuses the CPU-only custom ops on another device
    native = NativeModel(str(default_path), device=GPU.name)
    for mode in (SparseMode.PREDICTOR, SparseMode.EXACT):
        with pytest.raises(InvalidArgumentError, match="only dense and the grouped route"):
            NativeContext(native, n_ctx=64, n_threads=1, n_batch=8, sparse_mode=mode, threshold=None)

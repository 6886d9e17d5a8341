"""Llama-family hyperparameters read from an HF config.json, validated, in llama.cpp's terms."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turbosparse.errors import ConvertError

logger = logging.getLogger(__name__)

MAX_LAYERS = 1024  # the engine reads at most this many (TS_MAX_LAYERS in ggml_ops/src/model.c)


@dataclass(frozen=True)
class HParams:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    rope_linear_factor: float | None  # rope_scaling {"type": "linear", "factor": f}
    tied_embeddings: bool
    attention_bias: bool
    mlp_bias: bool  # FFN gate/up/down biases (for dReLU models, the gate and up biases are per-neuron thresholds)
    n_expert: int = 0  # mixture of experts: experts per layer (0: a dense FFN)
    n_expert_used: int = 0  # experts each token is routed to
    # Llama 3's rope_scaling (rope_type "llama3"): per rotated pair, what its frequency is divided by (llama.cpp's
    # rope_freqs.weight, which ggml_rope_ext applies at every position)
    rope_freq_factors: tuple[float, ...] | None = None


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConvertError(f"{path}: no config.json (is {model_dir} a Hugging Face checkpoint?)") from None
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return config


def _positive_number(value: Any, key: str, where: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConvertError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _RopeSettings:
    theta: float
    linear_factor: float | None = None
    llama3: dict[str, Any] | None = None  # Llama 3's scaling object
    key: str = "rope_scaling"  # the config key the scaling came from (for messages)


def _rope_settings(config: dict[str, Any], where: Path) -> _RopeSettings:
    """rope_theta and the scaling; transformers 5 keeps both in `rope_parameters`."""
    params = config.get("rope_parameters") or {}
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    scaling = config.get("rope_scaling") or params
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConvertError(f"{where}: 'rope_parameters' and 'rope_scaling' must be objects")
    theta = _positive_number(config.get("rope_theta", params.get("rope_theta", 10000.0)), "rope_theta", where)
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind in ("default", None):
        return _RopeSettings(theta)
    if kind == "linear":
        return _RopeSettings(theta, linear_factor=_positive_number(scaling.get("factor"), f"{key}.factor", where))
    if kind == "llama3":
        # transformers' fallback for the original context: the top-level key, then max_position_embeddings
        original = config.get("original_max_position_embeddings", config.get("max_position_embeddings", 8192))
        return _RopeSettings(theta, llama3={"original_max_position_embeddings": original, **scaling}, key=key)
    raise ConvertError(f"{where}: rope scaling type {kind!r} is not supported (linear and llama3 are)")


def llama3_freq_factors(
    scaling: dict[str, Any], theta: float, head_dim: int, where: Path, key: str = "rope_scaling"
) -> tuple[float, ...]:
    """Llama 3's RoPE frequency scaling (Meta's reference, transformers' rope_type "llama3") as one divisor per
    rotated pair: pairs whose wavelength is below original_max_position_embeddings / high_freq_factor keep their
    frequency, those above original / low_freq_factor turn `factor` times slower, those between are interpolated
    in 1 / divisor. llama.cpp stores the divisors as rope_freqs.weight. key: the config key scaling came from."""

    def number(field: str, default: float) -> float:
        return _positive_number(scaling.get(field, default), f"{key}.{field}", where)

    factor, low, high = number("factor", 8.0), number("low_freq_factor", 1.0), number("high_freq_factor", 4.0)
    original = number("original_max_position_embeddings", 8192)
    if high <= low:
        raise ConvertError(f"{where}: {key}.high_freq_factor {high} must exceed low_freq_factor {low}")
    divisors = []
    for i in range(head_dim // 2):
        wavelength = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelength < original / high:
            divisors.append(1.0)
        elif wavelength > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            divisors.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return tuple(divisors)


def llama_hparams(config: dict[str, Any], where: Path) -> HParams:
    """HParams of a Llama / Mistral layout config (bamboo and ReLU-Llama configs carry the same fields)."""

    def need(key: str, most: int = 2**31 - 1) -> int:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= most:
            raise ConvertError(f"{where}: '{key}' must be an integer in 1..{most}, got {value!r}")
        return value

    def optional(key: str, default: int) -> int:
        return default if config.get(key) is None else need(key)

    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    n_head_kv = optional("num_key_value_heads", n_head)
    head_dim = optional("head_dim", max(1, n_embd // n_head))
    if n_head % n_head_kv != 0:
        raise ConvertError(
            f"{where}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
        )
    if head_dim % 2 != 0:
        raise ConvertError(f"{where}: head_dim {head_dim} must be even for RoPE")
    rope = _rope_settings(config, where)
    window, n_ctx = config.get("sliding_window"), optional("max_position_embeddings", 4096)
    if isinstance(window, int) and 0 < window < n_ctx:
        logger.warning("%s: sliding_window %d is not stored; attention spans the whole context", where, window)
    return HParams(
        n_layer=need("num_hidden_layers", MAX_LAYERS),
        n_embd=n_embd,
        n_ff=need("intermediate_size"),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ctx=n_ctx,
        vocab_size=need("vocab_size"),
        rope_theta=rope.theta,
        rms_eps=_positive_number(config.get("rms_norm_eps", 1e-6), "rms_norm_eps", where),
        rope_linear_factor=rope.linear_factor,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        rope_freq_factors=None
        if rope.llama3 is None
        else llama3_freq_factors(rope.llama3, rope.theta, head_dim, where, rope.key),
    )

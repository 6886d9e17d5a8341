"""Llama-family hyperparameters read from an HF config.json, validated, in llama.cpp's terms."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConvertError

logger = logging.getLogger(__name__)


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


def _rope_settings(config: dict[str, Any], where: Path) -> tuple[float, float | None]:
    """rope_theta and the linear scaling factor; transformers 5 keeps both in `rope_parameters`."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind in ("default", None):
        return float(theta), None
    if kind == "linear":
        return float(theta), float(scaling["factor"])
    raise ConvertError(f"{where}: rope scaling type '{kind}' is not supported (only linear)")


def llama_hparams(config: dict[str, Any], where: Path) -> HParams:
    """HParams of a Llama / Mistral layout config (bamboo and ReLU-Llama configs carry the same fields)."""

    def need(key: str) -> int:
        value = config.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ConvertError(f"{where}: '{key}' must be a positive integer, got {value!r}")
        return value

    n_embd, n_head = need("hidden_size"), need("num_attention_heads")
    n_head_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or n_embd // n_head
    if n_head % n_head_kv != 0:
        raise ConvertError(
            f"{where}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}"
        )
    if head_dim % 2 != 0:
        raise ConvertError(f"{where}: head_dim {head_dim} must be even for RoPE")
    theta, linear = _rope_settings(config, where)
    window, n_ctx = config.get("sliding_window"), int(config.get("max_position_embeddings") or 4096)
    if isinstance(window, int) and 0 < window < n_ctx:
        logger.warning("%s: sliding_window %d is not stored; attention spans the whole context", where, window)
    return HParams(
        n_layer=need("num_hidden_layers"),
        n_embd=n_embd,
        n_ff=need("intermediate_size"),
        n_head=n_head,
        n_head_kv=int(n_head_kv),
        head_dim=int(head_dim),
        n_ctx=n_ctx,
        vocab_size=need("vocab_size"),
        rope_theta=theta,
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_linear_factor=linear,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
    )

"""Running a Llama-family torch model one decoder layer at a time (attention half and FFN half apart)."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM


def position_embeddings(model: LlamaForCausalLM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (cos, sin) for sequences x [batch, seq, hidden] starting at position 0."""
    pos = torch.arange(x.shape[1], device=x.device).unsqueeze(0).expand(x.shape[0], -1)
    return model.model.rotary_emb(x, pos)


def causal_mask(x: torch.Tensor) -> torch.Tensor:
    """Additive causal mask [1, 1, seq, seq] (0 on and below the diagonal, -inf above), for any attention
    implementation."""
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
    return mask[None, None]


def attention_half(layer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """h = x + attn(attn_norm(x)): the residual the FFN norm reads."""
    out, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), position_embeddings=rope, attention_mask=mask)
    return x + out


def embed(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    return model.model.embed_tokens(ids)

"""Torch models for the HF checkpoint layouts turbosparse reads and writes (the `train` extra).

- plain Llama / Mistral: transformers' LlamaForCausalLM as is (SwiGLU);
- ReLU-Llama / ProSparse: LlamaForCausalLM with hidden_act "relu" (ReGLU: relu(gate) * up);
- TurboSparse-Mistral "bamboo": config.json with model_type "bamboo", Llama tensor names, dReLU FFN
  (relu(gate) * relu(up)) and, optionally, an activation predictor per layer embedded as
  model.layers.{i}.mlp.predictor.fc1.weight [rank, hidden] and .fc2.weight [intermediate, rank].

`load_causal_lm` builds the right torch model for a checkpoint directory; `DReluMLP` is the dReLU FFN.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from turbosparse.constants import (
    HF_BAMBOO_ARCHITECTURE,
    HF_BAMBOO_MODEL_TYPE,
    HF_TURBOSPARSE_MIXTRAL_ARCHITECTURE,
    HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE,
    OTHER_DENSE_FAMILIES,
    SWIGLU_EXPERTS_DENSE_ONLY,
)
from turbosparse.convert.arch.llama import is_llama_layout
from turbosparse.convert.hparams import read_config
from turbosparse.errors import TrainingError


class Predictor(nn.Module):
    """logits = fc2(relu(fc1(h))), no biases; neuron j predicted active when logits[j] >= threshold."""

    def __init__(self, hidden: int, rank: int, intermediate: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, rank, bias=False)
        self.fc2 = nn.Linear(rank, intermediate, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(h)))


class DReluMLP(nn.Module):
    """down(relu(gate(x)) * relu(up(x))), with an optional embedded predictor (not used in forward)."""

    def __init__(self, hidden: int, intermediate: int, predictor_rank: int = 0, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)
        self.predictor = Predictor(hidden, predictor_rank, intermediate) if predictor_rank > 0 else None

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The intermediate activation; its zeros are the neurons sparse decoding skips."""
        return torch.relu(self.gate_proj(x)) * torch.relu(self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation(x))


def is_bamboo(config: dict) -> bool:
    return config.get("model_type") == HF_BAMBOO_MODEL_TYPE or HF_BAMBOO_ARCHITECTURE in config.get("architectures", [])


def is_moe_checkpoint(config: dict) -> bool:
    """A TurboSparse-Mixtral checkpoint (dReLU experts, predictors per expert)."""
    return config.get("model_type") == HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE or HF_TURBOSPARSE_MIXTRAL_ARCHITECTURE in (
        config.get("architectures") or ()
    )


def has_experts(config: dict) -> bool:
    """A mixture of experts: Mixtral's num_local_experts, Qwen-MoE's num_experts."""
    return bool(config.get("num_local_experts") or config.get("num_experts"))


def llama_config(config: dict) -> LlamaConfig:
    """A LlamaConfig for a Llama-layout config dict (bamboo configs carry the same fields)."""
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "auto_map")}
    return LlamaConfig(**fields)


def predictor_ranks(state_dict: dict[str, torch.Tensor], n_layer: int) -> list[int]:
    return [
        int(state_dict[f"model.layers.{i}.mlp.predictor.fc1.weight"].shape[0])
        if f"model.layers.{i}.mlp.predictor.fc1.weight" in state_dict
        else 0
        for i in range(n_layer)
    ]


def to_drelu(model: LlamaForCausalLM, ranks: list[int] | None = None) -> LlamaForCausalLM:
    """Replaces every layer's MLP by a DReluMLP holding the same weights (in place)."""
    cfg = model.config
    for i, layer in enumerate(model.model.layers):
        old = layer.mlp
        new = DReluMLP(cfg.hidden_size, cfg.intermediate_size, ranks[i] if ranks else 0, bias=cfg.mlp_bias)
        new.to(dtype=old.gate_proj.weight.dtype)
        new.gate_proj.load_state_dict(old.gate_proj.state_dict())
        new.up_proj.load_state_dict(old.up_proj.state_dict())
        new.down_proj.load_state_dict(old.down_proj.state_dict())
        layer.mlp = new
    return model


def load_causal_lm(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """The torch model of a Llama / ReLU-Llama / bamboo checkpoint directory (safetensors or .bin)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if not is_bamboo(config):
        if has_experts(config):
            raise TrainingError(  # loaded as Llama, the experts would be unexpected tensors
                f"{model_dir / 'config.json'}: relufy and imatrix take dense Llama-family models; "
                + (
                    "a TurboSparse-Mixtral's dReLU experts take train-predictors"
                    if is_moe_checkpoint(config)
                    else SWIGLU_EXPERTS_DENSE_ONLY
                )
            )
        if not is_llama_layout(config):
            kind = config.get("model_type"), config.get("architectures")
            raise TrainingError(  # loaded as Llama, a Qwen2's attention biases would be dropped without a word
                f"{model_dir / 'config.json'}: model_type {kind[0]!r}, architectures {kind[1]!r}: relufy, imatrix and "
                "train-predictors take Llama-family models (Llama, Mistral, SmolLM, ReLU-Llama, bamboo); a dense GGUF "
                f"of another architecture ({OTHER_DENSE_FAMILIES}) decodes sparsely without training through "
                "`turbosparse calibrate`"
            )
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype)
    from transformers.modeling_utils import load_state_dict

    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_state_dict(str(f)))
    cfg = llama_config(config)
    model = LlamaForCausalLM(cfg).to(dtype)
    to_drelu(model, predictor_ranks(state, cfg.num_hidden_layers))
    if cfg.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise TrainingError(f"{model_dir}: tensors missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()

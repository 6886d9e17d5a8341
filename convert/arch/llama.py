"""Llama-layout checkpoints (Llama, Mistral and the ReLU / dReLU models built on them) and the plain dense class.

HF tensor names are mapped to llama.cpp's by gguf-py's own name map (MODEL_ARCH.LLAMA); the q / k projections
are permuted for ggml's RoPE; the down matrix is written standard, transposed or both.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np

from turbosparse.constants import DOWN_LAYOUTS, TENSOR_FFN_DOWN, TENSOR_FFN_DOWN_T
from turbosparse.convert.arch.base import (
    ROLE_BIAS,
    ROLE_EMBD,
    ROLE_MATRIX,
    ROLE_NORM,
    ROLE_OUTPUT,
    Architecture,
    TensorSpec,
    register,
)
from turbosparse.convert.hparams import HParams, llama_hparams
from turbosparse.errors import ConvertError

LLAMA_MODEL_TYPES = ("llama", "mistral")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotates the two halves of each head (x[i], x[i + d/2]); ggml's normal RoPE rotates neighbours
    (x[2i], x[2i+1]). Reorders each head's rows (or bias entries) so that row 2i is HF row i and row 2i+1 is
    HF row i + d/2."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return np.ascontiguousarray(w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def is_llama_layout(config: dict[str, Any]) -> bool:
    return config.get("model_type") in LLAMA_MODEL_TYPES or any(
        a in LLAMA_ARCHITECTURES for a in config.get("architectures") or ()
    )


class LlamaFamily(Architecture):
    """Shared mapping of the Llama layout; subclasses add the FFN activation and predictors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hp = llama_hparams(self.config, self.model_dir / "config.json")
        layout = self.down_layout()
        if layout not in DOWN_LAYOUTS:
            raise ConvertError(f"down layout '{layout}' is unknown (expected one of {', '.join(DOWN_LAYOUTS)})")

    def hparams(self) -> HParams:
        return self._hp

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF name -> numpy shape of every backbone tensor the checkpoint must hold (ffn_down standard)."""
        hp = self._hp
        d, q, kv = hp.n_embd, hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (hp.vocab_size, d), "output_norm.weight": (d,)}
        if not hp.tied_embeddings:
            shapes["output.weight"] = (hp.vocab_size, d)
        for i in range(hp.n_layer):
            b = f"blk.{i}."
            shapes |= {
                b + "attn_norm.weight": (d,),
                b + "attn_q.weight": (q, d),
                b + "attn_k.weight": (kv, d),
                b + "attn_v.weight": (kv, d),
                b + "attn_output.weight": (d, q),
                b + "ffn_norm.weight": (d,),
                b + "ffn_gate.weight": (hp.n_ff, d),
                b + "ffn_up.weight": (hp.n_ff, d),
                b + "ffn_down.weight": (d, hp.n_ff),
            }
            if hp.attention_bias:
                # transformers' Llama puts attention_bias on o_proj too (llama.cpp reads attn_output.bias)
                shapes |= {b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)}
                shapes[b + "attn_output.bias"] = (d,)
            if hp.mlp_bias:
                shapes |= {b + "ffn_gate.bias": (hp.n_ff,), b + "ffn_up.bias": (hp.n_ff,), b + "ffn_down.bias": (d,)}
        return shapes

    def extra_tensors(self, hf_name: str) -> list[TensorSpec] | None:
        """Specs for a source tensor the Llama name map does not know (predictors); None: not ours."""
        return None

    def tensors(self) -> list[TensorSpec]:
        hp = self._hp
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp.n_layer)
        expected = self.expected_shapes()
        specs: list[TensorSpec] = []
        found: set[str] = set()
        for hf_name in self.source.names():
            if hf_name.endswith(_IGNORED_SUFFIXES):
                continue
            where = f"{self.source.where(hf_name)}: tensor '{hf_name}'"
            extra = self.extra_tensors(hf_name)
            if extra is not None:
                specs.extend(extra)
                continue
            name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name == "output.weight" and hp.tied_embeddings:
                continue  # tied: the head reuses token_embd, as llama.cpp writes it
            if name is None or name not in expected:
                raise ConvertError(f"{where} is not part of a {self.name} checkpoint (unexpected tensor)")
            shape = self.source.shape(hf_name)
            if shape != expected[name]:
                raise ConvertError(f"{where} has shape {list(shape)}, expected {list(expected[name])}")
            found.add(name)
            specs.extend(self._backbone_specs(name, hf_name, shape, where))
        missing = [n for n in expected if n not in found]
        if missing:
            raise ConvertError(f"{self.model_dir}: missing tensor '{missing[0]}' ({len(missing)} missing in all)")
        if hp.rope_freq_factors is not None:  # Llama 3's RoPE scaling, as llama.cpp writes it
            factors = np.array(hp.rope_freq_factors, dtype=np.float32)
            where = f"{self.model_dir / 'config.json'}: rope_scaling"
            specs.append(TensorSpec(ROPE_FREQS, factors.shape, ROLE_NORM, lambda: factors, where))
        order = {n: k for k, n in enumerate(expected)}
        specs.sort(key=lambda s: _tensor_order(s.name, order))
        return specs

    def _backbone_specs(self, name: str, hf_name: str, shape: tuple[int, ...], where: str) -> list[TensorSpec]:
        hp, load = self._hp, self.source.load
        role = ROLE_MATRIX
        if name == "token_embd.weight":
            role = ROLE_EMBD
        elif name == "output.weight":
            role = ROLE_OUTPUT
        elif len(shape) == 1:
            role = ROLE_BIAS if name.endswith(".bias") else ROLE_NORM
        if ".attn_q." in name or ".attn_k." in name:
            heads = hp.n_head if ".attn_q." in name else hp.n_head_kv
            return [TensorSpec(name, shape, role, lambda: rope_permute(load(hf_name), heads), where)]
        if name.endswith(".ffn_down.weight"):
            layer = int(name.split(".")[1])
            layout = self.down_layout()
            specs = []
            if layout in ("standard", "both"):
                specs.append(TensorSpec(TENSOR_FFN_DOWN.format(layer), shape, role, lambda: load(hf_name), where))
            if layout in ("transposed", "both"):
                specs.append(
                    TensorSpec(
                        TENSOR_FFN_DOWN_T.format(layer),
                        (shape[1], shape[0]),
                        role,
                        lambda: np.ascontiguousarray(load(hf_name).T),
                        where,
                    )
                )
            return specs
        return [TensorSpec(name, shape, role, lambda: load(hf_name), where)]


def _tensor_order(name: str, order: dict[str, int]) -> tuple[int, int, str]:
    """Global tensors first, then layer by layer (backbone order, then the rest by name)."""
    parts = name.split(".")
    layer = int(parts[1]) if parts[0] == "blk" else -1
    standard = name.replace(".ffn_down_t.", ".ffn_down.")
    return layer, order.get(standard, len(order)), name


@register
class Llama(LlamaFamily):
    """Plain dense Llama / Mistral (SwiGLU): no predictors, standard down layout."""

    name = "llama"
    ffn_activation = "swiglu"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return is_llama_layout(config) and config.get("hidden_act", "silu") == "silu" and "turbosparse" not in config

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.predictors is not None:
            raise ConvertError(
                f"{self.model_dir / 'config.json'}: predictors need a ReLU-family FFN (hidden_act relu or dReLU); "
                f"this model's hidden_act is silu"
            )

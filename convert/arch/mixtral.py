"""Mixtral-layout checkpoints: plain Mixtral (SwiGLU experts) and TurboSparse-Mixtral (dReLU experts, a predictor
per expert).

HF layout, per layer L and expert E (the Llama layout otherwise):
    model.layers.L.block_sparse_moe.gate.weight                     [n_expert, hidden]  router
    model.layers.L.block_sparse_moe.experts.E.w1 / w3 / w2.weight   gate [n_ff, hidden], up, down [hidden, n_ff]
    model.layers.L.block_sparse_moe.experts.E.predictor.fc1.weight  [rank, hidden]      (TurboSparse-Mixtral)
    model.layers.L.block_sparse_moe.experts.E.predictor.fc2.weight  [n_ff, rank]
GGUF: llama.cpp's router `ffn_gate_inp` (F32) and stacked experts `ffn_{gate,up,down}_exps`, our transposed downs
`ffn_down_t_exps` and predictors `ffn_pred_fc{1,2}_exps` stacked the same way (numpy [n_expert, rows, cols]).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from turbosparse.constants import (
    HF_MIXTRAL_ARCHITECTURE,
    HF_MIXTRAL_MODEL_TYPE,
    HF_TURBOSPARSE_MIXTRAL_ARCHITECTURE,
    HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE,
    TENSOR_FFN_DOWN_EXPS,
    TENSOR_FFN_DOWN_T_EXPS,
    TENSOR_FFN_GATE_EXPS,
    TENSOR_FFN_GATE_INP,
    TENSOR_FFN_UP_EXPS,
    TENSOR_PRED_FC1_EXPS,
    TENSOR_PRED_FC2_EXPS,
)
from turbosparse.convert.arch.base import ROLE_MATRIX, ROLE_PREDICTOR, ROLE_ROUTER, TensorSpec, register
from turbosparse.convert.arch.llama import LlamaFamily
from turbosparse.convert.arch.sparse import ReluFamily
from turbosparse.convert.hparams import HParams
from turbosparse.errors import ConvertError

_MOE = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.(.+)")
_EXPERT = re.compile(r"experts\.(\d+)\.(w1|w2|w3|predictor\.fc1|predictor\.fc2)\.weight")


class MixtureOfExperts(LlamaFamily):
    """The Llama layout with a mixture-of-experts FFN: router, experts (and their predictors) stacked per layer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        where = self.model_dir / "config.json"
        n_expert, n_used = self.config.get("num_local_experts"), self.config.get("num_experts_per_tok")
        if not isinstance(n_expert, int) or n_expert <= 0:
            raise ConvertError(f"{where}: 'num_local_experts' must be a positive integer, got {n_expert!r}")
        if not isinstance(n_used, int) or not 0 < n_used <= n_expert:
            raise ConvertError(
                f"{where}: 'num_experts_per_tok' must be an integer in 1..{n_expert} (num_local_experts), "
                f"got {n_used!r}"
            )
        self._hp = dataclasses.replace(self._hp, n_expert=n_expert, n_expert_used=n_used)

    def hparams(self) -> HParams:
        return self._hp

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        dense_ffn = (".ffn_gate.", ".ffn_up.", ".ffn_down.")
        return {n: s for n, s in super().expected_shapes().items() if not any(part in n for part in dense_ffn)}

    def extra_tensors(self, hf_name: str) -> list[TensorSpec] | None:
        return [] if _MOE.fullmatch(hf_name) else None  # stacked by moe_parts

    def moe_parts(self) -> dict[tuple[int, str], dict[int, str]]:
        """(layer, part) -> expert -> HF name, part being gate, w1, w2, w3, predictor.fc1, predictor.fc2 (gate: the
        router, under expert 0)."""
        parts: dict[tuple[int, str], dict[int, str]] = {}
        for hf_name in self.source.names():
            m = _MOE.fullmatch(hf_name)
            if m is None:
                continue
            layer, rest = int(m.group(1)), m.group(2)
            e = _EXPERT.fullmatch(rest)
            if rest == "gate.weight":
                parts.setdefault((layer, "gate"), {})[0] = hf_name
            elif e is not None:
                parts.setdefault((layer, e.group(2)), {})[int(e.group(1))] = hf_name
            else:
                raise ConvertError(
                    f"{self.source.where(hf_name)}: tensor '{hf_name}' is not part of a {self.name} checkpoint"
                )
        return parts

    def _stack(
        self, names: dict[int, str], rows: int, cols: int, part: str, layer: int
    ) -> tuple[tuple[int, ...], Callable[[], np.ndarray], str]:
        """The experts' matrices of one part as one [n_expert, rows, cols] stack, loaded on demand; checks that every
        expert is there with that shape."""
        hp = self._hp
        prefix = f"model.layers.{layer}.block_sparse_moe.experts"
        for e in range(hp.n_expert):
            if e not in names:
                raise ConvertError(f"{self.model_dir}: missing tensor '{prefix}.{e}.{part}.weight'")
        extra = sorted(set(names) - set(range(hp.n_expert)))
        if extra:
            raise ConvertError(
                f"{self.source.where(names[extra[0]])}: tensor '{names[extra[0]]}' is expert {extra[0]}, but "
                f"num_local_experts is {hp.n_expert}"
            )
        size_axis = {"predictor.fc1": 1, "predictor.fc2": 0}.get(part)  # a predictor's axis of the model's own size
        for e in range(hp.n_expert):
            shape = self.source.shape(names[e])
            if shape != (rows, cols):
                rank_only = size_axis is not None and len(shape) == 2 and shape[size_axis] == (rows, cols)[size_axis]
                raise ConvertError(
                    f"{self.source.where(names[e])}: tensor '{names[e]}' has shape {list(shape)}, expected "
                    f"{[rows, cols]}" + (" (predictor rank mismatch between experts)" if rank_only else "")
                )
        load = self.source.load

        def stacked() -> np.ndarray:
            return np.stack([load(names[e]) for e in range(hp.n_expert)])

        return (hp.n_expert, rows, cols), stacked, f"{self.source.where(names[0])}: tensor '{names[0]}' (and experts)"

    def tensors(self) -> list[TensorSpec]:
        specs = super().tensors()
        hp = self._hp
        parts = self.moe_parts()
        layout = self.down_layout()
        for layer in range(hp.n_layer):
            router = parts.get((layer, "gate"), {}).get(0)
            if router is None:
                missing = f"model.layers.{layer}.block_sparse_moe.gate.weight"
                raise ConvertError(f"{self.model_dir}: missing tensor '{missing}'")
            shape = self.source.shape(router)
            if shape != (hp.n_expert, hp.n_embd):
                raise ConvertError(
                    f"{self.source.where(router)}: tensor '{router}' has shape {list(shape)}, expected "
                    f"[{hp.n_expert}, {hp.n_embd}] (num_local_experts, hidden_size)"
                )
            specs.append(
                TensorSpec(
                    TENSOR_FFN_GATE_INP.format(layer),
                    shape,
                    ROLE_ROUTER,
                    lambda router=router: self.source.load(router),
                    f"{self.source.where(router)}: tensor '{router}'",
                )
            )
            for part, name in (("w1", TENSOR_FFN_GATE_EXPS), ("w3", TENSOR_FFN_UP_EXPS)):
                shape, load, origin = self._stack(parts.get((layer, part), {}), hp.n_ff, hp.n_embd, part, layer)
                specs.append(TensorSpec(name.format(layer), shape, ROLE_MATRIX, load, origin))
            shape, load, origin = self._stack(parts.get((layer, "w2"), {}), hp.n_embd, hp.n_ff, "w2", layer)
            if layout in ("standard", "both"):
                specs.append(TensorSpec(TENSOR_FFN_DOWN_EXPS.format(layer), shape, ROLE_MATRIX, load, origin))
            if layout in ("transposed", "both"):
                specs.append(
                    TensorSpec(
                        TENSOR_FFN_DOWN_T_EXPS.format(layer),
                        (hp.n_expert, hp.n_ff, hp.n_embd),
                        ROLE_MATRIX,
                        lambda load=load: np.ascontiguousarray(load().transpose(0, 2, 1)),
                        origin,
                    )
                )
        return specs


@register
class Mixtral(MixtureOfExperts):
    """Plain Mixtral (SwiGLU experts): llama.cpp runs this conversion as it runs its own."""

    name = "mixtral"
    ffn_activation = "swiglu"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        is_mixtral = config.get("model_type") == HF_MIXTRAL_MODEL_TYPE or HF_MIXTRAL_ARCHITECTURE in (
            config.get("architectures") or ()
        )
        return is_mixtral and config.get("hidden_act", "silu") == "silu"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.predictors is not None:
            raise ConvertError(f"{self.model_dir}: --predictors is for relu-llama checkpoints")

    def moe_parts(self) -> dict[tuple[int, str], dict[int, str]]:
        parts = super().moe_parts()
        for (layer, part), names in parts.items():
            if part.startswith("predictor"):
                raise ConvertError(
                    f"{self.model_dir}: tensor '{names[min(names)]}': a SwiGLU Mixtral has no predictors "
                    f"(layer {layer}; a TurboSparse-Mixtral config.json says model_type "
                    f"'{HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE}')"
                )
        return parts


@register
class TurboSparseMixtral(MixtureOfExperts, ReluFamily):
    """TurboSparse-Mixtral: dReLU experts relu(w1 x) * relu(w3 x), down w2, a predictor per expert."""

    name = "turbosparse-mixtral"
    ffn_activation = "drelu"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return config.get("model_type") == HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE or HF_TURBOSPARSE_MIXTRAL_ARCHITECTURE in (
            config.get("architectures") or ()
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        act = self.config.get("hidden_act", "relu")
        if act != "relu":
            raise ConvertError(
                f"{self.model_dir / 'config.json'}: hidden_act '{act}': TurboSparse-Mixtral experts are dReLU "
                f"(hidden_act relu)"
            )
        if self.options.predictors is not None:
            raise ConvertError(f"{self.model_dir}: a TurboSparse-Mixtral checkpoint embeds its predictors per expert")

    def tensors(self) -> list[TensorSpec]:
        specs = super().tensors()  # backbone and experts; ReluFamily finds no per-layer predictors
        hp = self._hp
        parts = self.moe_parts()
        ranks = [0] * hp.n_layer
        for layer in range(hp.n_layer):
            fc1, fc2 = parts.get((layer, "predictor.fc1"), {}), parts.get((layer, "predictor.fc2"), {})
            if not fc1 and not fc2:
                continue
            rank = self.source.shape(fc1[min(fc1)])[0] if fc1 else 0
            shape1, load1, origin1 = self._stack(fc1, rank, hp.n_embd, "predictor.fc1", layer)
            rank = shape1[1]
            shape2, load2, origin2 = self._stack(fc2, hp.n_ff, rank, "predictor.fc2", layer)
            ranks[layer] = rank
            specs.append(TensorSpec(TENSOR_PRED_FC1_EXPS.format(layer), shape1, ROLE_PREDICTOR, load1, origin1))
            specs.append(TensorSpec(TENSOR_PRED_FC2_EXPS.format(layer), shape2, ROLE_PREDICTOR, load2, origin2))
        self._ranks = ranks
        specs.sort(key=lambda s: int(s.name.split(".")[1]) if s.name.startswith("blk.") else -1)
        return specs

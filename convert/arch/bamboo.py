"""TurboSparse-Mistral ("bamboo"): Llama tensor names, dReLU FFN, predictors embedded in the checkpoint as
model.layers.{i}.mlp.predictor.fc1.weight [rank, hidden] and .fc2.weight [intermediate, rank]."""

from __future__ import annotations

import re
from typing import Any

from turbosparse.constants import HF_BAMBOO_ARCHITECTURE, HF_BAMBOO_MODEL_TYPE
from turbosparse.convert.arch.base import TensorSpec, register
from turbosparse.convert.arch.sparse import PredictorPart, ReluFamily
from turbosparse.errors import ConvertError

_PREDICTOR = re.compile(r"model\.layers\.(\d+)\.mlp\.predictor\.(fc1|fc2)\.weight")


@register
class Bamboo(ReluFamily):
    name = "bamboo"
    ffn_activation = "drelu"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return config.get("model_type") == HF_BAMBOO_MODEL_TYPE or HF_BAMBOO_ARCHITECTURE in (
            config.get("architectures") or ()
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.predictors is not None:
            raise ConvertError(
                f"{self.model_dir}: a bamboo checkpoint embeds its predictors; --predictors is for relu-llama"
            )

    def extra_tensors(self, hf_name: str) -> list[TensorSpec] | None:
        return [] if _PREDICTOR.fullmatch(hf_name) else None  # collected by predictor_parts

    def predictor_parts(self) -> dict[int, tuple[PredictorPart, PredictorPart]]:
        found: dict[int, dict[str, PredictorPart]] = {}
        for hf_name in self.source.names():
            m = _PREDICTOR.fullmatch(hf_name)
            if m is None:
                continue
            part = PredictorPart(
                self.source.shape(hf_name),
                lambda hf_name=hf_name: self.source.load(hf_name),
                f"{self.source.where(hf_name)}: tensor '{hf_name}'",
            )
            found.setdefault(int(m.group(1)), {})[m.group(2)] = part
        parts = {}
        for layer, pair in found.items():
            if set(pair) != {"fc1", "fc2"}:
                lacking = "fc2" if "fc1" in pair else "fc1"
                raise ConvertError(
                    f"{self.model_dir}: missing tensor 'model.layers.{layer}.mlp.predictor.{lacking}.weight'"
                )
            parts[layer] = (pair["fc1"], pair["fc2"])
        return parts

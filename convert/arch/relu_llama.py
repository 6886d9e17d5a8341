"""ReLU-family Llama checkpoints (ReluLLaMA, ProSparse, dReLU Llamas) with PowerInfer-style predictors.

The FFN is reglu (hidden_act "relu") or drelu (hidden_act "drelu", or config.json's
"turbosparse": {"ffn_activation": "drelu"}). Predictors, when given (`--predictors DIR`), live in a directory
of `model_{i}.pt` torch state dicts {"fc1.weight" [rank, hidden], "fc2.weight" [intermediate, rank]} with a
`config.json` holding `sparse_threshold` (and, as `train-predictors --format powerinfer` writes them, the
predictors' input and measured rates, which take precedence over the checkpoint's `turbosparse` block).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turbosparse.convert.arch.base import register
from turbosparse.convert.arch.llama import is_llama_layout
from turbosparse.convert.arch.sparse import CONFIG_KEY, PredictorPart, ReluFamily, as_number
from turbosparse.convert.source import torch_load
from turbosparse.errors import ConvertError, extra_install

RELU_ACTS = ("relu", "drelu")


@register
class ReluLlama(ReluFamily):
    name = "relu-llama"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return is_llama_layout(config) and (config.get("hidden_act") in RELU_ACTS or CONFIG_KEY in config)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        act = self.sparse_config().get("ffn_activation")
        hidden_act = self.config.get("hidden_act", "silu")
        if act is None:
            act = {"relu": "reglu", "drelu": "drelu"}.get(hidden_act)
        if act not in ("reglu", "drelu"):
            raise ConvertError(
                f"{self.model_dir / 'config.json'}: cannot tell the FFN activation (hidden_act {hidden_act!r}, "
                f"{CONFIG_KEY}.ffn_activation {act!r}); expected relu/reglu or drelu"
            )
        self.ffn_activation = act
        self._pred_dir = self.options.predictors
        self._pred_config: dict[str, Any] = {}
        if self._pred_dir is not None:
            cfg = Path(self._pred_dir) / "config.json"
            if cfg.is_file():
                try:
                    self._pred_config = json.loads(cfg.read_text())
                except (OSError, ValueError) as exc:
                    raise ConvertError(f"{cfg}: unreadable: {exc}") from None
                if not isinstance(self._pred_config, dict):
                    raise ConvertError(f"{cfg}: expected a JSON object")

    def default_threshold(self) -> float | None:
        value = self._pred_config.get("sparse_threshold")
        number = None if value is None else as_number(value)
        if value is not None and number is None:
            raise ConvertError(f"{Path(self._pred_dir or '') / 'config.json'}: 'sparse_threshold' must be a number, "
                               f"got {value!r}")  # fmt: skip
        return number

    def predictor_config(self) -> tuple[dict[str, Any], Path | None]:
        if self._pred_dir is None:
            return {}, None
        return self._pred_config, Path(self._pred_dir) / "config.json"

    def predictor_parts(self) -> dict[int, tuple[PredictorPart, PredictorPart]]:
        if self._pred_dir is None:
            return {}
        try:
            import torch
        except ImportError:
            raise ConvertError(
                f"{self._pred_dir}: PowerInfer predictor files (model_N.pt) need torch ({extra_install('train')})"
            ) from None
        parts = {}
        for layer in range(self.hparams().n_layer):
            file = Path(self._pred_dir) / f"model_{layer}.pt"
            if not file.is_file():
                raise ConvertError(f"{file}: predictor file for layer {layer} is missing")
            try:
                state = torch_load(torch, file)
            except Exception as exc:  # torch raises many kinds on a bad pickle
                raise ConvertError(f"{file}: not a readable predictor state dict: {exc}") from None
            pair = []
            for key in ("fc1.weight", "fc2.weight"):
                tensor = state.get(key) if isinstance(state, dict) else None
                if tensor is None:
                    raise ConvertError(f"{file}: missing tensor '{key}'")
                pair.append(
                    PredictorPart(
                        tuple(tensor.shape),
                        lambda tensor=tensor: tensor.to(torch.float32).numpy(),
                        f"{file}: tensor '{key}'",
                    )
                )
            parts[layer] = (pair[0], pair[1])
        return parts

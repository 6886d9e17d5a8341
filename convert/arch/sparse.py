"""What ReLU-family classes (bamboo, relu-llama) share: predictors, their metadata, the transposed down default.

Our HF-side convention (written by the predictor trainer): config.json may hold
    "turbosparse": {"activation_rates": [...n_layer], "predicted_rates": [...n_layer],
                    "predictor_threshold": t, "predictor_input": "residual" | "residual_rmsnorm",
                    "ffn_activation": "drelu" | "reglu"}
every field optional.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turbosparse.constants import (
    KEY_ACTIVATION_RATES,
    KEY_PREDICTED_RATES,
    KEY_PREDICTOR_INPUT,
    KEY_PREDICTOR_RANKS,
    KEY_PREDICTOR_THRESHOLD,
    PREDICTOR_INPUTS,
    TENSOR_PRED_FC1,
    TENSOR_PRED_FC2,
)
from turbosparse.convert.arch.base import ROLE_PREDICTOR, TensorSpec
from turbosparse.convert.arch.llama import LlamaFamily
from turbosparse.errors import ConvertError

logger = logging.getLogger(__name__)

CONFIG_KEY = "turbosparse"
# what a PowerInfer-style predictor folder's config.json may state of its predictors (train-predictors writes them)
PREDICTOR_FIELDS = ("predictor_input", "activation_rates", "predicted_rates")


def as_number(value: object) -> float | None:
    """value as a float where it is a finite JSON number (not a bool, NaN or infinite, within a float's range), else
    None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class PredictorPart:
    """One predictor matrix of one layer: shape [out, in] and a loader."""

    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    origin: str


class ReluFamily(LlamaFamily):
    """Llama layout with a ReLU-gated FFN and optional per-layer predictors fc2 · relu(fc1 · h)."""

    def sparse_config(self) -> dict[str, Any]:
        block = self.config.get(CONFIG_KEY) or {}
        if not isinstance(block, dict):
            raise ConvertError(f"{self.model_dir / 'config.json'}: '{CONFIG_KEY}' must be an object")
        return block

    def down_layout(self) -> str:
        return self.options.down_layout or "transposed"

    def predictor_parts(self) -> dict[int, tuple[PredictorPart, PredictorPart]]:
        """layer -> (fc1 [rank, n_embd], fc2 [n_ff, rank]); layers without a predictor are absent."""
        return {}

    def default_threshold(self) -> float | None:
        """The threshold the checkpoint's predictors come with (None: not stated)."""
        return None

    def predictor_config(self) -> tuple[dict[str, Any], Path | None]:
        """What a predictor folder's own config.json says of its predictors (PREDICTOR_FIELDS) and that file's path;
        ({}, None) where the predictors come with the checkpoint."""
        return {}, None

    def sparse_field(self, key: str) -> tuple[Any, str]:
        """A field of the sparse block and where it comes from ("file: key", for messages): the predictor folder's
        config.json where it states the field (it describes the predictors it sits with), else the checkpoint's."""
        folder, folder_path = self.predictor_config()
        if key in PREDICTOR_FIELDS and key in folder and folder_path is not None:
            return folder[key], f"{folder_path}: {key}"
        return self.sparse_config().get(key), f"{self.model_dir / 'config.json'}: {CONFIG_KEY}.{key}"

    def tensors(self) -> list[TensorSpec]:
        specs = super().tensors()
        hp = self.hparams()
        self._ranks = [0] * hp.n_layer
        for layer, (fc1, fc2) in sorted(self.predictor_parts().items()):
            if not 0 <= layer < hp.n_layer:
                raise ConvertError(f"{fc1.origin}: layer {layer} is outside 0..{hp.n_layer - 1}")
            if len(fc1.shape) != 2 or fc1.shape[1] != hp.n_embd:
                raise ConvertError(f"{fc1.origin} has shape {list(fc1.shape)}, expected [rank, {hp.n_embd}]")
            rank = fc1.shape[0]
            if fc2.shape != (hp.n_ff, rank):
                raise ConvertError(
                    f"{fc2.origin} has shape {list(fc2.shape)}, expected [{hp.n_ff}, {rank}] "
                    f"(fc1 has rank {rank}: predictor rank mismatch)"
                )
            self._ranks[layer] = rank
            specs.append(TensorSpec(TENSOR_PRED_FC1.format(layer), fc1.shape, ROLE_PREDICTOR, fc1.load, fc1.origin))
            specs.append(TensorSpec(TENSOR_PRED_FC2.format(layer), fc2.shape, ROLE_PREDICTOR, fc2.load, fc2.origin))
        n_with = sum(r > 0 for r in self._ranks)
        if 0 < n_with < hp.n_layer:
            logger.warning("%s: only %d of %d layers have a predictor", self.model_dir, n_with, hp.n_layer)
        specs.sort(key=lambda s: int(s.name.split(".")[1]) if s.name.startswith("blk.") else -1)
        return specs

    def metadata(self) -> dict[str, Any]:
        hp = self.hparams()
        meta: dict[str, Any] = {}
        for key, gguf_key in (("activation_rates", KEY_ACTIVATION_RATES), ("predicted_rates", KEY_PREDICTED_RATES)):
            rates, where = self.sparse_field(key)
            if rates is None:
                continue
            numbers = [as_number(r) for r in rates] if isinstance(rates, list) else []
            if len(numbers) != hp.n_layer or None in numbers:
                raise ConvertError(f"{where} must be a list of {hp.n_layer} numbers")
            meta[gguf_key] = numbers
        ranks = getattr(self, "_ranks", None)
        if ranks is None:
            raise RuntimeError("metadata() needs tensors() first (it measures the predictor ranks)")
        if any(ranks):
            meta[KEY_PREDICTOR_RANKS] = ranks
            threshold, source = self.options.threshold, "--threshold"
            if threshold is None:  # the config's, else the predictors' own (checked where they are read)
                threshold, source = self.sparse_field("predictor_threshold")
                threshold = self.default_threshold() if threshold is None else threshold
            number = 0.0 if threshold is None else as_number(threshold)
            if number is None:
                raise ConvertError(f"{source}: the predictor threshold must be a number, got {threshold!r}")
            meta[KEY_PREDICTOR_THRESHOLD] = number
            pred_input, where = self.sparse_field("predictor_input")
            pred_input = "residual" if pred_input is None else pred_input
            if pred_input not in PREDICTOR_INPUTS:
                raise ConvertError(f"{where} '{pred_input}' is unknown ({', '.join(PREDICTOR_INPUTS)})")
            meta[KEY_PREDICTOR_INPUT] = pred_input
        elif self.options.threshold is not None:
            raise ConvertError(f"{self.model_dir}: --threshold given but the checkpoint has no predictors")
        return meta

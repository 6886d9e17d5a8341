"""The interface every source architecture implements, and the registry that picks one for a config.json.

An architecture class reads one kind of HF checkpoint and describes the GGUF it becomes: hyperparameters, the
turbosparse metadata, and a list of TensorSpec (GGUF name, shape, role, a loader that produces float32 data on
demand). The shared writer (writer.py) does the rest: types, quantization, vocabulary, the atomic write.

Mixture-of-experts classes (convert/arch/mixtral.py) yield one 3-D spec per layer and projection, the experts
stacked as llama.cpp stacks them (`blk.N.ffn_gate_exps.weight`, numpy shape [n_expert, n_ff, n_embd]), whose loader
reads the experts one layer at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from turbosparse.constants import OTHER_DENSE_FAMILIES
from turbosparse.convert.hparams import HParams
from turbosparse.convert.source import TensorSource
from turbosparse.errors import ConvertError

# Roles decide the quantization type (quant_policy.py)
ROLE_NORM = "norm"  # 1-D weights: always F32
ROLE_BIAS = "bias"  # 1-D biases: always F32
ROLE_EMBD = "token_embd"
ROLE_OUTPUT = "output"
ROLE_MATRIX = "matrix"  # attention and FFN matrices
ROLE_PREDICTOR = "predictor"
ROLE_ROUTER = "router"  # a mixture-of-experts router: F32, as llama.cpp keeps it


@dataclass
class TensorSpec:
    """One GGUF tensor: shape in numpy order ([rows, row length] = ggml ne reversed)."""

    name: str
    shape: tuple[int, ...]
    role: str
    load: Callable[[], np.ndarray]
    origin: str = ""  # where it comes from, for messages: "file: tensor"
    encoded: bool = False  # load() returns the bytes as stored (e.g. copied from a GGUF), not float32 values
    # the quantizer's weight per row element (convert/imatrix.py): [n] or, for stacked experts, [n_expert, n]
    importance: np.ndarray | None = None


@dataclass
class ConvertOptions:
    predictors: Path | None = None  # PowerInfer predictor directory (relu-llama)
    down_layout: str | None = None  # None: the architecture's default
    threshold: float | None = None  # overrides the predictor threshold found in the checkpoint


class Architecture:
    """Base class; subclasses set `name` and implement matches / hparams / tensors."""

    name: ClassVar[str] = ""
    ffn_activation: str = "swiglu"

    def __init__(self, model_dir: Path, config: dict[str, Any], source: TensorSource, options: ConvertOptions) -> None:
        self.model_dir = model_dir
        self.config = config
        self.source = source
        self.options = options

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        raise NotImplementedError

    def hparams(self) -> HParams:
        raise NotImplementedError

    def tensors(self) -> list[TensorSpec]:
        raise NotImplementedError

    def down_layout(self) -> str:
        """`transposed` for ReLU-family FFNs with predictors (sparse decoding reads rows of down^T), else standard."""
        return self.options.down_layout or "standard"

    def metadata(self) -> dict[str, Any]:
        """turbosparse.* keys (constants.KEY_*) -> values; the writer adds format version, layout, source."""
        return {}


_REGISTRY: dict[str, type[Architecture]] = {}


def register(cls: type[Architecture]) -> type[Architecture]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"architecture name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Architecture]]:
    return dict(_REGISTRY)


def find_architecture(config: dict[str, Any], where: Path) -> type[Architecture]:
    """The registered class that accepts the config (their matches are disjoint)."""
    model_type, architectures = config.get("model_type"), config.get("architectures")
    if not isinstance(model_type, str | None):
        raise ConvertError(f"{where}: 'model_type' must be a string, got {model_type!r}")
    names_ok = isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    if architectures is not None and not names_ok:
        raise ConvertError(f"{where}: 'architectures' must be a list of strings, got {architectures!r}")
    for cls in _REGISTRY.values():
        if cls.matches(config):
            return cls
    kind = config.get("model_type"), config.get("architectures")
    if "hidden_act" in config and any(cls.matches({**config, "hidden_act": "silu"}) for cls in _REGISTRY.values()):
        raise ConvertError(
            f"{where}: hidden_act {config['hidden_act']!r} is not an FFN activation turbosparse converts (silu: "
            "SwiGLU; relu or drelu: ReLU-family) in a model_type "
            f"{kind[0]!r} checkpoint"
        )
    raise ConvertError(
        f"{where}: unknown architecture (model_type={kind[0]!r}, architectures={kind[1]!r}); "
        f"supported: {', '.join(_REGISTRY)} (llama.cpp's convert_hf_to_gguf.py writes others: turbosparse runs its "
        f"files of {OTHER_DENSE_FAMILIES} and sparsifies them with `turbosparse calibrate`, and its Qwen3-MoE files "
        "densely)"
    )

"""turbosparse: activation-sparse LLM decoding for the llama.cpp / GGUF ecosystem."""

from turbosparse.binding import DeviceInfo, devices
from turbosparse.default import default_model
from turbosparse.errors import (
    CalibrationError,
    ChatTemplateError,
    ContextOverflowError,
    ConvertError,
    EvalError,
    GrammarError,
    InvalidArgumentError,
    ModelClosedError,
    ModelLoadError,
    TrainingError,
    TurboSparseError,
)
from turbosparse.grammar import Grammar
from turbosparse.llama import Llama
from turbosparse.model import Model

__all__ = [
    "CalibrationError",
    "ChatTemplateError",
    "ContextOverflowError",
    "ConvertError",
    "DeviceInfo",
    "EvalError",
    "Grammar",
    "GrammarError",
    "InvalidArgumentError",
    "Llama",
    "Model",
    "ModelClosedError",
    "ModelLoadError",
    "TrainingError",
    "TurboSparseError",
    "default_model",
    "devices",
]
__version__ = "0.1.0"

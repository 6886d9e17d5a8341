"""turbosparse: activation-sparse LLM decoding for the llama.cpp / GGUF ecosystem."""

from turbosparse.binding import DeviceInfo, devices
from turbosparse.default import default_model
from turbosparse.errors import (
    ChatTemplateError,
    ContextOverflowError,
    EvalError,
    GrammarError,
    InvalidArgumentError,
    ModelClosedError,
    ModelLoadError,
    TurboSparseError,
)
from turbosparse.grammar import Grammar
from turbosparse.llama import Llama
from turbosparse.model import Model

__all__ = [
    "ChatTemplateError",
    "ContextOverflowError",
    "DeviceInfo",
    "EvalError",
    "Grammar",
    "GrammarError",
    "InvalidArgumentError",
    "Llama",
    "Model",
    "ModelClosedError",
    "ModelLoadError",
    "TurboSparseError",
    "default_model",
    "devices",
]
__version__ = "0.1.0"

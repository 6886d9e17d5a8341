"""turbosparse: activation-sparse LLM decoding for the llama.cpp / GGUF ecosystem."""

from .assets import default_model
from .errors import ChatTemplateError, ContextOverflowError, EvalError, ModelLoadError, TurboSparseError
from .llama import Llama
from .model import Model

__all__ = [
    "ChatTemplateError",
    "ContextOverflowError",
    "EvalError",
    "Llama",
    "Model",
    "ModelLoadError",
    "TurboSparseError",
    "default_model",
]
__version__ = "0.1.0"

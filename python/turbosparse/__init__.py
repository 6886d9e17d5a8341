"""turbosparse: activation-sparse LLM decoding for the llama.cpp / GGUF ecosystem."""

from .assets import default_model
from .errors import ContextOverflowError, EvalError, ModelLoadError, TurboSparseError
from .model import Model

__all__ = ["ContextOverflowError", "EvalError", "Model", "ModelLoadError", "TurboSparseError", "default_model"]
__version__ = "0.1.0"

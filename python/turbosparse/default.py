"""The README's default model: the one place where the runtime reaches into the trainer (to build it once)."""

from __future__ import annotations

from turbosparse.assets import default_model_dir, default_model_file


def default_model() -> str:
    """Path of the README's default model GGUF: SmolLM2-135M-Instruct made dReLU, with trained predictors.

    Built once (about 25 minutes on 2 cores, every step cached and resumable) by
    turbosparse.predictor_train.default_model, which needs the `train` extra (torch); a cached model is found
    without importing torch."""
    path = default_model_dir() / default_model_file()
    if path.is_file():
        return str(path)
    from turbosparse.predictor_train.default_model import build_gguf

    return str(build_gguf())

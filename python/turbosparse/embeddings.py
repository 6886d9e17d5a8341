"""Embeddings as llama.cpp computes them: the final norm's output (the hidden state the logits are computed from)
per token, pooled per text as the file's `{arch}.pooling_type` says (Qwen3-Embedding's: the last token's) or as asked:
"none" (one vector per token), "mean", "cls" (the first token's), "last". llama.cpp's "rank" (rerankers' heads) is
not supported."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Literal

import numpy as np

from turbosparse.errors import InvalidArgumentError

Pooling = Literal["none", "mean", "cls", "last"]
POOLINGS: tuple[str, ...] = typing.get_args(Pooling)
# llama.cpp's enum llama_pooling_type, as files and llama-cpp-python's pooling_type give it (4: rank)
LLAMA_POOLING_TYPES: dict[int, Pooling] = {0: "none", 1: "mean", 2: "cls", 3: "last"}


def pooling_named(value: int | str) -> Pooling:
    """A pooling given as llama.cpp's number or its name; InvalidArgumentError for another (rank among them)."""
    if isinstance(value, str) and value in POOLINGS:
        return typing.cast(Pooling, value)
    if isinstance(value, int) and not isinstance(value, bool) and value in LLAMA_POOLING_TYPES:
        return LLAMA_POOLING_TYPES[value]
    raise InvalidArgumentError(
        f"pooling {value!r} is not supported: {', '.join(POOLINGS)} (llama.cpp's 0-3; rank, 4, is rerankers')"
    )


def file_pooling(metadata: Mapping[str, str]) -> Pooling:
    """The pooling a file asks for ({arch}.pooling_type, as llama.cpp reads it); "none" where it says none."""
    arch = metadata.get("general.architecture", "")
    value = metadata.get(f"{arch}.pooling_type")
    if value is None:
        return "none"
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgumentError(f"{arch}.pooling_type is {value!r}, not a number") from None
    try:
        return pooling_named(number)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{arch}.pooling_type: {exc}") from None


def pooled(rows: np.ndarray, pooling: Pooling) -> np.ndarray:
    """One text's token rows [n, n_embd] pooled: [n_embd] (the rows themselves for "none")."""
    if pooling == "mean":
        return rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    if pooling == "cls":
        return rows[0]
    if pooling == "last":
        return rows[-1]
    return rows


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Each vector (the last axis) scaled to unit Euclidean length (a zero vector stays zero), as llama.cpp's
    embd_normalize 2 and llama-cpp-python's normalize=True."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=-1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)

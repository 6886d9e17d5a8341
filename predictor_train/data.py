"""Calibration and evaluation text: reading text files or folders, tokenizing into fixed-length sequences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from turbosparse.errors import TrainingError


def read_text(path: str | Path, exclude: Sequence[str] = ()) -> str:
    """The text of a file, or of every *.txt file under a folder (sorted, skipping names containing any of
    `exclude`), joined by blank lines."""
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if path.is_dir():
        files = [f for f in sorted(path.rglob("*.txt")) if not any(e in f.name for e in exclude)]
        if not files:
            raise FileNotFoundError(f"{path}: no *.txt files to read")
        return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    raise FileNotFoundError(f"{path}: no such text file or folder")


def token_sequences(ids: Sequence[int], seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """ids cut into non-overlapping rows of seq_len tokens: int64 [n_seq, seq_len] (the tail is dropped)."""
    if seq_len < 2:
        raise TrainingError(f"seq_len must be at least 2, got {seq_len}")
    arr = np.asarray(ids, dtype=np.int64)
    if max_tokens is not None:
        arr = arr[:max_tokens]
    n = len(arr) // seq_len
    if n == 0:
        raise TrainingError(f"text too short: {len(arr)} tokens, a sequence needs {seq_len}")
    return arr[: n * seq_len].reshape(n, seq_len)


def tokenize_text(tokenizer, text: str, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """A Hugging Face tokenizer's ids for text (no special tokens) as [n_seq, seq_len] rows."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return token_sequences(ids, seq_len, max_tokens)

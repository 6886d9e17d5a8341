"""llama-server's slot actions (POST /slots/{id}?action=save|restore|erase): a slot's cached tokens, keys and values
written to a file in --slot-save-path and read back (Model.save_sequence / load_sequence: the same file, cache types
and layout), so that a long prompt's evaluation survives a restart or makes room for others; or dropped."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from turbosparse.model import Model
from turbosparse.sequences import SequenceState

_FILENAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")  # a plain name: no folders, no leading dot


def slot_file(folder: str, filename: str) -> Path:
    """filename inside folder; ValueError for a name that is not a plain file name."""
    if not _FILENAME.fullmatch(filename):
        raise ValueError(
            f"invalid filename {filename!r}: letters, digits, '.', '_' and '-' only, not starting with '.'"
        )
    return Path(folder) / filename


def save(model: Model, slot: int, folder: str, filename: str) -> dict[str, Any]:
    """Writes what the slot holds to the file (whole or not at all)."""
    path = slot_file(folder, filename)
    start = time.perf_counter()
    state = model.save_sequence(slot)
    n_written = state.save(path)
    return {"id_slot": slot, "filename": filename, "n_saved": len(state.tokens), "n_written": n_written,
            "timings": {"save_ms": 1000 * (time.perf_counter() - start)}}  # fmt: skip


def restore(model: Model, slot: int, folder: str, filename: str) -> dict[str, Any]:
    """Makes the slot hold what the file saved (FileNotFoundError, or the Model's errors for a state that does not
    fit)."""
    path = slot_file(folder, filename)
    start = time.perf_counter()
    state = SequenceState.load(path)
    model.load_sequence(slot, state)
    return {"id_slot": slot, "filename": filename, "n_restored": len(state.tokens), "n_read": path.stat().st_size,
            "timings": {"restore_ms": 1000 * (time.perf_counter() - start)}}  # fmt: skip


def erase(model: Model, slot: int) -> dict[str, Any]:
    return {"id_slot": slot, "n_erased": model.clear_sequence(slot)}

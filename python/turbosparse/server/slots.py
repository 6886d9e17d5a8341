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

_NOT_IN_NAMES = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')  # folders, drives, wildcards, control characters


def slot_file(folder: str, filename: str) -> Path:
    """filename inside folder; ValueError for a name that is not a plain file name (llama-server's rule: no folder
    separators or characters Windows refuses, no leading dot, no blanks around it, at most 255 UTF-8 bytes)."""
    plain = (
        filename
        and len(filename.encode("utf-8", "surrogatepass")) <= 255
        and not _NOT_IN_NAMES.search(filename)
        and not filename.startswith(".")
        and filename == filename.strip()
    )
    if not plain:
        raise ValueError(f"invalid filename {filename!r}: a plain file name (no folders, not starting with '.')")
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
    data = path.read_bytes()
    state = SequenceState.from_bytes(data)
    model.load_sequence(slot, state)
    return {"id_slot": slot, "filename": filename, "n_restored": len(state.tokens), "n_read": len(data),
            "timings": {"restore_ms": 1000 * (time.perf_counter() - start)}}  # fmt: skip


def erase(model: Model, slot: int) -> dict[str, Any]:
    return {"id_slot": slot, "n_erased": model.clear_sequence(slot)}

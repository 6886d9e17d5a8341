"""Checks of command-line values that would otherwise fail late (after a collection, a fit, a benchmark's rounds)
or in a traceback: said in one line, before any work."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from turbosparse.errors import InvalidArgumentError


def at_least(counts: Iterable[tuple[str, int | None, int]]) -> None:
    """(flag, value, least) each: value >= least (None: not given, not checked)."""
    for flag, value, least in counts:
        if value is not None and value < least:
            raise InvalidArgumentError(f"{flag} must be >= {least}, got {value}")


def text_paths_exist(paths: Iterable[tuple[str, Path | None]]) -> None:
    """(flag, path) each: the text file or folder is there (None: not given)."""
    for flag, path in paths:
        if path is not None and not path.exists():
            raise InvalidArgumentError(f"{flag} {path}: no such text file or folder")

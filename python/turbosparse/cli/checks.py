"""Checks of command-line values that would otherwise fail late (after a collection, a fit, a benchmark's rounds)
or in a traceback: said in one line, before any work."""

from __future__ import annotations

import argparse
import os
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


def checkpoint_folder_out(flag: str, out: Path, source: Path) -> None:
    """out can take a new checkpoint (config.json + model.safetensors, or a predictor folder): it is not the
    source's folder (whose weights the output would replace) and holds no other checkpoint's weights, which a reader
    of the folder would mix with the new ones (an index over shards is read before model.safetensors). An earlier
    output of the same command is fine (written over; train-predictors reuses its collection)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidArgumentError(f"{flag} {out}: exists and is not a folder")
    if source.exists() and out.samefile(source):
        raise InvalidArgumentError(f"{flag} {out}: is the source checkpoint's own folder; give another folder")
    others = sorted(
        f.name
        for pattern in ("*.safetensors", "*.index.json", "pytorch_model*.bin")
        for f in out.glob(pattern)
        if f.name != "model.safetensors"
    )
    if others:
        raise InvalidArgumentError(
            f"{flag} {out}: holds another checkpoint's weights ({', '.join(others[:3])}); give a new or empty folder"
        )


def output_file(text: str) -> Path:
    """An argparse type for an output file's path: one that ends with a path separator names a folder (pathlib
    would drop the separator and write a file of the folder's name)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text}: ends with '/', a folder; the output is a file (e.g. {text}out.gguf)")
    return Path(text)

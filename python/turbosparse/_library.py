"""Loads libturbosparse and declares its public header to cffi. The only module that does."""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cffi import FFI

LIBRARY_ENV = "TURBOSPARSE_LIB"  # path of another libturbosparse.so, e.g. a sanitizer build
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

_PACKAGE_DIR = Path(__file__).resolve().parent


def set_llama_log_verbosity(verbose: bool) -> None:
    """llama.cpp and ggml log through llama-cpp-python's logger; raised to ERROR it keeps them quiet, as
    llama-cpp-python's own Llama(verbose=False) does."""
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)


class LibraryError(RuntimeError):
    """libturbosparse is missing, or was built against another ggml than the one installed."""


@dataclass(frozen=True)
class Library:
    ffi: FFI
    lib: Any
    path: Path


def _cdef(header: str) -> str:
    """The header as cffi's cdef parses it: no comments, no preprocessor lines, no C++ guards."""
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def _library_path() -> Path:
    override = os.environ.get(LIBRARY_ENV)
    path = Path(override) if override else _PACKAGE_DIR / "libturbosparse.so"
    if not path.is_file():
        hint = f"(set by {LIBRARY_ENV})" if override else "(is the package installed? see the README)"
        raise LibraryError(f"libturbosparse not found at {path} {hint}")
    return path


@functools.cache
def load() -> Library:
    """Loads the library once per process, after llama_cpp so that a single ggml is mapped."""
    import llama_cpp  # maps llama_cpp/lib/libggml*.so, which our library links

    installed = getattr(llama_cpp, "__version__", "?")
    if installed != LLAMA_CPP_PYTHON_VERSION:
        raise LibraryError(
            f"turbosparse needs llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (the ggml it was built for); "
            f"found {installed}"
        )
    header = _PACKAGE_DIR / "turbosparse.h"
    if not header.is_file():
        header = _PACKAGE_DIR.parents[1] / "ggml_ops" / "include" / "turbosparse.h"
    ffi = FFI()
    ffi.cdef(_cdef(header.read_text()))
    path = _library_path()
    lib = ffi.dlopen(str(path))
    built = ffi.string(lib.ts_build_ggml_version()).decode()
    running = ffi.string(lib.ts_ggml_version()).decode()
    if built != running:
        raise LibraryError(
            f"{path} was built against ggml {built} but this process runs ggml {running}: reinstall turbosparse"
        )
    return Library(ffi=ffi, lib=lib, path=path)

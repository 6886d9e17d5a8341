"""llama.cpp's own tokenizer (through llama-cpp-python), loaded vocabulary-only from a GGUF file."""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import _logger as llama_cpp_logger

from turbosparse._library import set_llama_log_verbosity
from turbosparse.errors import ChatTemplateError, InvalidArgumentError, ModelClosedError, ModelLoadError
from turbosparse.powerinfer import is_powerinfer, vocab_only_copy


def _utf8(text: str) -> bytes:
    """text as UTF-8; a lone UTF-16 surrogate (JSON's "\\ud800", a string cut inside an emoji's pair) is not text."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"the text holds an unpaired surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}), which is "
            "not Unicode text and cannot be tokenized"
        ) from None


GGML_LOG_LEVEL_ERROR = 4  # ggml.h's ggml_log_level (llama-cpp-python 0.3.36 still maps 4 to DEBUG, and hides it)
GGML_LOG_LEVEL_CONT = 5  # the previous line goes on

# llama.cpp's log callback is one per process (llama_log_set is not thread-safe): one vocabulary load swaps it at a time
_LOG_CALLBACK_LOCK = threading.Lock()


@contextlib.contextmanager
def _llama_errors(verbose: bool) -> Iterator[list[str]]:
    """The error lines llama.cpp logs from this thread while the block runs, kept to name the cause in our own
    error. Every line still goes to an application's own log callback; to llama-cpp-python's (or llama.cpp's default,
    stderr) only with verbose: llama.cpp warns of a file's oddities it loads anyway (Gemma 3's "control-looking token
    ... was not control-type"), which llama-cpp-python 0.3.36's callback prints whatever its verbosity (it reads
    ggml's warning level as an error), and which its Llama(verbose=False) hides by muting stderr while it loads."""
    thread = threading.get_ident()
    errors: list[str] = []
    last_level = [0]
    previous = llama_cpp.llama_log_callback()
    previous_data = ctypes.c_void_p()

    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if threading.get_ident() == thread:
            line = text.decode("utf-8", errors="replace")
            if level == GGML_LOG_LEVEL_ERROR:
                errors.append(line)
            elif level == GGML_LOG_LEVEL_CONT and last_level[0] == GGML_LOG_LEVEL_ERROR and errors:
                errors[-1] += line
            if level != GGML_LOG_LEVEL_CONT:
                last_level[0] = level
            if not verbose and not applications:
                return
        if previous:
            previous(level, text, previous_data)
        else:  # llama.cpp's own default: the text on stderr
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    callback = llama_cpp.llama_log_callback(log)  # referenced until the previous one is back
    with _LOG_CALLBACK_LOCK:
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
        applications = bool(previous) and _address(previous) != _address(llama_cpp_logger.llama_log_callback)
        llama_cpp.llama_log_set(callback, previous_data)
        try:
            yield errors
        finally:
            llama_cpp.llama_log_set(previous, previous_data)


def _address(function: Any) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value


def _c_string(read: Callable[[ctypes.Array[ctypes.c_char], int], int]) -> str | None:
    """A string llama.cpp writes into a buffer: read(buf, size) returns its length (the length it needs, where the
    buffer is too small: then read again), or -1 where there is none (None)."""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = read(buf, size)
        if n < 0:
            return None
        if n < size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n + 1


@dataclass(frozen=True)
class FimTokens:
    """The vocabulary's fill-in-the-middle tokens, as llama.cpp finds them (the file's keys, else tokens named as
    coder models name them: <fim_prefix>, <|fim_prefix|>, <PRE>, ...); None where it has none."""

    prefix: int | None
    suffix: int | None
    middle: int | None
    repository: int | None  # repo-level prompts (Qwen2.5-Coder's <|repo_name|>)
    separator: int | None  # ... and their file separator (<|file_sep|>)


# every tokenizer, for the forked child's reset of its calls in flight
_TOKENIZERS: weakref.WeakSet[Tokenizer] = weakref.WeakSet()


def _forked() -> None:
    for tokenizer in list(_TOKENIZERS):
        tokenizer._calls.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)

_FIM_READERS = (
    llama_cpp.llama_vocab_fim_pre,
    llama_cpp.llama_vocab_fim_suf,
    llama_cpp.llama_vocab_fim_mid,
    llama_cpp.llama_vocab_fim_rep,
    llama_cpp.llama_vocab_fim_sep,
)


def _token_or_none(token: int) -> int | None:
    return None if token < 0 else token


class _CallsInFlight:
    """The calls running at once; ending() refuses new ones (ModelClosedError) and waits for those running."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._ended = False

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        with self._cond:
            if self._ended:
                raise ModelClosedError("the tokenizer is closed")
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def ending(self) -> Iterator[None]:
        with self._cond:
            self._ended = True
            self._cond.wait_for(lambda: self._running == 0)
            yield

    def forked(self) -> None:
        """In a forked child: the calls of the parent's other threads do not run here (and a lock one of them held
        would stay held)."""
        self._cond = threading.Condition()
        self._running = 0


class Tokenizer:
    """Tokenizes and detokenizes exactly as llama.cpp does for the model file's vocabulary."""

    def __init__(self, path: str, *, verbose: bool = False) -> None:
        # calls into llama.cpp's vocabulary in flight, which close() waits for (ctypes lets other threads run during
        # a call: the vocabulary was freed under one); the calls themselves run at once (llama.cpp's are read-only)
        self._calls = _CallsInFlight()
        _TOKENIZERS.add(self)
        self.path = os.path.abspath(path)  # the grammar worker process loads the vocabulary again
        set_llama_log_verbosity(verbose)
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        # llama.cpp refuses PowerInfer's PWRI magic (and its bamboo architecture): it reads a vocab-only copy
        try:
            vocab_path = vocab_only_copy(path) if is_powerinfer(path) else None
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        try:
            with _llama_errors(verbose) as errors:
                self._model = llama_cpp.llama_model_load_from_file(os.fsencode(vocab_path or path), params)
        finally:
            if vocab_path is not None:
                vocab_path.unlink()
        if not self._model:
            lines = [line.strip() for line in errors if line.strip()]
            # the first error line names the cause (gguf's reader: the tensor or key); the loader's "error loading
            # model: " line, first when the loader found it, says it again after what it adds; the rest only say
            # that loading failed
            marker = "error loading model: "
            cause = f": {lines[0].split(marker, 1)[-1]}" if lines else " (run with verbose for its log)"
            raise ModelLoadError(f"{path}: llama.cpp could not load the vocabulary{cause}")
        self._vocab_ptr = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.bos: int = llama_cpp.llama_vocab_bos(self._vocab)
        self.eos: int = llama_cpp.llama_vocab_eos(self._vocab)
        self.adds_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.newline: int = llama_cpp.llama_vocab_nl(self._vocab)
        self.fim = FimTokens(*(_token_or_none(read(self._vocab)) for read in _FIM_READERS))
        # per-token answers, asked once per generated token: kept instead of asking llama.cpp again
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._end_of_generation: dict[int, bool] = {}

    def close(self) -> None:
        """Frees llama.cpp's vocabulary (after a call another thread is making); every later call raises
        ModelClosedError."""
        if not hasattr(self, "_calls"):  # __init__ failed before it
            return
        with self._calls.ending():
            if getattr(self, "_model", None):
                llama_cpp.llama_model_free(self._model)
                self._model = None

    @contextlib.contextmanager
    def _held(self) -> Iterator[llama_cpp.llama_vocab_p]:
        """The vocabulary for one call, which close() then waits for."""
        with self._calls.one():
            self._check_open()
            yield self._vocab_ptr

    @property
    def _vocab(self) -> llama_cpp.llama_vocab_p:
        self._check_open()
        return self._vocab_ptr

    def _check_open(self) -> None:
        if not self._model:
            raise ModelClosedError("the tokenizer is closed")

    def __del__(self) -> None:
        self.close()

    def tokenize(self, text: str | bytes, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """add_bos adds the model's BOS when its vocabulary asks for one; special parses "<|im_start|>"-like text.
        bytes are tokenized as they are (UTF-8 expected, as llama.cpp does)."""
        data = text if isinstance(text, bytes) else _utf8(text)
        capacity = len(data) + 8
        for _ in range(2):
            buf = (llama_cpp.llama_token * capacity)()
            with self._held() as vocab:
                n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise RuntimeError("llama_tokenize kept asking for a larger buffer")

    def check_token(self, token: int) -> None:
        """InvalidArgumentError for a token id outside the vocabulary."""
        if not 0 <= token < self.n_vocab:
            raise InvalidArgumentError(f"token {token} is out of the vocabulary (0..{self.n_vocab - 1})")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes token decodes to (a piece may be part of a UTF-8 character)."""
        known = self._pieces.get((token, special))
        if known is not None:
            return known
        self.check_token(token)
        size = 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            with self._held() as vocab:
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
            if n >= 0:
                self._pieces[token, special] = buf.raw[:n]
                return buf.raw[:n]
            size = -n
        raise RuntimeError("llama_token_to_piece kept asking for a larger buffer")

    def detokenize(self, tokens: Iterable[int], *, special: bool = False) -> str:
        return b"".join(self.piece(t, special=special) for t in tokens).decode("utf-8", errors="replace")

    def detokenizer(self, *, special: bool = False, shown: frozenset[int] = frozenset()) -> Detokenizer:
        return Detokenizer(self, special=special, shown=shown)

    def is_end_of_generation(self, token: int) -> bool:
        known = self._end_of_generation.get(token)
        if known is None:
            with self._held() as vocab:
                known = self._end_of_generation[token] = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        return known

    def end_of_generation_tokens(self) -> list[int]:
        """Every token that ends a generation (llama.cpp's end-of-generation set: EOS, EOT, <|im_end|>, ...)."""
        return [t for t in range(self.n_vocab) if self.is_end_of_generation(t)]

    def metadata(self, key: str) -> str | None:
        with self._held():
            return _c_string(lambda buf, size: llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size))

    def all_metadata(self) -> dict[str, str]:
        """Every key llama.cpp keeps of the file's metadata (not its arrays), with its value as llama.cpp writes it."""
        with self._held():
            model, out = self._model, {}
            for i in range(llama_cpp.llama_model_meta_count(model)):
                key = _c_string(lambda buf, size, i=i: llama_cpp.llama_model_meta_key_by_index(model, i, buf, size))
                value = _c_string(
                    lambda buf, size, i=i: llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, size)
                )
                out[key or ""] = value or ""
        return out

    @property
    def chat_template(self) -> str | None:
        with self._held():
            ptr = llama_cpp.llama_model_chat_template(self._model, None)
        if not ptr:
            return None
        try:
            return ptr.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ChatTemplateError(
                f"{self.path}: tokenizer.chat_template is not UTF-8 (byte 0x{ptr[exc.start]:02x} at offset {exc.start})"
            ) from None


class Detokenizer:
    """Text as tokens arrive one by one; the bytes of a UTF-8 character split across tokens wait for the rest.
    special: special tokens' texts are written; shown: these special tokens' are (a tool call's markers)."""

    def __init__(self, tokenizer: Tokenizer, *, special: bool = False, shown: frozenset[int] = frozenset()) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._shown = shown
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.piece(token, special=self._special or token in self._shown))

    def flush(self) -> str:
        """The end: the bytes of a character the last tokens left unfinished are dropped (as llama-server and
        llama_cpp drop them), not written as U+FFFD."""
        self._decoder.reset()
        return ""

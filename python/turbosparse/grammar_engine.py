"""llama.cpp's grammar engine (through llama-cpp-python's ctypes API), run on a thread of its own.

llama.cpp's grammar code recurses on the calling thread's stack: its parser once per nested group, its matcher once
per rule reference at the start of a rule. 20000 nested groups crash an 8 MB stack, 4000 a 1 MB one, and rules can
chain such depths. So every call into it runs on one thread with a 256 MB stack (virtual memory: only the pages used
are committed), and Grammar.check() bounds the depth a grammar can reach."""

from __future__ import annotations

import ctypes
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import llama_cpp
import numpy as np

from turbosparse.errors import EvalError, GrammarError
from turbosparse.tokenizer import Tokenizer

STACK_BYTES = 256 << 20
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data
MAX_REASON_CHARS = 300  # of llama.cpp's reason in a GrammarError (it can quote the rest of the grammar)
# the longest one step of matching may take (llama.cpp's judging a whole vocabulary takes 3-20 ms): a grammar whose
# matching explodes ends its generation instead of holding every other one (the server steps them together)
STEP_TIMEOUT_S = 10.0
_PARSE_ERROR = "error parsing grammar:"  # how llama.cpp's parser's line to stderr starts, after "parse: "
T = TypeVar("T")


class GrammarDeadEnd(EvalError):
    """The grammar allows no token of the vocabulary after the text so far, or took too long to say which: the
    generation cannot go on."""


_Call = tuple[Callable[[], Any], list[Any], threading.Event]  # a call, the list its (ok, value) goes in, its signal


class _Worker:
    """The thread every grammar call runs on, started on first use; calls run one at a time, in order. It also
    takes llama.cpp's log lines written from it (the parser's errors) while a grammar is parsed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._forward: Any = None  # the log callback that was set before ours
        self._forward_data = ctypes.c_void_p()
        self._logged: list[str] | None = None  # while a grammar is parsed: llama.cpp's log lines from this thread
        self._saved_stderr: int | None = None  # while a grammar is parsed: file descriptor 2 as it was
        self._log_callback = llama_cpp.llama_log_callback(self._log)  # kept: llama.cpp holds only its address

    def run(self, call: Callable[[], T], timeout: float | None = None) -> T:
        """call's result, computed on the thread. Past timeout seconds the thread is left to finish it alone (a
        C call cannot be stopped), the next call starts another, and GrammarDeadEnd is raised."""
        self._start()
        result: list[Any] = []
        done = threading.Event()
        self._calls.put((call, result, done))
        if not done.wait(timeout):
            with self._lock:
                self._thread, self._calls = None, queue.SimpleQueue()
            raise GrammarDeadEnd(
                f"llama.cpp's grammar engine took more than {timeout:g} s to match one token (its work multiplies "
                "with repetitions of items that can match nothing)"
            )
        ok, value = result
        if not ok:
            raise value
        return value

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._forward is None:  # once per process: a forked child keeps ours, set in its parent
                self._forward = llama_cpp.llama_log_callback()
                llama_cpp.llama_log_get(ctypes.byref(self._forward), ctypes.byref(self._forward_data))
                llama_cpp.llama_log_set(self._log_callback, ctypes.c_void_p(0))
            previous = threading.stack_size(STACK_BYTES)
            try:
                self._thread = threading.Thread(
                    target=self._loop, args=(self._calls,), name="turbosparse-grammar", daemon=True
                )
                self._thread.start()
            finally:
                threading.stack_size(previous)

    def forked(self) -> None:
        """In a forked child: the thread did not come along (the next call starts another), nor its parse: stderr is
        given back."""
        self._give_back_stderr()
        self._lock = threading.Lock()
        self._calls = queue.SimpleQueue()
        self._thread = None
        self._logged = None

    def _loop(self, calls: queue.SimpleQueue[_Call]) -> None:
        while True:  # a thread left behind by a timeout waits here on a queue nobody feeds any more
            call, result, done = calls.get()
            try:
                result.extend((True, call()))
            except BaseException as exc:  # handed to the caller
                result.extend((False, exc))
            done.set()

    def _log(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if self._logged is not None and threading.current_thread() is self._thread:
            self._logged.append(text.decode("utf-8", errors="replace"))
        elif self._forward:
            self._forward(level, text, self._forward_data)
        else:  # no callback was set: llama.cpp's own default
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    def parse(self, vocab: llama_cpp.llama_vocab_p, gbnf: str, root: str) -> llama_cpp.llama_sampler_p:
        """On the worker: llama.cpp's grammar sampler; GrammarError with llama.cpp's words when gbnf does not parse.
        The parser writes its reason to file descriptor 2, which is taken meanwhile; what else was written to it then
        is written back after."""
        self._logged = []
        sys.stderr.flush()
        with tempfile.TemporaryFile() as written:
            try:
                self._saved_stderr = os.dup(2)
            except OSError:  # no stderr: parsed without taking it
                self._saved_stderr = None
            try:
                if self._saved_stderr is not None:
                    os.dup2(written.fileno(), 2)
                sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
            finally:
                self._give_back_stderr()
                logged, self._logged = self._logged, None
            written.seek(0)
            text = written.read().decode("utf-8", errors="replace")
        why = ""
        at = text.find(_PARSE_ERROR)
        if at >= 0:  # the parser's own lines, "parse: error parsing grammar: <why>", "", the grammar: not repeated
            line_start = text.rfind("\n", 0, at) + 1
            why = text[at + len(_PARSE_ERROR) :].split("\n", 1)[0]
            own = text[line_start : at + len(_PARSE_ERROR) + len(why)] + "\n\n" + gbnf + "\n"
            if text.startswith(own, line_start):
                text = text[:line_start] + text[line_start + len(own) :]
        if text:
            sys.stderr.write(text)
        if not sampler:
            why = " ".join((why or "".join(logged)).split())[:MAX_REASON_CHARS] or "no reason given"
            raise GrammarError(f"the grammar does not parse (root rule {root!r}): {why}")
        return sampler

    def _give_back_stderr(self) -> None:
        saved, self._saved_stderr = self._saved_stderr, None
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


_WORKER = _Worker()  # one per process, as llama.cpp's log callback is
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.forked)


class GrammarState:
    """Where one generation stands in its grammar: which tokens may come next; accept() each token taken."""

    def __init__(self, gbnf: str, root: str, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        vocab = tokenizer._vocab  # raises when the tokenizer is closed
        self._sampler = _WORKER.run(lambda: _WORKER.parse(vocab, gbnf, root))

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        """Which of ids (token ids) the grammar allows next, as booleans. End-of-generation tokens are allowed
        only where the grammar is complete."""
        self._tokenizer._check_open()
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids

        def apply() -> None:  # sets the refused tokens' logits to -inf
            # data named in here: a call left running after a timeout keeps it alive while it writes into it
            pointer = data.ctypes.data_as(llama_cpp.llama_token_data_p)
            candidates = llama_cpp.llama_token_data_array(data=pointer, size=len(data), selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(candidates))

        _WORKER.run(apply, STEP_TIMEOUT_S)
        return np.isfinite(data["logit"])

    def accept(self, token: int) -> None:
        """Moves the grammar past token, which allowed() must have allowed (llama.cpp aborts on any other)."""
        self._tokenizer._check_open()
        _WORKER.run(lambda: llama_cpp.llama_sampler_accept(self._sampler, token), STEP_TIMEOUT_S)

    def close(self) -> None:
        # freeing does not recurse: any thread (also at interpreter exit). A call left running after a timeout holds
        # this state (its closure), so __del__ comes after it ends.
        if getattr(self, "_sampler", None):
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()

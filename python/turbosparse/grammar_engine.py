"""llama.cpp's grammar engine, run in a process of its own (grammar_worker.py), one per tokenizer, started on first
use. A grammar whose matching takes too long is stopped by ending that process: the generation it belongs to ends,
and the other grammars are parsed again in the next process and moved past the tokens they had accepted. A crash in
llama.cpp's grammar code ends only that process, in the same way."""

from __future__ import annotations

import collections
import fcntl
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from turbosparse.errors import EvalError, GrammarError, InvalidArgumentError, ModelClosedError
from turbosparse.tokenizer import Tokenizer

# the longest llama.cpp may take to judge the tokens of one step (a whole vocabulary takes it 3-20 ms; a step asks about
# up to four bands of them): a grammar whose matching explodes ends its generation instead of holding every other one
# (the server steps them together)
STEP_TIMEOUT_S = 10.0
# the longest a grammar's parse may take (with its first matching: 20000 chained rules, the most Grammar.check()
# lets through, take ~4 s), and a parse again in a new worker with the tokens accepted so far
PARSE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0  # a new worker process: Python, llama.cpp and the vocabulary loaded
MAX_REPLY_BYTES = 64 << 20  # far above any answer (a vocabulary's booleans): a longer one is not the worker's
PYTHON_ENV = "TURBOSPARSE_GRAMMAR_PYTHON"  # the Python that runs the worker, where sys.executable is not one
# the worker: this process's import path (not the working directory's modules), then its main()
_WORKER_CODE = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "import turbosparse.grammar_worker as w; w.main(sys.argv[2:])"
)


class GrammarDeadEnd(EvalError):
    """The grammar allows no token of the vocabulary after the text so far, or took too long to say which: the
    generation cannot go on."""


class _WorkerGone(Exception):
    """The worker process ended during a call."""


class _WorkerTooSlow(_WorkerGone):
    """The worker process was ended for taking too long."""


class _NoWorker(Exception):
    """The worker process cannot be started (this machine's doing, not the grammar's)."""


class _Refused(Exception):
    """The worker's answer was an error: llama.cpp's reason."""


class _WorkerFailed(_NoWorker):
    """The worker met an error of its own (not the grammar's)."""


def _ending(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    requests: Connection
    replies: Connection


class _Engine:
    """The grammar worker process of one tokenizer's vocabulary; one call at a time."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._path = tokenizer.path
        self._n_vocab = tokenizer.n_vocab
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self.epoch = 0  # counts worker processes: a grammar parsed in an earlier one is parsed again
        self._keys = itertools.count()
        self._ended = False  # by close(): no worker is started any more
        # (epoch, key) of grammars closed since the last call (closing takes no lock: the garbage collector does it)
        self._closed: collections.deque[tuple[int, int]] = collections.deque()

    def new_key(self) -> int:
        return next(self._keys)

    def call(self, state: GrammarState, ids: np.ndarray | None, timeout: float, failure: type[Exception]) -> Any:
        """Which of ids state allows next, after the tokens it accepted since the last call (ids None: state parsed
        only); failure(why) when the worker refuses, took longer than timeout seconds, or ended twice (once may be
        another's doing: the call is tried again in a new worker); EvalError when no worker can be started."""
        queued = time.monotonic()
        with self._lock:
            state.waited(time.monotonic() - queued)
            for attempt in range(2):
                self._raise_if_ended()
                try:
                    return self._call(state, ids, timeout)
                except (_WorkerTooSlow, _Refused) as exc:
                    raise failure(str(exc)) from None
                except _NoWorker as exc:
                    self._raise_if_ended()  # close() killed it as it started
                    raise (failure if issubclass(failure, EvalError) else EvalError)(str(exc)) from None
                except _WorkerGone as exc:
                    self._raise_if_ended()  # close() killed it
                    if attempt == 1:
                        raise failure(str(exc)) from None
                except BaseException:  # cut short (Ctrl-C, a signal's exception): its answer would go to the next
                    if self._worker is not None:
                        self._end()
                    raise

    def _raise_if_ended(self) -> None:
        """ModelClosedError once close() has ended the engine (a call it cut short is the model's closing)."""
        if self._ended:
            raise ModelClosedError("the model is closed: its grammar engine was ended") from None

    def closed(self, state: GrammarState) -> None:
        self._closed.append((state.epoch, state.key))

    def close(self) -> None:
        """Ends the worker process for good (a call meanwhile fails). Takes no lock: it also runs at the
        interpreter's exit, where a call may never let go of it."""
        self._ended = True
        worker = self._worker
        if worker is not None:
            worker.process.kill()
            try:
                worker.process.wait(1.0)
            except subprocess.TimeoutExpired:
                pass

    def forked(self) -> None:
        """In a forked child: the worker and its pipes are the parent's (left open: closing this process's copies
        changes nothing for them); the next call starts another."""
        self._lock = threading.Lock()
        self._worker = None
        self.epoch += 1
        self._closed.clear()
        self._ended = False

    def _call(self, state: GrammarState, ids: np.ndarray | None, timeout: float) -> Any:
        started = time.monotonic()
        worker = self._worker or self._start()
        while self._closed:
            epoch, key = self._closed.popleft()
            if epoch == self.epoch:
                self._send(worker, ("free", key))
        if state.epoch != self.epoch:
            doing = f"to parse the grammar{' again and accept its tokens' if state.tokens else ''}"
            self._exchange(worker, ("parse", state.key, state.gbnf, state.root, state.tokens), PARSE_TIMEOUT_S, doing)
            state.epoch, state.sent = self.epoch, len(state.tokens)
        # a new worker and a parse again (another grammar's doing) are not this step's matching: they have limits of
        # their own
        state.waited(time.monotonic() - started)
        if ids is None:
            return None
        tokens = state.tokens[state.sent :]
        doing = "to match a token (its work multiplies with repetitions of items that can match nothing)"
        allowed = self._exchange(worker, ("allowed", state.key, tokens, ids), timeout, doing)
        state.sent += len(tokens)
        return allowed

    def _start(self) -> _Worker:
        python = os.environ.get(PYTHON_ENV) or sys.executable
        if not python or (getattr(sys, "frozen", False) and not os.environ.get(PYTHON_ENV)):
            raise _NoWorker(
                f"grammars run llama.cpp's grammar engine in a Python process of its own, and this program is not a "
                f"Python interpreter (sys.executable: {sys.executable!r}): set {PYTHON_ENV} to one"
            )
        path = json.dumps([p for p in sys.path if isinstance(p, str) and p])
        env = {**os.environ, "GGML_NO_BACKTRACE": "1", "CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
        fds: list[int] = []  # requests (read, write), replies (read, write)
        try:
            for _ in range(2):
                for fd in os.pipe():  # not inherited by other children
                    fds.append(fd)
                    if fd <= 2:  # a process with 0-2 closed gets them: the worker's stdin, stdout, stderr cover them
                        fds[-1] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
                        os.close(fd)
            requests, replies = (fds[0], fds[1]), (fds[2], fds[3])
            fds_and_path = [str(os.getpid()), str(requests[0]), str(replies[1]), self._path]
            process = subprocess.Popen(
                [python, "-I", "-c", _WORKER_CODE, path, *fds_and_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # llama.cpp logs to stderr; nothing the worker prints belongs in ours
                pass_fds=(requests[0], replies[1]),
                env=env,
            )
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise _NoWorker(f"llama.cpp's grammar engine could not be started ({python}): {exc}") from None
        os.close(requests[0])
        os.close(replies[1])
        to_worker, from_worker = Connection(requests[1], readable=False), Connection(replies[0], writable=False)
        worker = self._worker = _Worker(process, to_worker, from_worker)
        if self._ended:  # closed meanwhile
            self._end()
            self._raise_if_ended()
        try:
            n_vocab = self._answer(worker, START_TIMEOUT_S, "to start")
        except _WorkerGone as exc:
            raise _NoWorker(f"{exc} ({python}; the worker's reason is on stderr)") from None
        if n_vocab != self._n_vocab:
            self._end()
            raise _NoWorker(
                f"{self._path}: the file's vocabulary has {n_vocab} tokens, the model's {self._n_vocab} (was the file "
                "replaced after the model was loaded?)"
            )
        return worker

    def _exchange(self, worker: _Worker, request: tuple[Any, ...], timeout: float, doing: str) -> Any:
        self._send(worker, request)
        return self._answer(worker, timeout, doing)

    def _send(self, worker: _Worker, request: tuple[Any, ...]) -> None:
        try:
            worker.requests.send(request)
        except OSError:
            raise self._gone() from None

    def _answer(self, worker: _Worker, timeout: float, doing: str) -> Any:
        try:
            answered = worker.replies.poll(timeout)
            if answered:
                status, value = pickle.loads(worker.replies.recv_bytes(MAX_REPLY_BYTES))
        except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):
            raise self._gone() from None
        if not answered:
            self._end()
            raise _WorkerTooSlow(f"llama.cpp's grammar engine took more than {timeout:g} s {doing}")
        if status == "error":
            raise _Refused(value)
        if status == "failed":
            raise _WorkerFailed(value)
        return value

    def _gone(self) -> _WorkerGone:
        return _WorkerGone(f"llama.cpp's grammar engine failed (its process ended with {_ending(self._end())})")

    def _end(self) -> int:
        """Ends the worker process; its exit code. Every grammar is parsed again in the next."""
        worker, self._worker = self._worker, None
        assert worker is not None
        self.epoch += 1
        self._closed.clear()
        try:
            worker.process.kill()
        finally:
            worker.requests.close()
            worker.replies.close()
        return worker.process.wait()


# one worker process per tokenizer, ended when the tokenizer is collected or closed, or at exit
_ENGINES: weakref.WeakKeyDictionary[Tokenizer, _Engine] = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def _engine(tokenizer: Tokenizer) -> _Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(tokenizer)
        if engine is None:
            engine = _ENGINES[tokenizer] = _Engine(tokenizer)
            weakref.finalize(tokenizer, engine.close)  # also at the interpreter's exit
        return engine


def close_engine(tokenizer: Tokenizer) -> None:
    """Ends tokenizer's grammar worker process, if it has one (Model.close())."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(tokenizer)
    if engine is not None:
        engine.close()


def _forked() -> None:
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()
    for engine in list(_ENGINES.values()):
        engine.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class GrammarState:
    """Where one generation stands in its grammar: which tokens may come next; accept() each token taken."""

    def __init__(self, gbnf: str, root: str, tokenizer: Tokenizer) -> None:
        tokenizer._check_open()
        self._tokenizer = tokenizer
        self._engine: _Engine | None = _engine(tokenizer)
        self.gbnf, self.root = gbnf, root
        self.tokens: list[int] = []  # accepted so far: a new worker process is told them again
        self.sent = 0  # how many of tokens the worker has (the others go with the next question, in one exchange)
        self.key = self._engine.new_key()
        self.epoch = -1  # the worker process it is parsed in
        self._step_deadline: float | None = None  # time.monotonic() by which this step's questions must be answered
        self._engine.call(self, None, PARSE_TIMEOUT_S, GrammarError)

    def begin_step(self) -> None:
        """The questions until the next begin_step() are one step's: together they get STEP_TIMEOUT_S."""
        self._step_deadline = time.monotonic() + STEP_TIMEOUT_S

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        """Which of ids (token ids) the grammar allows next, as booleans. End-of-generation tokens are allowed
        only where the grammar is complete."""
        self._tokenizer._check_open()
        if self._engine is None:
            raise GrammarDeadEnd("the grammar is closed")
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self._tokenizer.n_vocab):
            raise InvalidArgumentError(f"token ids must be in 0..{self._tokenizer.n_vocab - 1}")
        timeout = STEP_TIMEOUT_S if self._step_deadline is None else self._step_deadline - time.monotonic()
        try:
            if timeout > 0:
                return self._engine.call(self, ids.astype(np.int32), timeout, GrammarDeadEnd)
        except GrammarDeadEnd:
            self.close()  # the worker may hold it half moved on: it asks nothing more
            if not self._step_over():
                raise
        self.close()
        raise GrammarDeadEnd(
            f"llama.cpp's grammar engine took more than {STEP_TIMEOUT_S:g} s to judge the tokens of one step "
            "(its work multiplies with repetitions of items that can match nothing)"
        )

    def waited(self, seconds: float) -> None:
        """Time spent waiting for another grammar's question (one worker answers one at a time), for a new worker or a
        parse again is not this step's: one grammar slow to match must not end the others beside it."""
        if self._step_deadline is not None:
            self._step_deadline += seconds

    def _step_over(self) -> bool:
        return self._step_deadline is not None and time.monotonic() >= self._step_deadline

    def accept(self, token: int) -> None:
        """Moves the grammar past token, which allowed() must have allowed (else the next allowed() raises
        GrammarDeadEnd)."""
        self._tokenizer.check_token(token)
        self.tokens.append(int(token))

    def close(self) -> None:
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            engine.closed(self)

    def __del__(self) -> None:
        self.close()

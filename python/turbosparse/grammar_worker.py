"""The process llama.cpp's grammar engine runs in, started and spoken to by grammar_engine.py over two pipes of its own
(multiprocessing's Connection framing, pickled tuples): `python -I -c ... PARENT_PID REQUESTS_FD REPLIES_FD GGUF`.

A process of its own because llama.cpp's matching can take minutes for a small grammar (repetitions of items that
can match nothing multiply its stacks) and a C call cannot be stopped inside a process: a process can be killed.
A crash of llama.cpp's grammar code ends this process only.

Requests, answered in order: ("parse", key, gbnf, root, tokens) -> None (the grammar, moved past tokens, kept under
key), ("allowed", key, tokens, ids) -> booleans (which of ids may come after tokens, accepted first); ("free", key)
gets no answer. Answers are ("ok", value), ("error", why): a grammar that does not parse (llama.cpp's reason) or a
token the grammar does not allow (the grammar is dropped), or ("failed", why): an error of the worker's own. It says
("ok", n_vocab) once the vocabulary is loaded, and ends when the requests pipe closes or its parent process is
gone."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import tempfile
import threading
from multiprocessing.connection import Connection

import llama_cpp
import numpy as np

from turbosparse.errors import GrammarError
from turbosparse.tokenizer import Tokenizer

# llama.cpp's grammar code recurses on the calling thread's stack: its parser once per nested group, its matcher once
# per rule reference at the start of a rule. 20000 nested groups crash an 8 MB stack, 4000 a 1 MB one, and rules can
# chain such depths: the requests are served on a thread with a 256 MB stack (virtual memory: only the pages used are
# committed), and Grammar.check() bounds the depth a grammar can reach
STACK_BYTES = 256 << 20
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data
MAX_REASON_CHARS = 300  # of llama.cpp's reason in a GrammarError (it can quote the rest of the grammar)
_PARSE_ERROR = "error parsing grammar:"  # how llama.cpp's parser's line to stderr starts, after "parse: "


class _Grammars:
    """The grammars of one vocabulary, by key."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer  # kept: it frees the vocabulary when collected
        self._vocab = tokenizer._vocab
        self._samplers: dict[int, llama_cpp.llama_sampler_p] = {}
        self._logged: list[str] | None = None  # while a grammar is parsed: llama.cpp's log lines
        self._log_callback = llama_cpp.llama_log_callback(self._log)  # kept: llama.cpp holds only its address
        llama_cpp.llama_log_set(self._log_callback, ctypes.c_void_p(0))

    def serve(self, requests: Connection, replies: Connection) -> None:
        while True:
            try:
                op, key, *args = requests.recv()
            except EOFError:  # the caller is gone
                return
            if op == "free":
                sampler = self._samplers.pop(key, None)
                if sampler is not None:
                    llama_cpp.llama_sampler_free(sampler)
                continue
            try:
                reply = ("ok", getattr(self, op)(key, *args))
            except GrammarError as exc:
                reply = ("error", str(exc))
            except Exception as exc:  # said to the caller rather than ending this process without a word
                reply = ("failed", f"the grammar worker failed: {exc!r}")
            try:
                replies.send(reply)
            except OSError:  # the caller is gone
                return

    def parse(self, key: int, gbnf: str, root: str, tokens: list[int]) -> None:
        self._samplers[key] = self._parse(gbnf, root)
        self._accept(key, tokens)

    def allowed(self, key: int, tokens: list[int], ids: np.ndarray) -> np.ndarray:
        self._accept(key, tokens)
        return self._allowed(self._samplers[key], ids)

    def _accept(self, key: int, tokens: list[int]) -> None:
        """Moves grammar key past tokens; GrammarError for a token it does not allow (llama.cpp aborts on one)."""
        sampler = self._samplers[key]
        for token in tokens:
            if not self._allowed(sampler, np.array([token]))[0]:
                llama_cpp.llama_sampler_free(self._samplers.pop(key))  # half moved on: of no further use
                raise GrammarError(f"token {token} is not allowed by the grammar after the text before it")
            llama_cpp.llama_sampler_accept(sampler, token)

    @staticmethod
    def _allowed(sampler: llama_cpp.llama_sampler_p, ids: np.ndarray) -> np.ndarray:
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        pointer = data.ctypes.data_as(llama_cpp.llama_token_data_p)
        candidates = llama_cpp.llama_token_data_array(data=pointer, size=len(data), selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))  # refused: logit -inf
        return np.isfinite(data["logit"])

    def _log(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if self._logged is not None:
            self._logged.append(text.decode("utf-8", errors="replace"))

    def _parse(self, gbnf: str, root: str) -> llama_cpp.llama_sampler_p:
        """llama.cpp's grammar sampler; GrammarError with llama.cpp's words when gbnf does not parse. The parser
        writes its reason to file descriptor 2, which is taken meanwhile; what else was written to it then is written
        back after."""
        self._logged = []
        with tempfile.TemporaryFile() as written:
            saved = os.dup(2)
            try:
                os.dup2(written.fileno(), 2)
                sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), root.encode())
            finally:
                os.dup2(saved, 2)
                os.close(saved)
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
            sys.stderr.flush()
        if not sampler:
            why = " ".join((why or "".join(logged)).split())[:MAX_REASON_CHARS] or "no reason given"
            raise GrammarError(f"the grammar does not parse (root rule {root!r}): {why}")
        return sampler


def main(argv: list[str]) -> None:
    parent, requests_fd, replies_fd, path = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the caller's, who ends this
    try:  # where memory runs out, the system ends this process rather than its caller (the model's)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    requests = Connection(int(requests_fd), writable=False)
    replies = Connection(int(replies_fd), readable=False)
    tokenizer = Tokenizer(path)
    grammars = _Grammars(tokenizer)
    try:
        replies.send(("ok", tokenizer.n_vocab))
    except OSError:  # the caller is gone already
        return
    threading.stack_size(STACK_BYTES)
    server = threading.Thread(target=grammars.serve, args=(requests, replies), name="turbosparse-grammar", daemon=True)
    server.start()
    while server.is_alive():  # llama.cpp's calls let go of the GIL: this notices a parent gone in mid-match
        server.join(1.0)
        if os.getppid() != int(parent):
            os._exit(0)

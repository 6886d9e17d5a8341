"""`turbosparse run -cnv`: a chat in turns on the terminal, as llama-cli's conversation mode: one user message per
line read from stdin (a line ending in a backslash goes on on the next), each answered in the model's chat template
with the whole conversation before it. The conversation's tokens stay in the KV cache from turn to turn (a turn
evaluates only what is new); past the context, the oldest exchanges are dropped. Ctrl-C stops an answer; at the
prompt, Ctrl-C or the end of input (Ctrl-D) ends the conversation."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from turbosparse.model import Model

Message = dict[str, object]


@dataclass
class Conversation:
    """The messages so far, and how to answer the next one: answer(tokens, turn) streams the text of an answer to
    a chat prompt's tokens."""

    model: Model
    answer: Callable[[list[int], int], Iterator[str]]
    room: int  # tokens kept free after a turn's prompt for its answer
    messages: list[Message]

    def turn(self, text: str, out: TextIO) -> None:
        """Answers one user message, streaming to out; the answer (or what came of it before Ctrl-C) joins the
        conversation."""
        self.messages.append({"role": "user", "content": text})
        tokens = self._fitted_tokens()
        if tokens is None:
            self.messages.pop()
            return
        pieces = self.answer(tokens, sum(m["role"] == "user" for m in self.messages))
        answer: list[str] = []
        with _interrupt_flag() as interrupted:  # Ctrl-C ends the answer between two tokens, not inside a step
            try:
                for piece in pieces:
                    out.write(piece)
                    out.flush()
                    answer.append(piece)
                    if interrupted.is_set():
                        break
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # an answer stopped early frees its sequence
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def _fitted_tokens(self) -> list[int] | None:
        """The chat prompt's tokens, the oldest exchanges dropped until it leaves room for an answer; None (said on
        stderr) when the new message alone does not fit."""
        first = 1 if self.messages[0]["role"] == "system" else 0
        dropped = 0
        while True:
            tokens = self.model.chat_tokens(self.messages)
            if len(tokens) + self.room <= self.model.n_ctx:
                break
            if len(self.messages) - first <= 1:
                print(
                    f"the message makes a prompt of {len(tokens)} tokens; with {self.room} for the answer that is "
                    f"past the context of {self.model.n_ctx} (-c)",
                    file=sys.stderr,
                )
                return None
            del self.messages[first : first + 2]  # the oldest user message and its answer
            dropped += 1
        if dropped:
            print(f"[{dropped} oldest exchange(s) dropped: the conversation is past the context]", file=sys.stderr)
        return tokens


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) while inside; on threads other than the main one, never set."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def read_message(source: TextIO, prompt: str | None, out: TextIO) -> str | None:
    """The next user message (lines ending in a backslash joined with the next), None at the end of input. prompt
    is shown before each line when given (a terminal)."""
    lines: list[str] = []
    while True:
        if prompt is not None:
            out.write(prompt if not lines else "")
            out.flush()
        line = source.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\r\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def converse(conversation: Conversation, first: str, source: TextIO, out: TextIO) -> None:
    """Runs the conversation: first (when not empty) as the first message, then each message read from source."""
    prompt = "> " if source.isatty() else None
    text: str | None = first
    while True:
        if text is not None and text.strip():
            conversation.turn(text, out)
        try:
            text = read_message(source, prompt, out)
        except KeyboardInterrupt:
            out.write("\n")
            return
        if text is None:
            return

"""`turbosparse run -cnv`: a chat in turns on the terminal, as llama-cli's conversation mode: one user message per
line read from stdin (a line ending in a backslash goes on on the next), each answered in the model's chat template
with the whole conversation before it. The conversation's tokens stay in the KV cache from turn to turn (a turn
evaluates only what is new); past the context, the oldest exchanges are dropped, down to half the context, so that
the turns after keep their prefix again. Ctrl-C stops an answer; at the prompt, Ctrl-C or the end of input (Ctrl-D)
ends the conversation."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

Message = dict[str, object]


class ChatModel(Protocol):  # what a conversation needs of a Model
    @property
    def n_ctx(self) -> int: ...

    def chat_tokens(self, messages: Sequence[Message]) -> list[int]: ...


@dataclass
class Conversation:
    """The messages so far, and how to answer the next one: answer(tokens, turn) streams the text of an answer to
    a chat prompt's tokens (turn: 1, 2, ...; an empty piece is a step that released no text)."""

    model: ChatModel
    answer: Callable[[list[int], int], Iterator[str]]
    room: int  # tokens kept free after a turn's prompt for its answer (at least 1)
    messages: list[Message]
    turns: int = field(default=0, init=False)

    def turn(self, text: str, out: TextIO) -> None:
        """Answers one user message, streaming to out; the answer (or what came of it before Ctrl-C) joins the
        conversation. A message that cannot fit is said on stderr and leaves the conversation as it was."""
        with _interrupt_flag() as interrupted:  # Ctrl-C ends the turn between two steps, never inside one
            fitted = self._fitted([*self.messages, {"role": "user", "content": text}])
            if fitted is None:
                return
            self.messages, tokens = fitted
            self.turns += 1
            pieces = self.answer(tokens, self.turns)
            answer: list[str] = []
            try:
                for piece in pieces:
                    if interrupted.is_set():
                        break
                    out.write(piece)
                    out.flush()
                    answer.append(piece)
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # an answer stopped early frees its sequence
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": "".join(answer)})

    def _fitted(self, messages: list[Message]) -> tuple[list[Message], list[int]] | None:
        """messages and their chat prompt's tokens, leaving room for an answer: as they are, or past the context
        without their oldest exchanges, down to half the context (said on stderr); None (said on stderr) when the
        newest message alone does not fit."""
        n_ctx = self.model.n_ctx
        tokens = self.model.chat_tokens(messages)
        if len(tokens) + self.room <= n_ctx:
            return messages, tokens
        first = 1 if messages[0]["role"] == "system" else 0
        kept = list(messages)
        while len(kept) - first > 1 and len(tokens) + self.room > min(n_ctx, n_ctx // 2 + self.room):
            del kept[first : first + 2]  # the oldest user message and its answer
            tokens = self.model.chat_tokens(kept)
        if len(tokens) + self.room > n_ctx:
            print(
                f"the message makes a prompt of {len(tokens)} tokens; with {self.room} for the answer that is past "
                f"the context of {n_ctx} (-c): not sent",
                file=sys.stderr,
            )
            return None
        dropped = (len(messages) - len(kept)) // 2
        print(f"[{dropped} oldest exchange(s) dropped: the conversation is past the context]", file=sys.stderr)
        return kept, tokens


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
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)  # None: set from C


def read_message(source: TextIO, prompt: TextIO | None) -> str | None:
    """The next user message (lines ending in a backslash joined with the next), None at the end of input. "> " is
    written to prompt before each message when given (a terminal)."""
    lines: list[str] = []
    if prompt is not None:
        prompt.write("> ")
        prompt.flush()
    while True:
        line = source.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\r\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


def converse(
    conversation: Conversation,
    first: str,
    source: TextIO,
    out: TextIO,
    *,
    single_turn: bool = False,
    prepare: Callable[[str], str] | None = None,
) -> bool:
    """Runs the conversation: first (when not empty) as the first message, then each message read from source
    (passed through prepare when given: llama-cli's -e escapes); single_turn (llama-cli's -st): ends after the
    first message answered. Returns whether Ctrl-C at the prompt ended it (Ctrl-C during an answer stops only
    that answer)."""
    prompt = (out if out.isatty() else sys.stderr) if source.isatty() else None
    text: str | None = first
    while True:
        if text is not None and text.strip():
            if not is_utf8(text):  # bytes that are not UTF-8, read as lone surrogates
                print("the message is not UTF-8 text: not sent", file=sys.stderr)
            else:
                conversation.turn(text, out)
                if single_turn:
                    return False
        try:
            text = read_message(source, prompt)
        except KeyboardInterrupt:
            out.write("\n")
            return True
        if text is None:
            if prompt is not None:  # Ctrl-D at "> ": the timings start a line of their own
                prompt.write("\n")
            return False
        if prepare is not None and is_utf8(text):
            text = prepare(text)


def is_utf8(text: str) -> bool:
    """Whether text holds no lone surrogates (the bytes that were not UTF-8, read with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

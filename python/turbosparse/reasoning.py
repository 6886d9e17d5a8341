"""A thinking model's answer split into its reasoning and its content, as llama-server's `--reasoning-format
deepseek` (its default, `auto`, for templates that think) splits it: the text between `<think>` (at the answer's start,
or left open at the prompt's end, as DeepSeek-R1's template leaves it) and `</think>` becomes `reasoning_content`,
without the whitespace around it; what follows, without its leading whitespace, the `content`. The split is made
piece by piece as the text streams, holding back only what might still turn out to be part of a tag."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from enum import Enum
from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
ReasoningFormat = Literal["none", "auto", "deepseek", "deepseek-legacy"]
REASONING_FORMATS: tuple[str, ...] = typing.get_args(ReasoningFormat)


def thinks(template_source: str | None, prompt_end: str) -> bool:
    """Whether to look for reasoning: the chat template writes think tags (Qwen3, QwQ, DeepSeek-R1), or the prompt
    (prompt_end: its last characters) leaves one open."""
    return (template_source is not None and CLOSE in template_source) or open_at_end(prompt_end)


def open_at_end(prompt_end: str) -> bool:
    """The prompt ends with `<think>` (and blanks), as DeepSeek-R1's template leaves it: the answer starts inside its
    reasoning. (A `<think>` anywhere before, a user's message naming the tag, does not count.)"""
    return prompt_end.rstrip().endswith(OPEN)


class _State(Enum):
    START = 1  # before the answer's first non-blank text: a `<think>` may come
    REASONING = 2
    CONTENT_START = 3  # just after `</think>`: blanks dropped
    CONTENT = 4


@dataclass
class Split:
    """Text split into its two parts (either may be empty)."""

    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Feeds an answer's text in pieces; each feed returns what is now known of the two parts."""

    def __init__(self, *, open_at_start: bool) -> None:
        self._state = _State.REASONING if open_at_start else _State.START
        self._held = ""  # text not yet given out: a possible tag's start, blanks at the reasoning's start or end
        self._reasoning_started = False  # some reasoning text was given out (later blanks are inside it)
        self.closed = False  # the reasoning ended (`</think>`)

    @property
    def reasoned(self) -> bool:
        """The answer is, or was, inside its reasoning."""
        return self._state is _State.REASONING or self.closed

    def feed(self, text: str) -> Split:
        out = Split()
        self._held += text
        while True:
            before = (self._state, self._held)
            self._step(out, final=False)
            if (self._state, self._held) == before:
                return out

    def finish(self) -> Split:
        """What was held back, at the answer's end: an unfinished `<think>` is content; in the reasoning, what is held
        (blanks, the start of a `</think>` cut short) is dropped, as llama-server drops it."""
        out = Split()
        self._step(out, final=True)  # past the answer's start: a `<think>` can no longer come
        if self._state is _State.CONTENT:
            out.content += self._held
        self._held = ""
        return out

    def _step(self, out: Split, *, final: bool) -> None:
        held = self._held
        if self._state is _State.START:
            blank_free = held.lstrip()
            if blank_free.startswith(OPEN):
                self._state, self._held = _State.REASONING, blank_free[len(OPEN) :]
            elif not OPEN.startswith(blank_free) or final:  # not a tag after all: the answer has no reasoning
                self._state = _State.CONTENT
        elif self._state is _State.REASONING:
            end = held.find(CLOSE)
            if end >= 0:
                self._give_reasoning(out, held[:end].rstrip())
                self._state, self._held = _State.CONTENT_START, held[end + len(CLOSE) :]
                self.closed = True
                return
            keep = _tag_start_at_end(held, CLOSE)
            text, rest = held[: len(held) - keep], held[len(held) - keep :]
            body = text.rstrip()
            self._give_reasoning(out, body)
            self._held = text[len(body) :] + rest  # trailing blanks wait: they may end the reasoning
        elif self._state is _State.CONTENT_START:
            self._held = held.lstrip()
            if self._held:
                self._state = _State.CONTENT
        else:
            out.content += held
            self._held = ""

    def _give_reasoning(self, out: Split, text: str) -> None:
        if not self._reasoning_started:
            text = text.lstrip()  # the blanks after `<think>`
        if text:
            out.reasoning += text
            self._reasoning_started = True


def _tag_start_at_end(text: str, tag: str) -> int:
    """The length of the longest end of text that begins tag (0: none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def split_whole(text: str, *, open_at_start: bool) -> Split:
    """A whole answer's two parts."""
    splitter = ReasoningSplitter(open_at_start=open_at_start)
    first, last = splitter.feed(text), splitter.finish()
    return Split(first.reasoning + last.reasoning, first.content + last.content)

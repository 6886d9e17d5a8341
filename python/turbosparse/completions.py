"""The OpenAI completion objects (as llama-cpp-python returns them): text completions, chat completions and their
streamed chunks, with their tokens' log-probabilities when asked for. Shared by turbosparse.Llama and the server, so
both answer in one shape."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from turbosparse.generation import FinishReason, Generation
from turbosparse.logprobs import ReleasedLogprobs, chat_logprobs, completion_logprobs
from turbosparse.reasoning import CLOSE, OPEN, ReasoningSplitter, Split, split_whole
from turbosparse.tokenizer import Tokenizer
from turbosparse.tool_calls import ToolCall, ToolUse, new_call_id


@dataclass(frozen=True)
class CompletionMeta:
    """What every object of one completion repeats: its id, creation time and model name."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, kind: str, model: str) -> CompletionMeta:
        """kind: "cmpl" (text completion) or "chatcmpl"."""
        return cls(id=f"{kind}-{uuid.uuid4()}", model=model)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def text_completion(
    meta: CompletionMeta,
    text: str,
    finish_reason: FinishReason | None,
    use: dict[str, int],
    logprobs: dict | None = None,
) -> dict:
    """A whole text completion: a streamed chunk's shape (OpenAI uses one object name for both) plus usage.
    logprobs: logprobs.completion_logprobs's object, when asked for."""
    return {**text_completion_chunk(meta, text, finish_reason, logprobs), "usage": use}


def text_completion_chunk(
    meta: CompletionMeta, text: str, finish_reason: FinishReason | None, logprobs: dict | None = None
) -> dict:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def chat_completion(
    meta: CompletionMeta,
    text: str,
    finish_reason: FinishReason | None,
    use: dict[str, int],
    logprobs: dict | None = None,
    reasoning_content: str | None = None,
    tool_calls: list[ToolCall] | None = None,
) -> dict:
    """logprobs: logprobs.chat_logprobs's object, when asked for; reasoning_content: a thinking model's reasoning,
    split from the text (reasoning.py); tool_calls: the calls read from it (tool_calls.py), which make the finish
    reason "tool_calls" where the answer stopped, and an empty content null, as OpenAI's."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning_content:
        message["reasoning_content"] = reasoning_content
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [call.openai(new_call_id()) for call in tool_calls]
        finish_reason = tool_finish_reason(finish_reason)
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": use,
    }


def tool_finish_reason(finish_reason: FinishReason | None) -> Any:
    """An answer with tool calls finishes with "tool_calls" where it stopped (not where it ran out of tokens)."""
    return "tool_calls" if finish_reason == "stop" else finish_reason


def chat_completion_chunk(
    meta: CompletionMeta, delta: dict[str, Any], finish_reason: FinishReason | None, logprobs: dict | None = None
) -> dict:
    """delta: {"role": "assistant"} first, then {"content": text} pieces (and {"reasoning_content": text} ones, when
    a thinking model's answer is split), then {} with the finish reason."""
    return {
        "id": meta.id,
        "model": meta.model,
        "created": meta.created,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


class TextCompletionChunks:
    """A text completion's chunks for one generation: its text pieces (the echoed prompt first) and, when the
    generation keeps log-probabilities, its tokens', handed out as the text is released (logprobs.ReleasedLogprobs),
    offsets counted from the prompt's start. With log-probabilities the echoed prompt waits for the first step,
    which scores it."""

    def __init__(self, tokenizer: Tokenizer, meta: CompletionMeta, gen: Generation, prompt: str, *, echo: bool) -> None:
        self._tokenizer = tokenizer
        self._meta = meta
        self._gen = gen
        self._prompt = prompt
        self._echo_pending = echo
        self._released = ReleasedLogprobs(gen.token_logprobs) if gen.logprobs is not None else None
        self._offset = len(prompt)  # where the next generated token's text starts

    def first(self) -> list[dict]:
        """The chunks sent at once: the echoed prompt, unless it waits to be scored."""
        if not self._echo_pending or self._released is not None:
            return []
        self._echo_pending = False
        return [text_completion_chunk(self._meta, self._prompt, None)]

    def piece(self, text: str) -> dict | None:
        """A streamed chunk: a piece of released text (None when it carries no text and no token)."""
        chunk = self._chunk(text, None, end=False)
        choice = chunk["choices"][0]
        return chunk if choice["text"] or (choice["logprobs"] and choice["logprobs"]["tokens"]) else None

    def last(self, reason: FinishReason | None) -> dict:
        """The streamed chunk that finishes."""
        return self._chunk("", reason, end=True)

    def whole(self, answer: str) -> dict:
        """The one chunk of an answer that is not streamed (its text and log-probabilities)."""
        return self._chunk(answer, None, end=True)

    def _chunk(self, text: str, reason: FinishReason | None, *, end: bool) -> dict:
        echo = self._take_echo()
        if self._released is None:
            return text_completion_chunk(self._meta, echo + text, reason)
        prompt_entries = (self._gen.prompt_logprobs or []) if echo else []
        scores = completion_logprobs(self._tokenizer, prompt_entries, 0)
        entries = self._released.take(text, uncut_end=end and not self._gen.stopped_by_string)
        after = completion_logprobs(self._tokenizer, entries, self._offset)
        self._offset += sum(len(e.text) for e in entries)
        merged = {key: scores[key] + after[key] for key in after}
        quiet = reason is not None and not echo and not entries  # a finishing chunk with nothing to report
        return text_completion_chunk(self._meta, echo + text, reason, None if quiet else merged)

    def _take_echo(self) -> str:
        echo, self._echo_pending = (self._prompt if self._echo_pending else ""), False
        return echo


@dataclass(frozen=True)
class ReasoningSplit:
    """How a chat answer is split into reasoning and content (reasoning.py): open_at_start, the prompt left a
    `<think>` open; inline_when_streamed, llama-server's deepseek-legacy: a streamed answer's reasoning stays in its
    content, between `<think>` and `</think>` (an answer not streamed is split all the same)."""

    open_at_start: bool = False
    inline_when_streamed: bool = False


class ChatCompletionChunks:
    """A chat completion's chunks for one generation: the role, the content pieces (split into reasoning and content
    with a ReasoningSplit; with tools, a call's text held back and its calls given with the finishing chunk) and, when
    the generation keeps log-probabilities, its tokens', handed out as the text is released
    (logprobs.ReleasedLogprobs)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        meta: CompletionMeta,
        gen: Generation,
        reasoning: ReasoningSplit | None = None,
        tools: ToolUse | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._meta = meta
        self._gen = gen
        self._released = ReleasedLogprobs(gen.token_logprobs) if gen.logprobs is not None else None
        self._reasoning = reasoning
        self._splitter = None if reasoning is None else ReasoningSplitter(open_at_start=reasoning.open_at_start)
        self._inline_tags = {OPEN: False, CLOSE: False}  # deepseek-legacy's tags, once written
        self._tools = tools
        self._held = None if tools is None else tools.held()

    def first(self) -> list[dict]:
        return [chat_completion_chunk(self._meta, {"role": "assistant"}, None)]

    def piece(self, text: str) -> dict | None:
        """A streamed chunk: a piece of released text (None when it carries no text and no token)."""
        scores = self.scores(text, end=False)
        delta = self._delta(
            self._without_calls(Split(content=text) if self._splitter is None else self._splitter.feed(text))
        )
        if not any(delta.values()) and not (scores and scores["content"]):
            return None
        return chat_completion_chunk(self._meta, delta, None, scores)

    def last(self, reason: FinishReason | None) -> dict:
        """The streamed chunk that finishes (with the text held back and the tokens left to report, if any)."""
        scores = self.scores("", end=True)
        split = self._without_calls(Split() if self._splitter is None else self._splitter.finish())
        calls: list[ToolCall] = []
        if self._held is not None and self._tools is not None:
            content, calls = self._held.finish(cut=reason == "length")
            split.content += content
            calls = self._tools.allowed(calls)
        delta: dict[str, Any] = self._delta(split)
        if calls:
            delta["tool_calls"] = [{"index": i, **call.openai(new_call_id())} for i, call in enumerate(calls)]
            reason = tool_finish_reason(reason)
        return chat_completion_chunk(self._meta, delta, reason, scores if scores and scores["content"] else None)

    def message(self, answer: str, reason: FinishReason | None) -> tuple[str, str | None, list[ToolCall]]:
        """A whole answer's content, reasoning (None: not split) and tool calls (reason: why the answer ended)."""
        content, reasoning = answer, None
        if self._reasoning is not None:
            split = split_whole(answer, open_at_start=self._reasoning.open_at_start)
            content, reasoning = split.content, split.reasoning
        if self._tools is None:
            return content, reasoning, []
        content, calls = self._tools.read(content, cut=reason == "length")
        return content, reasoning, calls

    def _without_calls(self, split: Split) -> Split:
        """split with its content's call text held back (reasoning is never read for calls)."""
        return split if self._held is None else Split(split.reasoning, self._held.feed(split.content))

    def _delta(self, split: Split) -> dict[str, str]:
        """A split piece as a delta: its parts that hold text, or with deepseek-legacy all of it as content, the
        reasoning between the tags."""
        if self._reasoning is None or self._splitter is None:
            return {"content": split.content} if split.content else {}
        if not self._reasoning.inline_when_streamed:
            delta = {"reasoning_content": split.reasoning} if split.reasoning else {}
            return {**delta, "content": split.content} if split.content else delta
        text = self._inline_tag(OPEN, self._splitter.reasoned) + split.reasoning
        text += self._inline_tag(CLOSE, self._splitter.closed) + split.content
        return {"content": text} if text else {}

    def _inline_tag(self, tag: str, due: bool) -> str:
        """tag's text the first time it is due, else nothing."""
        if not due or self._inline_tags[tag]:
            return ""
        self._inline_tags[tag] = True
        return tag

    def scores(self, text: str, *, end: bool) -> dict | None:
        """The log-probabilities of the tokens text releases (end: the answer is complete), None when not kept."""
        if self._released is None:
            return None
        entries = self._released.take(text, uncut_end=end and not self._gen.stopped_by_string)
        return chat_logprobs(self._tokenizer, entries)

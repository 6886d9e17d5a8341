"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), which llama-server serves too: the request
turned into a chat completion's (the same template, prompt and sampling), the answer as Anthropic's message (a
thinking block where a thinking model's answer is split, then the text), streamed as its named events."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import Field, field_validator

from turbosparse.generation import Generation
from turbosparse.server.schemas import ChatCompletionRequest, _Body, text_only

THINKING_BLOCKS = ("thinking", "redacted_thinking")


class TextBlock(_Body):
    type: Literal["text"]
    text: str


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        """Text blocks; an earlier answer's thinking blocks, which clients send back, dropped (as llama-server)."""
        if isinstance(content, list):
            content = [b for b in content if not (isinstance(b, dict) and b.get("type") in THINKING_BLOCKS)]
        return text_only(content, "content blocks")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(block.text for block in self.content)


class MessagesRequest(_Body):
    """Anthropic's request: max_tokens, the messages (text), a system prompt, stop_sequences, sampling, stream."""

    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("tools are not supported on /v1/messages (use /v1/chat/completions)")
        return tools

    def chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion's (the system prompt first; unset sampling fields take the server's
        defaults)."""
        system = (
            self.system if isinstance(self.system, str) or self.system is None else "".join(b.text for b in self.system)
        )
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m.role, "content": m.text()} for m in self.messages]
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": self.stop_sequences,
        }
        given = {name: value for name, value in fields.items() if value is not None}
        return ChatCompletionRequest.model_validate(
            {"messages": messages, "max_tokens": self.max_tokens, "stream": self.stream, **given}
        )


class CountTokensRequest(MessagesRequest):
    max_tokens: int = 1  # not read: counting asks for no answer


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(gen: Generation) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence."""
    if gen.stopped_by_string:
        return "stop_sequence", gen.stopping_word
    return ("max_tokens" if gen.finish_reason == "length" else "end_turn"), None


def message(message_id: str, model: str, blocks: list[dict[str, Any]], gen: Generation | None) -> dict[str, Any]:
    """The message object (gen None: a stream's opening one, before any text)."""
    reason, sequence = stop_reason(gen) if gen is not None else (None, None)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {"input_tokens": gen.n_prompt if gen else 0, "output_tokens": gen.n_generated if gen else 0},
    }


def blocks(content: str, reasoning: str | None) -> list[dict[str, Any]]:
    """A whole answer's content blocks: its reasoning as a thinking block, where split off, then its text (an empty
    one only where there is no thinking block, as a stream gives them)."""
    thinking = [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []
    return [*thinking, {"type": "text", "text": content}] if content or not thinking else thinking


class MessageEvents:
    """A streamed answer's events: message_start, then per block content_block_start, its deltas (thinking_delta or
    text_delta) and content_block_stop, then message_delta (stop_reason, usage) and message_stop."""

    def __init__(self, message_id: str, model: str, gen: Generation) -> None:
        self._id, self._model, self._gen = message_id, model, gen
        self._index = -1
        self._open: Literal["thinking", "text"] | None = None

    def first(self, n_prompt: int) -> list[dict[str, Any]]:
        opening = message(self._id, self._model, [], None)
        opening["usage"]["input_tokens"] = n_prompt
        return [{"type": "message_start", "message": opening}]

    def piece(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a chat delta ({"reasoning_content", "content"})."""
        events: list[dict[str, Any]] = []
        for key, kind, field in (("reasoning_content", "thinking", "thinking"), ("content", "text", "text")):
            text = delta.get(key)
            if not text:
                continue
            events += self._open_block(kind)
            events.append({"type": "content_block_delta", "index": self._index,
                           "delta": {"type": f"{kind}_delta", field: text}})  # fmt: skip
        return events

    def last(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events = self.piece(delta)
        if self._open is None:  # an empty answer still has its text block
            events += self._open_block("text")
        events += self._close_block()
        reason, sequence = stop_reason(self._gen)
        events.append({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                       "usage": {"output_tokens": self._gen.n_generated}})  # fmt: skip
        events.append({"type": "message_stop"})
        return events

    def _close_block(self) -> list[dict[str, Any]]:
        """The open block's end (a thinking block's signature first: empty, as llama-server's)."""
        if self._open is None:
            return []
        signature = {"type": "content_block_delta", "index": self._index,
                     "delta": {"type": "signature_delta", "signature": ""}}  # fmt: skip
        stop = {"type": "content_block_stop", "index": self._index}
        return [signature, stop] if self._open == "thinking" else [stop]

    def _open_block(self, kind: Literal["thinking", "text"]) -> list[dict[str, Any]]:
        if self._open == kind:
            return []
        events = self._close_block()
        self._index += 1
        self._open = kind
        start = (
            {"type": "thinking", "thinking": "", "signature": ""}
            if kind == "thinking"
            else {"type": "text", "text": ""}
        )
        return [*events, {"type": "content_block_start", "index": self._index, "content_block": start}]

"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens), which llama-server serves too: the request
turned into a chat completion's (the same template, prompt, sampling and tool calls: tool_use blocks are an
assistant's calls, tool_result blocks the tool messages answering them), the answer as Anthropic's message (a thinking
block where a thinking model's answer is split, the text, then a tool_use block per call), streamed as its named
events."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, field_validator, model_validator

from turbosparse.generation import Generation
from turbosparse.server.schemas import ChatCompletionRequest, _Body, chat_fields_beside, typed_parts
from turbosparse.tool_calls import ToolCall, new_call_id

logger = logging.getLogger(__name__)

BLOCK_TYPES = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")
SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_")  # Anthropic's server tools' types, then a date


class TextBlock(_Body):
    type: Literal["text"]
    text: str


_TEXT_BLOCKS = TypeAdapter(list[TextBlock])


class ToolUseBlock(_Body):
    """An earlier answer's call."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Body):
    """What a call gave back (is_error is taken, not shown to the template: it has no place for it)."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        return typed_parts(content, _TEXT_BLOCKS, ("text",), "tool_result content blocks")

    def text(self) -> str:
        """Text blocks joined as they are, as llama-server joins them."""
        return self.content if isinstance(self.content, str) else "".join(block.text for block in self.content)


class ThinkingBlock(_Body):
    """An earlier answer's reasoning, which clients send back: the template is given it as reasoning_content."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Body):
    """Reasoning Anthropic's servers encrypted: nothing to give a template, dropped."""

    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")
]


_BLOCKS = TypeAdapter(list[ContentBlock])


class AnthropicMessage(_Body):
    """A turn: a user's or an assistant's, or a system message among them (text only), which the API takes too."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _supported(cls, content: Any) -> Any:
        return typed_parts(content, _BLOCKS, BLOCK_TYPES, "content blocks")

    @field_validator("content")
    @classmethod
    def _blocks_of_the_role(cls, content: str | list[Any], info: Any) -> str | list[Any]:
        role = info.data.get("role")
        wrong = {
            "user": (ToolUseBlock, ThinkingBlock, RedactedThinkingBlock),
            "assistant": (ToolResultBlock,),
            "system": (ToolUseBlock, ThinkingBlock, RedactedThinkingBlock, ToolResultBlock),
        }
        for block in content if isinstance(content, list) else ():
            if isinstance(block, wrong.get(role, ())):
                raise ValueError(f"a {role} message cannot hold {block.type} blocks")
        return content

    def chat_messages(self) -> list[dict[str, Any]]:
        """The message as chat messages: a user's tool results as tool messages (first, as they answer the calls
        before them), then its text; an assistant's text, reasoning and calls as one message."""
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        parts = [{"type": "text", "text": b.text} for b in self.content if isinstance(b, TextBlock)]
        if self.role == "system":
            return [{"role": "system", "content": parts}]
        if self.role == "user":
            results = [b for b in self.content if isinstance(b, ToolResultBlock)]
            tool = [{"role": "tool", "tool_call_id": r.tool_use_id, "content": r.text()} for r in results]
            return [*tool, {"role": "user", "content": parts}] if parts or not tool else tool
        message: dict[str, Any] = {"role": "assistant", "content": parts}
        reasoning = "".join(b.thinking for b in self.content if isinstance(b, ThinkingBlock))
        if reasoning:
            message["reasoning_content"] = reasoning
        calls = [b for b in self.content if isinstance(b, ToolUseBlock)]
        if calls:
            message["tool_calls"] = [ToolCall(c.name, json.dumps(c.input, ensure_ascii=False)).openai(c.id)
                                     for c in calls]  # fmt: skip
        return [message]


class Tool(_Body):
    """A tool the client runs: its name, description and the JSON schema of its input."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        # always a description, "" where none is given (as llama-server): templates write it without asking
        description = self.description or ""
        return {"type": "function", "function": {"name": self.name, "description": description,
                                                 "parameters": self.input_schema}}  # fmt: skip


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError('{"type": "tool"} needs the tool\'s name')
        return self

    def openai(self) -> Any:
        """As a chat completion's tool_choice ("any": one call or more; "tool": a call of the named one)."""
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class OutputFormat(_Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    """output_config: format, the answer's JSON schema (structured outputs), held to by the chat route's grammar;
    effort not read."""

    format: OutputFormat | None = None


class MessagesRequest(_Body):
    """Anthropic's request: max_tokens, the messages, a system prompt, stop_sequences, sampling, tools and
    tool_choice, output_config's JSON schema, thinking on or off, stream."""

    model: str | None = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    thinking: dict[str, Any] | None = None  # its type: enabled / disabled the template's enable_thinking

    @field_validator("tools", mode="before")
    @classmethod
    def _client_tools(cls, tools: Any) -> Any:
        """Tools the client runs (custom ones: name, description, input_schema); Anthropic's server tools (web search,
        web fetch, code execution), which only Anthropic's servers run, dropped with a warning (clients send them
        beside their own); other types refused (ValueError naming the first)."""
        if not isinstance(tools, list):
            return tools
        kept = []
        for i, tool in enumerate(tools):
            kind = (tool.get("type") or "custom") if isinstance(tool, dict) else "custom"
            if kind == "custom":
                kept.append(tool)
            elif isinstance(kind, str) and kind.startswith(SERVER_TOOLS):
                logger.warning(
                    "Anthropic's server tool %r (%s) dropped: only Anthropic runs it", tool.get("name"), kind
                )
            else:
                raise ValueError(
                    f"tools[{i}] is of type {kind!r}: give custom tools (name, description, input_schema), which the "
                    "client runs"
                )
        return kept

    def chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion's (the system prompt first; unset sampling fields take the server's
        defaults; the chat completion's own fields given beside Anthropic's, chat_template_kwargs say, passed on as
        llama-server passes them)."""
        system = (
            self.system if isinstance(self.system, str) or self.system is None else "".join(b.text for b in self.system)
        )
        messages = [{"role": "system", "content": system}] if system else []
        messages += [chat_message for m in _merged(self.messages) for chat_message in m.chat_messages()]
        single = self.tool_choice is not None and self.tool_choice.disable_parallel_tool_use
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": self.stop_sequences,
            "tools": [tool.openai() for tool in self.tools] if self.tools else None,
            "tool_choice": self.tool_choice.openai() if self.tool_choice is not None else None,
            "parallel_tool_calls": False if single else None,
            "response_format": self._response_format(),
        }
        given = {name: value for name, value in fields.items() if value is not None}
        extra = chat_fields_beside(self.model_extra, frozenset({"stop"}))  # its stop_sequences
        # thinking turned on or off as a thinking template (Qwen3's) takes it; budget_tokens is not read, and
        # chat_template_kwargs given beside win
        kind = (self.thinking or {}).get("type")
        switch = {"enabled": True, "disabled": False}.get(kind) if isinstance(kind, str) else None
        variables = extra.get("chat_template_kwargs")
        if switch is not None and isinstance(variables, dict | None):
            extra["chat_template_kwargs"] = {"enable_thinking": switch, **(variables or {})}
        return ChatCompletionRequest.model_validate(
            {**extra, "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream, **given}
        )

    def _response_format(self) -> dict[str, Any] | None:
        form = self.output_config.format if self.output_config is not None else None
        return None if form is None else {"type": "json_schema", "json_schema": {"schema": form.schema_}}


def _merged(messages: list[AnthropicMessage]) -> list[AnthropicMessage]:
    """Consecutive messages of one role as one, their blocks in order (as Anthropic combines consecutive turns)."""
    out: list[AnthropicMessage] = []
    for message in messages:
        if out and out[-1].role == message.role:
            blocks = [_as_blocks(out[-1].content), _as_blocks(message.content)]
            out[-1] = AnthropicMessage.model_construct(role=message.role, content=[*blocks[0], *blocks[1]])
        else:
            out.append(message)
    return out


def _as_blocks(content: str | list[Any]) -> list[Any]:
    return [TextBlock(type="text", text=content)] if isinstance(content, str) else content


class CountTokensRequest(MessagesRequest):
    max_tokens: int = 1  # not read: counting asks for no answer


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(gen: Generation, called: bool, max_tokens: int | None) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence (called: the answer holds tool calls; max_tokens: the answer's
    limit, the request's or the server's -n)."""
    if gen.finish_reason == "length":  # also where calls were read: the last one may have been cut off
        # short of the limit: the slot is full (Anthropic's newer models say so, where they once refused)
        limited = max_tokens is not None and gen.n_generated >= max_tokens
        return ("max_tokens" if limited else "model_context_window_exceeded"), None
    if called:
        return "tool_use", None
    if gen.stopped_by_string:
        return "stop_sequence", gen.stopping_word
    return "end_turn", None


def message(
    message_id: str, model: str, blocks: list[dict[str, Any]], gen: Generation | None, max_tokens: int | None = None
) -> dict[str, Any]:
    """The message object (gen None: a stream's opening one, before any text; max_tokens: the answer's limit)."""
    called = any(block["type"] == "tool_use" for block in blocks)
    reason, sequence = stop_reason(gen, called, max_tokens) if gen is not None else (None, None)
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


def tool_use_block(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": json.loads(arguments)}


def blocks(content: str, reasoning: str | None, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """A whole answer's content blocks: its reasoning as a thinking block, where split off, its text (an empty one
    only where there is nothing else, as a stream gives them), then its calls."""
    thinking = [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []
    text = [{"type": "text", "text": content}] if content or not (thinking or calls) else []
    return [*thinking, *text, *(tool_use_block(new_call_id(), c.name, c.arguments) for c in calls)]


EMPTY_BLOCKS = {"thinking": {"type": "thinking", "thinking": "", "signature": ""}, "text": {"type": "text", "text": ""}}


class MessageEvents:
    """A streamed answer's events: message_start, then per block content_block_start, its deltas (thinking_delta,
    text_delta, or a call's input as one input_json_delta) and content_block_stop, then message_delta (stop_reason,
    usage) and message_stop."""

    def __init__(self, message_id: str, model: str, gen: Generation, max_tokens: int | None) -> None:
        self._id, self._model, self._gen, self._max_tokens = message_id, model, gen, max_tokens
        self._index = -1
        self._open: Literal["thinking", "text", "tool_use"] | None = None

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
            events += self._open_block(kind, dict(EMPTY_BLOCKS[kind]))
            events.append({"type": "content_block_delta", "index": self._index,
                           "delta": {"type": f"{kind}_delta", field: text}})  # fmt: skip
        return events

    def last(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of the finishing chat delta (its calls, if any, in "tool_calls"), then the message's end."""
        events = self.piece(delta)
        calls = delta.get("tool_calls") or []
        for call in calls:
            start = tool_use_block(call["id"], call["function"]["name"], "{}")
            events += self._open_block("tool_use", start, always=True)
            arguments = {"type": "input_json_delta", "partial_json": call["function"]["arguments"]}
            events.append({"type": "content_block_delta", "index": self._index, "delta": arguments})
        if self._open is None:  # an empty answer still has its text block
            events += self._open_block("text", dict(EMPTY_BLOCKS["text"]))
        events += self._close_block()
        reason, sequence = stop_reason(self._gen, bool(calls), self._max_tokens)
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

    def _open_block(
        self, kind: Literal["thinking", "text", "tool_use"], start: dict[str, Any], *, always: bool = False
    ) -> list[dict[str, Any]]:
        """A new block of kind opening with start (the open one closed first), unless one of kind is open (always:
        each call its own block)."""
        if self._open == kind and not always:
            return []
        events = self._close_block()
        self._index += 1
        self._open = kind
        return [*events, {"type": "content_block_start", "index": self._index, "content_block": start}]

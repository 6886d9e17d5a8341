"""OpenAI's Responses API (POST /v1/responses), which llama-server serves too and newer OpenAI clients and agents use:
the request turned into a chat completion's (instructions first, input items as messages: function_call items an
assistant's calls, function_call_output items tool messages, reasoning items the next assistant message's reasoning),
the answer as a response's output items (a reasoning item where a thinking model's answer is split, the message, a
function_call item per call), streamed as the Responses API's named events, numbered. Nothing is stored: the whole
conversation comes with each request (previous_response_id is refused)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from turbosparse.generation import Generation
from turbosparse.logprobs import MAX_TOP_LOGPROBS
from turbosparse.server.errors import validation_text
from turbosparse.server.schemas import ChatCompletionRequest, _Body, chat_fields_beside, typed_parts
from turbosparse.tool_calls import ToolCall, new_call_id

logger = logging.getLogger(__name__)

# tools OpenAI's servers run (computer use: the computer_use_preview and computer types)
HOSTED_TOOLS = ("web_search", "file_search", "code_interpreter", "image_generation", "computer", "mcp", "tool_search")
PART_TYPES = ("input_text", "output_text", "refusal")
LOGPROBS_INCLUDE = "message.output_text.logprobs"  # include's entry that asks for the text's log-probabilities


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class TextPart(_Body):
    """input_text (a user's), output_text (an earlier answer's) or a refusal."""

    type: Literal["input_text", "output_text", "refusal"]
    text: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _has_its_text(self) -> TextPart:
        needed = "refusal" if self.type == "refusal" else "text"
        if getattr(self, needed) is None:
            raise ValueError(f"a part of type {self.type!r} needs {needed}")
        return self

    def value(self) -> str:
        return (self.refusal if self.type == "refusal" else self.text) or ""


_PARTS = TypeAdapter(list[TextPart])


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        return typed_parts(content, _PARTS, PART_TYPES, "content parts")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.value() for p in self.content)


class FunctionCallItem(_Body):
    """An earlier answer's call."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Body):
    """What a call gave back."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[TextPart]

    @field_validator("output", mode="before")
    @classmethod
    def _text_only(cls, output: Any) -> Any:
        return typed_parts(output, _PARTS, PART_TYPES, "output parts")

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.value() for p in self.output)


class ReasoningText(_Body):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Body):
    """An earlier answer's reasoning: the next assistant message's reasoning_content (its text, else its summary)."""

    type: Literal["reasoning"]
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None

    def text(self) -> str:
        """Its reasoning text, else its summary's parts (paragraphs)."""
        if self.content:
            return "".join(part.text for part in self.content)
        return "\n\n".join(part.text for part in self.summary)


InputItem = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem, Field(discriminator="type")
]
_ITEMS = TypeAdapter(list[InputItem])
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


class FunctionTool(_Body):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None

    def chat(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "description": self.description or ""}
        return {"type": "function", "function": function | ({"parameters": self.parameters} if self.parameters else {})}


class ResponsesRequest(_Body):
    """The Responses API's request: input (text, or items), instructions, max_output_tokens, sampling, function tools
    and tool_choice, text.format (JSON modes), stream."""

    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[FunctionTool] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    # log-probabilities of the answer's text: include "message.output_text.logprobs" (or top_logprobs given), with
    # top_logprobs alternatives per token
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    previous_response_id: str | None = None
    conversation: Any = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """A field sent as null takes its default, as on the chat route."""
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _has_input(self) -> ResponsesRequest:
        if self.input is None and not self.instructions:
            raise ValueError("give input, instructions or both")
        return self

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, choice: Any) -> Any:
        """The Responses API's tool_choice shapes (the chat completion's {"type": "function", "function": ...} too,
        as llama-server takes it)."""
        if choice is None or choice in ("none", "auto", "required"):
            return choice
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "function" and (isinstance(choice.get("name"), str) or isinstance(choice.get("function"), dict)):
            return choice
        allowed = kind == "allowed_tools" and isinstance(choice.get("tools"), list)
        if allowed and choice.get("mode", "auto") in ("auto", "required"):
            return choice
        if isinstance(kind, str) and kind.startswith(HOSTED_TOOLS):
            return choice
        raise ValueError(
            'tool_choice must be "none", "auto", "required", {"type": "function", "name": ...} or '
            '{"type": "allowed_tools", "mode": "auto" or "required", "tools": [...]}'
        )

    @field_validator("text")
    @classmethod
    def _format(cls, text: dict[str, Any] | None) -> dict[str, Any] | None:
        """text.format: text, json_object or json_schema with its schema."""
        form = (text or {}).get("format")
        if form is None:
            return text
        if not isinstance(form, dict) or form.get("type", "text") not in ("text", "json_object", "json_schema"):
            raise ValueError('text.format must be of type "text", "json_object" or "json_schema"')
        if form.get("type") == "json_schema" and not isinstance(form.get("schema"), dict):
            raise ValueError('text.format of type "json_schema" needs its schema (an object)')
        return text

    @field_validator("input", mode="before")
    @classmethod
    def _items(cls, value: Any) -> Any:
        """Items read as items (a message may leave out its type), naming the first bad one's field."""
        if not isinstance(value, list):
            return value
        if not value:
            raise ValueError("the input is empty")
        items = [{"type": "message", **i} if isinstance(i, dict) and "type" not in i else i for i in value]
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("type") not in ITEM_TYPES:
                raise ValueError(
                    f"input[{i}] is of type {item.get('type')!r}: items of type {', '.join(ITEM_TYPES)} are supported "
                    "(nothing is stored here: send the whole conversation, not references to it)"
                )
        try:
            return _ITEMS.validate_python(items)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"input item {'.'.join(str(p) for p in first['loc'])}: {validation_text(first)}") from None

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools(cls, tools: Any) -> Any:
        """Function tools; tools OpenAI runs (web search, file search, ...) dropped with a warning, as they are
        sent beside the client's own; other types refused (ValueError naming the first)."""
        if not isinstance(tools, list):
            return tools
        kept = []
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind == "function":
                kept.append(tool)
            elif isinstance(kind, str) and kind.startswith(HOSTED_TOOLS):
                logger.warning("the hosted tool %r dropped: only OpenAI runs it", kind)
            else:
                raise ValueError(f"tools[{i}] is of type {kind!r}: function tools are supported")
        return kept

    @field_validator("previous_response_id", "conversation")
    @classmethod
    def _not_stored(cls, value: Any) -> Any:
        if value:
            raise ValueError("responses are not stored here: send the whole conversation in input")
        return value

    def chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion's (unset sampling fields take the server's defaults; the chat
        completion's own fields given beside the Responses API's are passed on, as llama-server passes them)."""
        tools, choice = self._tools_and_choice()
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_output_tokens,
            "tools": [tool.chat() for tool in tools] if tools else None,
            "tool_choice": choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "response_format": _response_format(self.text),
            "logprobs": True if self.wants_logprobs else None,
            "top_logprobs": self.top_logprobs if self.wants_logprobs else None,
        }
        given = {name: value for name, value in fields.items() if value is not None}
        extra = chat_fields_beside(self.model_extra)
        body = {**extra, "messages": self.messages(), "stream": self.stream, **given}
        return ChatCompletionRequest.model_validate(body)

    @property
    def wants_logprobs(self) -> bool:
        return LOGPROBS_INCLUDE in (self.include or []) or self.top_logprobs is not None

    def _tools_and_choice(self) -> tuple[list[FunctionTool], Any]:
        """The tools the answer may call and the chat completion's tool_choice: {"type": "function", "name"} names a
        function; allowed_tools keeps the tools it lists, its mode the choice; a hosted tool's choice (its tool
        dropped) is "auto"."""
        tools, choice = list(self.tools or []), self.tool_choice
        if not isinstance(choice, dict):
            return tools, choice
        kind = choice.get("type")
        if kind == "function" and "function" not in choice:
            return tools, {"type": "function", "function": {"name": choice.get("name")}}
        if kind == "allowed_tools":
            names = {t.get("name") for t in choice["tools"] if isinstance(t, dict) and t.get("type") == "function"}
            return [tool for tool in tools if tool.name in names], choice.get("mode", "auto")
        if isinstance(kind, str) and kind.startswith(HOSTED_TOOLS):
            logger.warning("tool_choice %r names a hosted tool, which is dropped: auto", kind)
            return tools, "auto"
        return tools, choice

    def messages(self) -> list[dict[str, Any]]:
        """Instructions, then the input as chat messages: an assistant's text and calls join the assistant message
        before them (or make one), with the reasoning items just before them as its reasoning; a call's output is a
        tool message; reasoning not followed by an answer of its turn is dropped."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if self.input is None:
            return messages
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        reasoning: list[str] = []
        for item in self.input:
            if isinstance(item, ReasoningItem):
                reasoning.append(item.text())
                continue
            if isinstance(item, FunctionCallOutputItem):
                reasoning = []  # another turn's
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
                continue
            if isinstance(item, MessageItem) and item.role != "assistant":
                reasoning = []
                messages.append({"role": item.role, "content": item.text()})
                continue
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            answer = messages[-1]
            if reasoning:
                earlier = [answer["reasoning_content"]] if answer.get("reasoning_content") else []
                answer["reasoning_content"], reasoning = "\n\n".join([*earlier, *reasoning]), []
            if isinstance(item, MessageItem):
                answer["content"] = "\n".join(filter(None, [answer["content"], item.text()]))
            else:
                call = ToolCall(item.name, item.arguments).openai(item.call_id)
                answer["tool_calls"] = [*answer.get("tool_calls", []), call]
        return messages


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """text.format as a chat completion's response_format (None: plain text)."""
    form = (text or {}).get("format")
    if form is None or form.get("type", "text") == "text":
        return None
    if form.get("type") == "json_schema":
        schema = {key: form[key] for key in ("name", "schema", "strict", "description") if key in form}
        return {"type": "json_schema", "json_schema": schema}
    return dict(form)


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An answer's text; logprobs: its tokens' (the chat completion's entries), where asked for."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(
    item_id: str, text: str, status: str = "completed", logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    content = [text_part(text, logprobs)] if status != "in_progress" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}  # fmt: skip


def output_items(
    content: str,
    reasoning: str | None,
    calls: list[ToolCall],
    *,
    cut: bool,
    logprobs: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """A whole answer's output: its reasoning, where split off, its text (an empty message only where there is
    nothing else; logprobs: its tokens', where asked for), then its calls; cut (it ran out of tokens): the text or
    reasoning it ended in is "incomplete"."""
    items = [reasoning_item(new_id("rs"), reasoning)] if reasoning else []
    if content or not (reasoning or calls):
        items.append(message_item(new_id("msg"), content, logprobs=logprobs))
    if cut and items and not calls:
        items[-1]["status"] = "incomplete"
    return items + [call_item(new_id("fc"), new_call_id(), c.name, c.arguments) for c in calls]


class ResponseObject:
    """The response object's fields for one request (its output and status filled in at the end): the request as
    the chat completion it became (its sampling as used), and count, the tokens of a text (reasoning_tokens)."""

    def __init__(self, request: ResponsesRequest, chat: ChatCompletionRequest, model: str,
                 count: Callable[[str], int]) -> None:  # fmt: skip
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self._request, self._chat, self._model, self._count = request, chat, model, count

    def __call__(
        self, output: list[dict[str, Any]], gen: Generation | None, failure: str | None = None
    ) -> dict[str, Any]:
        """gen None: the response as it starts (in progress, no usage); failure: why the generation failed."""
        request = self._request
        status = "in_progress" if gen is None else "incomplete" if gen.finish_reason == "length" else "completed"
        status = "failed" if failure is not None else status
        usage = None
        if gen is not None:
            reasoning = sum(self._count(p["text"]) for i in output if i["type"] == "reasoning" for p in i["content"])
            usage = {"input_tokens": gen.n_prompt,
                     "input_tokens_details": {"cached_tokens": gen.n_cached, "cache_write_tokens": 0},
                     "output_tokens": gen.n_generated, "output_tokens_details": {"reasoning_tokens": reasoning},
                     "total_tokens": gen.n_prompt + gen.n_generated}  # fmt: skip
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": {"code": "server_error", "message": failure} if failure is not None else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions,
            "max_output_tokens": self._chat.max_tokens,  # the limit the answer had (the server's -n where unset)
            "model": self._model,
            "output": output,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": None,
            "store": False,
            "temperature": self._chat.temperature,
            "text": {"format": (request.text or {}).get("format") or {"type": "text"}},
            "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
            "tools": [tool.model_dump() for tool in request.tools or []],
            "top_p": self._chat.top_p,
            "top_logprobs": request.top_logprobs,
            "truncation": "disabled",
            "usage": usage,
            "metadata": request.metadata or {},
        }


class ResponseEvents:
    """A streamed response's events, numbered: response.created and response.in_progress; per output item its
    output_item.added, content_part.added, the deltas (reasoning_text.delta or output_text.delta), their .done,
    content_part.done and output_item.done (a call: function_call_arguments.delta and .done, the arguments whole, at
    the answer's end); then response.completed or response.incomplete with the whole response (a failure: an error
    event, then response.failed)."""

    def __init__(self, response: ResponseObject, gen: Generation) -> None:
        self._response = response
        self._gen = gen
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # the finished items
        self._open: dict[str, Any] | None = None  # the item being streamed: its kind, id, text and logprobs so far
        self._unplaced: list[dict[str, Any]] = []  # log-probabilities waiting for the message text they go with

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def first(self) -> list[dict[str, Any]]:
        return [
            self._event(kind, response=self._response([], None))
            for kind in ("response.created", "response.in_progress")
        ]

    def failure(self, message: str) -> list[dict[str, Any]]:
        """The open item's end ("incomplete"), an error event, then response.failed with the items so far."""
        events = self._close("incomplete")
        events.append(self._event("error", code="server_error", message=message, param=None))
        return [*events, self._event("response.failed", response=self._response(self._output, self._gen, message))]

    def piece(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a chat delta ({"reasoning_content", "content"}; "logprobs": its chunk's entries, where asked
        for: every generated token's, as the chat route gives them, go with the message's text, as a whole answer's
        do: a reasoning's or a call's tokens too, with the text that follows them)."""
        events: list[dict[str, Any]] = []
        self._unplaced += delta.get("logprobs") or []
        for key, kind in (("reasoning_content", "reasoning"), ("content", "message")):
            text = delta.get(key)
            if not text:
                continue
            if self._open is None or self._open["kind"] != kind:
                events += self._close() + self._start(kind)
            assert self._open is not None
            self._open["text"] += text
            where = {"item_id": self._open["id"], "output_index": len(self._output), "content_index": 0}
            if kind == "reasoning":
                events.append(self._event("response.reasoning_text.delta", **where, delta=text))
            else:
                logprobs, self._unplaced = self._unplaced, []
                self._open["logprobs"] += logprobs
                events.append(self._event("response.output_text.delta", **where, delta=text, logprobs=logprobs))
        return events

    def last(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of the finishing chat delta (its calls, if any, in "tool_calls"), then the response's end."""
        events = self.piece(delta)
        calls = delta.get("tool_calls") or []
        if self._open is None and not calls and not self._output:  # an empty answer still has its message
            events += self._start("message")
        events += self._close("incomplete" if self._gen.finish_reason == "length" and not calls else "completed")
        for call in calls:
            function = call["function"]
            item = call_item(new_id("fc"), call["id"], function["name"], function["arguments"])
            where = {"item_id": item["id"], "output_index": len(self._output)}
            events.append(self._event("response.output_item.added", output_index=len(self._output),
                                      item={**item, "arguments": "", "status": "in_progress"}))  # fmt: skip
            events.append(self._event("response.function_call_arguments.delta", **where, delta=item["arguments"]))
            events.append(self._event("response.function_call_arguments.done", **where, name=item["name"],
                                      arguments=item["arguments"]))  # fmt: skip
            events.append(self._event("response.output_item.done", output_index=len(self._output), item=item))
            self._output.append(item)
        response = self._response(self._output, self._gen)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [*events, self._event(kind, response=response)]

    def _start(self, kind: str) -> list[dict[str, Any]]:
        item_id = new_id("rs" if kind == "reasoning" else "msg")
        self._open = {"kind": kind, "id": item_id, "text": "", "logprobs": []}
        index = len(self._output)
        if kind == "reasoning":
            item, part = reasoning_item(item_id, "", "in_progress"), {"type": "reasoning_text", "text": ""}
        else:
            item, part = message_item(item_id, "", "in_progress"), text_part("")
        return [
            self._event("response.output_item.added", output_index=index, item=item),
            self._event("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part),
        ]

    def _close(self, status: str = "completed") -> list[dict[str, Any]]:
        """The open item's end (status: "incomplete" where the answer ran out of tokens in it)."""
        if self._open is None:
            return []
        kind, item_id, text, logprobs = self._open["kind"], self._open["id"], self._open["text"], self._open["logprobs"]
        self._open = None
        where = {"item_id": item_id, "output_index": len(self._output), "content_index": 0}
        if kind == "reasoning":
            item = reasoning_item(item_id, text, status)
            done = self._event("response.reasoning_text.done", **where, text=text)
        else:
            logprobs, self._unplaced = logprobs + self._unplaced, []
            item = message_item(item_id, text, status, logprobs)
            done = self._event("response.output_text.done", **where, text=text, logprobs=logprobs)
        part = self._event("response.content_part.done", **where, part=item["content"][0])
        finished = self._event("response.output_item.done", output_index=len(self._output), item=item)
        self._output.append(item)
        return [done, part, finished]

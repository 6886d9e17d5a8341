"""OpenAI's Responses API (/v1/responses), driven by the official openai SDK: the chat route's answer as output
items, whole and streamed (the SDK's own stream accumulator checks the events), tool calls and their round trip,
reasoning items, JSON formats, and what it refuses."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import openai
import pytest
from test_tool_calls import HERMES, QUESTION, TIME, WEATHER

from turbosparse.server.responses import ResponsesRequest

TOOLS = [{"type": "function", **tool["function"]} for tool in (WEATHER, TIME)]


def _client(path: Any, template: str | None = None) -> Any:
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    return TestClient(create_app(ServerConfig(str(path), n_ctx=1024, n_threads=2, chat_template=template)))


def _ready(client: Any) -> openai.OpenAI:
    deadline = time.monotonic() + 120
    while client.get("/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)


def streamed(sdk: openai.OpenAI, kinds: list[tuple[str, int]] | None = None, **options: Any) -> Any:
    """The response the SDK's stream accumulator builds (its final event's where the answer is incomplete: the SDK
    gives a final response for response.completed only); kinds receives each event's type and number."""
    with sdk.responses.stream(**options) as stream:
        for event in stream:
            if kinds is not None:
                kinds.append((event.type, event.sequence_number))
        if event.type == "response.incomplete":
            return event.response
        return stream.get_final_response()


def test_a_response_is_the_chat_routes_answer_whole_and_streamed(smollm2_path: Any) -> None:
    with _client(smollm2_path) as http:
        sdk = _ready(http)
        brief = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a large animal."}]
        chat = sdk.chat.completions.create(model="x", max_tokens=12, temperature=0, messages=brief)
        response = sdk.responses.create(model="x", instructions="Be brief.", input="Name a large animal.",
                                        max_output_tokens=12, temperature=0)  # fmt: skip
        assert response.output_text == chat.choices[0].message.content
        assert (response.usage.input_tokens, response.usage.output_tokens) == (
            chat.usage.prompt_tokens, chat.usage.completion_tokens)  # fmt: skip
        finished = chat.choices[0].finish_reason == "stop"
        assert response.status == ("completed" if finished else "incomplete")
        assert (
            response.incomplete_details is None
            if finished
            else response.incomplete_details.reason == "max_output_tokens"
        )
        assert [item.type for item in response.output] == ["message"] and response.id.startswith("resp_")

        kinds: list[tuple[str, int]] = []
        final = streamed(sdk, kinds, model="x", instructions="Be brief.", input="Name a large animal.",
                         max_output_tokens=12, temperature=0)  # fmt: skip
        assert final.output_text == response.output_text and final.status == response.status
        assert [n for _, n in kinds] == list(range(len(kinds)))
        assert [k for k, _ in kinds[:4]] == ["response.created", "response.in_progress", "response.output_item.added",
                                             "response.content_part.added"]  # fmt: skip
        assert kinds[-1][0] == ("response.completed" if finished else "response.incomplete")

        # an earlier answer's text and a final assistant message (continued): a reasoning item where it opens a think
        opened = [{"role": "user", "content": "Name a large animal."}, {"role": "assistant", "content": "<think>"}]
        thinking = sdk.responses.create(model="x", max_output_tokens=24, temperature=0, input=opened)
        assert thinking.output[0].type == "reasoning" and thinking.output[0].content[0].text, thinking
        final = streamed(sdk, model="x", max_output_tokens=24, temperature=0, input=opened)
        assert [i.type for i in final.output] == [i.type for i in thinking.output]
        assert final.output[0].content[0].text == thinking.output[0].content[0].text

        # JSON formats
        schema = {
            "type": "object",
            "properties": {"animal": {"type": "string", "maxLength": 12}},
            "required": ["animal"],
        }
        fmt = {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}}
        answer = sdk.responses.create(model="x", input="Name a large animal.", text=fmt, max_output_tokens=40,
                                      temperature=0)  # fmt: skip
        assert isinstance(json.loads(answer.output_text)["animal"], str)

        # an answer cut short: incomplete, its last item too; a thinking answer's reasoning tokens counted
        cut = sdk.responses.create(model="x", input="Tell me a long story.", max_output_tokens=4, temperature=0)
        assert (cut.status, cut.output[-1].status) == ("incomplete", "incomplete")
        assert thinking.usage.output_tokens_details.reasoning_tokens > 0
        counted = sdk.responses.input_tokens.count(model="x", instructions="Be brief.", input="Name a large animal.")
        assert counted.input_tokens == response.usage.input_tokens
        # input is optional (instructions alone), and the route is under the bare path too, as /responses is
        alone = sdk.responses.input_tokens.count(model="x", instructions="Be brief.").input_tokens
        bare = http.post("/responses/input_tokens", json={"instructions": "Be brief.", "input": "Name a large animal."})
        assert 0 < alone < counted.input_tokens == bare.json()["input_tokens"], bare.text

        for bad, match in [
            ({"conversation": "conv_1"}, "not stored"),
            ({"input": []}, "the input is empty"),
            ({"previous_response_id": "resp_1"}, "not stored"),
            ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
            ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input_image"),
            ({"input": [{"type": "function_call", "name": "f"}]}, "call_id"),
            ({"tools": [{"type": "custom", "name": "f"}]}, "function tools are supported"),
            ({"temperature": -1}, "temperature"),
            ({"input": None}, "give input, instructions or both"),
            ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, r"content parts 0\.text"),
            ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "needs text"),
            (
                {"input": [{"type": "function_call_output", "call_id": "a", "output": [{"type": "refusal"}]}]},
                "output parts 0.*needs refusal",
            ),
            ({"tool_choice": {"type": "function"}}, r'tool_choice must be .*\{"type": "function", "name": \.\.\.\}'),
            ({"tool_choice": {"type": "allowed_tools", "mode": "auto"}}, "allowed_tools"),
            ({"text": {"format": {"type": "json_schema", "name": "a"}}}, 'text.format of type "json_schema" needs'),
            ({"text": {"format": {"type": "yaml"}}}, "text.format must be of type"),
        ]:
            reply = http.post("/v1/responses", json={"input": "Hi", **bad})
            assert reply.status_code == 400 and re.search(match, reply.json()["error"]["message"]), reply.text
        # a prompt past the context: llama-server's error with its counts, as on the chat route
        error = http.post("/v1/responses", json={"input": "Hi " * 1100}).json()["error"]
        assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 1024, error
        assert error["n_prompt_tokens"] > 1024, error


def test_a_responses_logprobs_are_the_chat_routes(smollm2_path: Any) -> None:
    """include ["message.output_text.logprobs"] and top_logprobs: the text's tokens' log-probabilities as the chat
    route gives them, whole and streamed (they were dropped); completed_at set on a completed response."""
    with _client(smollm2_path) as http:
        sdk = _ready(http)
        question = "Name a large animal in one word."
        chat = sdk.chat.completions.create(model="x", max_tokens=24, temperature=0, logprobs=True, top_logprobs=2,
                                           messages=[{"role": "user", "content": question}])  # fmt: skip
        expected = [entry.model_dump() for entry in chat.choices[0].logprobs.content]
        assert expected and all(len(entry["top_logprobs"]) == 2 for entry in expected)
        options: dict[str, Any] = {"model": "x", "input": question, "max_output_tokens": 24, "temperature": 0,
                                   "include": ["message.output_text.logprobs"], "top_logprobs": 2}  # fmt: skip
        response = sdk.responses.create(**options)
        assert [p.model_dump() for p in response.output[0].content[0].logprobs] == expected
        assert response.top_logprobs == 2
        assert (response.completed_at is not None) == (response.status == "completed")
        assert response.status == "incomplete" or response.completed_at >= response.created_at

        final = streamed(sdk, **options)
        assert [p.model_dump() for p in final.output[0].content[0].logprobs] == expected
        with sdk.responses.stream(**options) as stream:
            deltas = [p.model_dump() for e in stream if e.type == "response.output_text.delta" for p in e.logprobs]
        assert deltas == expected[: len(deltas)] and deltas  # a token whose text never came goes with .done only
        # not asked for: none
        plain = sdk.responses.create(model="x", input=question, max_output_tokens=24, temperature=0)
        assert plain.output[0].content[0].logprobs == [] and plain.output_text == response.output_text


def test_responses_call_tools_as_the_chat_route(smollm2_path: Any) -> None:
    with _client(smollm2_path, HERMES) as http:
        sdk = _ready(http)
        chat = sdk.chat.completions.create(model="x", messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=60, temperature=0)  # fmt: skip
        expected = [(c.function.name, json.loads(c.function.arguments)) for c in chat.choices[0].message.tool_calls]
        options = {"model": "x", "input": QUESTION, "tools": TOOLS, "tool_choice": "required",
                   "parallel_tool_calls": False, "max_output_tokens": 60, "temperature": 0}  # fmt: skip
        response = sdk.responses.create(**options)
        calls = [item for item in response.output if item.type == "function_call"]
        assert [(c.name, json.loads(c.arguments)) for c in calls] == expected and response.status == "completed"
        assert all(len(c.call_id) == 9 and c.call_id.isalnum() for c in calls)  # the chat route's ids
        final = streamed(sdk, **options)
        assert [(i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"] == expected
        named = sdk.responses.create(**{**options, "tool_choice": {"type": "function", "name": "get_time"}})
        assert [i.name for i in named.output if i.type == "function_call"] == ["get_time"]

        # the call and its output sent back: the chat route's history, the hosted tools dropped
        call = calls[0]
        history = [*QUESTION, {"type": "function_call", "call_id": call.call_id, "name": call.name,
                               "arguments": call.arguments}, {"type": "function_call_output", "call_id": call.call_id,
                                                              "output": "Sunny"}]  # fmt: skip
        chat_history = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny"}]  # fmt: skip
        again = sdk.responses.create(model="x", input=history, tools=[*TOOLS, {"type": "web_search"}],
                                     max_output_tokens=1)  # fmt: skip
        chat = sdk.chat.completions.create(model="x", messages=chat_history, tools=[WEATHER, TIME], max_tokens=1)
        assert again.usage.input_tokens == chat.usage.prompt_tokens

        # the chat route's errors name this API's fields
        both = {"input": "Hi", "tools": TOOLS, "text": {"format": {"type": "json_object"}}}
        for path in ("/v1/responses", "/v1/responses/input_tokens"):
            error = http.post(path, json=both).json()["error"]
            assert error["param"] == "tools" and "tools and text.format both constrain" in error["message"], error


SUMMARY_A = {"type": "summary_text", "text": "A"}


def test_input_items_become_chat_messages() -> None:
    """An assistant's text and calls join the assistant message before them, the reasoning items just before them its
    reasoning; call outputs are tool messages; reasoning of a turn that ended unanswered is dropped; messages without
    a type are messages."""
    request = ResponsesRequest.model_validate({"instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Time?"}]},
        {"type": "reasoning", "summary": [SUMMARY_A, {"type": "summary_text", "text": "tool."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "Both."}]},
        {"type": "function_call", "call_id": "abcdefghi", "name": "get_time", "arguments": "{}"},
        {"type": "function_call", "call_id": "jklmnopqr", "name": "get_date", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "abcdefghi", "output": "12:00"},
        {"type": "function_call_output", "call_id": "jklmnopqr", "output": [{"type": "input_text", "text": "May"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Again."}]},
        {"type": "function_call", "call_id": "stuvwxyz1", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "stuvwxyz1", "output": "12:01"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Noon."}]},
        {"type": "message", "role": "assistant", "content": "More later."},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Unanswered."}]},
        {"role": "user", "content": "Thanks."},
    ]})  # fmt: skip
    call = {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    date = {"type": "function", "function": {"name": "get_date", "arguments": "{}"}}
    assert request.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Looking.", "reasoning_content": "A\n\ntool.\n\nBoth.", "tool_calls": [
            {"id": "abcdefghi", **call}, {"id": "jklmnopqr", **date}]},
        {"role": "tool", "tool_call_id": "abcdefghi", "content": "12:00"},
        {"role": "tool", "tool_call_id": "jklmnopqr", "content": "May"},
        {"role": "assistant", "content": "", "reasoning_content": "Again.", "tool_calls": [
            {"id": "stuvwxyz1", **call}]},
        {"role": "tool", "tool_call_id": "stuvwxyz1", "content": "12:01"},
        {"role": "assistant", "content": "Noon.\nMore later."},
        {"role": "user", "content": "Thanks."},
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"input item 0\.message\.role"):
        ResponsesRequest.model_validate({"input": [{"role": "wizard", "content": "x"}]})
    # allowed_tools keeps the tools it lists; a hosted tool's choice is "auto"; the chat completion's own fields
    # given beside pass on; nulls are defaults
    tools = [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]}
    chat = ResponsesRequest.model_validate({"input": "x", "tools": tools, "tool_choice": allowed, "top_k": 5,
                                            "seed": 7, "stream": None, "temperature": None}).chat()  # fmt: skip
    assert [t["function"]["name"] for t in chat.tools] == ["b"] and chat.tool_choice == "required"
    assert (chat.top_k, chat.seed, chat.stream, chat.temperature) == (5, 7, False, 0.8)
    hosted = ResponsesRequest.model_validate({"input": "x", "tools": tools, "tool_choice": {"type": "web_search"}})
    assert hosted.chat().tool_choice == "auto"


def test_a_failed_stream_ends_with_response_failed() -> None:
    """An error event, then response.failed with the items so far (clients wait for a final lifecycle event)."""
    from types import SimpleNamespace

    from turbosparse.server.responses import ResponseEvents, ResponseObject

    request = ResponsesRequest.model_validate({"input": "x"})
    gen = SimpleNamespace(finish_reason=None, n_prompt=3, n_cached=0, n_generated=1)
    events = ResponseEvents(ResponseObject(request, request.chat(), "m", len), gen)  # type: ignore[arg-type]
    sent = [*events.first(), *events.piece({"content": "Hel"}), *events.failure("the generation failed: boom")]
    assert [e["type"] for e in sent[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    failed = sent[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"] == "the generation failed: boom"

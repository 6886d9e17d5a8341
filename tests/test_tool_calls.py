"""Tool calls: each chat template's call syntax learned from its renderings, answers read in it (whole and streamed),
answers held to calls by a grammar, through the server and the llama-cpp-python drop-in on SmolLM2."""

from __future__ import annotations

import json
import random
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest
from anthropic_stream import anthropic_events, streamed_blocks

from turbosparse.chat_template import ChatTemplate
from turbosparse.completions import ChatCompletionChunks, CompletionMeta, ReasoningSplit
from turbosparse.errors import ChatTemplateError, InvalidArgumentError
from turbosparse.tool_calls import (
    HeldToolCalls,
    ToolCall,
    ToolCallSyntax,
    ToolChoice,
    ToolUse,
    checked_tools,
    template_messages,
)

_TURNS = "{% for m in messages %}<|im_start|>{{ m.role }}\n"
_END = "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
_TOOLS = "{% if tools and loop.first %}Tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
_CALL = '"name": {{ c.function.name | tojson }}, "arguments": {{ c.function.arguments | tojson }}'
# Hermes / Qwen: a <tool_call> block per call after the content
HERMES = (
    _TURNS
    + _TOOLS
    + "{{ m.content }}{% for c in m.tool_calls or [] %}{% if m.content or not loop.first %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": {{ c.function.name | tojson }}, "arguments": {{ c.function.arguments | tojson }}}\n'
    "</tool_call>{% endfor %}" + _END
)
# Llama 3.x: the answer is one bare call, its arguments under "parameters"
BARE = (
    _TURNS + _TOOLS + "{% if m.tool_calls %}{% set c = m.tool_calls[0].function %}"
    '{"name": {{ c.name | tojson }}, "parameters": {{ c.arguments | tojson }}}{% else %}{{ m.content }}{% endif %}'
    + _END
)
# Mistral Nemo: one marker, then the calls as a JSON list
LISTED = (
    _TURNS + _TOOLS + "{% if m.tool_calls %}[TOOL_CALLS][{% for c in m.tool_calls %}{% if not loop.first %}, "
    '{% endif %}{"name": {{ c.function.name | tojson }}, "arguments": {{ c.function.arguments | tojson }}}'
    "{% endfor %}]{% else %}{{ m.content }}{% endif %}" + _END
)
# Devstral: each call its marker, name, [ARGS], the arguments (here given as JSON text, not objects)
NAME_FIRST = (
    _TURNS + _TOOLS + "{{ m.content }}{% for c in m.tool_calls or [] %}[TOOL_CALLS]{{ c.function.name }}[ARGS]"
    "{{ c.function.arguments }}{% endfor %}" + _END
)
NO_CALLS = _TURNS + _TOOLS + "{{ m.content }}" + _END
# gpt-oss-like: the generation prompt ends mid-line, calls go on on it (" to=name json")
GLUED = (
    "{% for m in messages %}<|im_start|>{{ m.role }}{% if m.tool_calls %}{% for c in m.tool_calls %} to="
    "{{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}{% else %}\n{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)
# Kimi K2-like: each call numbered
NUMBERED = (
    _TURNS + "{{ m.content }}{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}:{{ loop.index0 }}<args>"
    "{{ c.function.arguments | tojson }}{% endfor %}" + _END
)
# a call's turn ends without the newline a text answer's has: the learned end holds the end-of-turn token
UNEVEN_END = (
    _TURNS + "{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>\n{" + _CALL + "}\n</tool_call>{% endfor %}"
    "{% if m.tool_calls %}<|im_end|>{% else %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMES = frozenset({"get_weather", "get_time"})


def syntax_of(source: str) -> ToolCallSyntax:
    template = ChatTemplate(source, eos_token="<|im_end|>")
    return ToolCallSyntax.learn(
        lambda messages, generate: template.render(messages, add_generation_prompt=generate, tools=[WEATHER])
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (HERMES, ("<tool_call>\n", "\n</tool_call>\n<tool_call>\n", "\n</tool_call>", "name", "arguments", "", True)),
        (BARE, ("", None, "", "name", "parameters", "", True)),
        (LISTED, ("[TOOL_CALLS][", ", ", "]", "name", "arguments", "", True)),
        (NAME_FIRST, ("[TOOL_CALLS]", "[TOOL_CALLS]", "", None, "", "[ARGS]", False)),
    ],
)
def test_each_templates_syntax_is_learned(source: str, expected: tuple) -> None:
    s = syntax_of(source)
    assert (s.start, s.between, s.end, s.name_key, s.arguments_key, s.separator, s.object_arguments) == expected


def test_a_template_that_writes_no_calls_has_no_syntax() -> None:
    with pytest.raises(ChatTemplateError, match="writes no tool calls"):
        syntax_of(NO_CALLS)
    with pytest.raises(ChatTemplateError, match="numbers its calls"):
        syntax_of(NUMBERED)


def test_calls_that_go_on_on_the_generation_prompts_line() -> None:
    syntax = syntax_of(GLUED)
    assert (syntax.start, syntax.name_key, syntax.separator) == (" to=", None, " ")
    assert syntax.parse(' to=get_weather {"city": "Paris"}', NAMES) == ("", [PARIS])


def test_an_end_of_turn_token_ends_the_syntax(smollm2_model: Any) -> None:
    """What a template writes after the token the answer stops at is no part of the calls: a held answer would have
    to spell it out and never stop."""
    template = ChatTemplate(UNEVEN_END)

    def chat_prompt(messages: Any, *, add_generation_prompt: bool, template_kwargs: Any, tools: Any) -> str:
        return template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    model: Any = SimpleNamespace(chat_prompt=chat_prompt, tokenizer=smollm2_model.tokenizer, chat_template=template)
    assert syntax_of(UNEVEN_END).end == "\n</tool_call><|im_end|>"  # the template's text
    use = ToolUse.of(model, [WEATHER], "required")
    assert use.syntax is not None and use.syntax.end == "\n</tool_call>"
    assert use.shown_tokens(model) == frozenset()  # <tool_call> is text in SmolLM2's vocabulary


PARIS = ToolCall("get_weather", '{"city": "Paris"}')
ROME = ToolCall("get_weather", '{"city": "Rome", "days": 2}')
# (template, answer, (content, calls)): what the model may write, read as the template writes calls
ANSWERS = [
    (HERMES, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     ("Let me look.", [PARIS])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>'
     '{"name":"get_weather","arguments":{"city":"Rome","days":2}}</tool_call>', ("", [PARIS, ROME])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', ("", [PARIS])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', None),  # cut short: content
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call> and more text', None),
    (HERMES, "It is sunny.", None),
    (BARE, ' {"name": "get_weather", "parameters": {"city": "Paris"}}', ("", [PARIS])),
    (BARE, '{"name": "get_weather", "arguments": {"city": "Paris"}}', ("", [PARIS])),
    (BARE, '{"city": "Paris"}', None),  # JSON, but not a call
    (BARE, '{"name": "Alice", "parameters": {"age": 3}}', None),  # a JSON answer that names no tool
    (BARE, '{"name": "get_weather", "city": "Paris"}', None),  # no arguments: with no marker, not a call
    (HERMES, 'I use <tool_call> tags.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
     ("I use <tool_call> tags.", [PARIS])),  # the first marker starts no call: the next is tried
    (LISTED, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', ("", [PARIS])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n<tool_call>\n'
     '{"name": "rm_rf", "arguments": {}}\n</tool_call>', None),  # one call of no tool: none are read
    (LISTED, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "get_weather", "arguments": {"city": "Rome", "days": 2}}]', ("", [PARIS, ROME])),
    (NAME_FIRST, 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]'
     '{"city": "Rome", "days": 2}', ("Sure.", [PARIS, ROME])),
    (NAME_FIRST, "[TOOL_CALLS]get weather[ARGS]{}", None),  # not a name
]  # fmt: skip


@pytest.mark.parametrize(("source", "answer", "expected"), ANSWERS)
def test_answers_are_read_whole_and_streamed_in_any_pieces(source: str, answer: str, expected: tuple | None) -> None:
    syntax = syntax_of(source)
    expected = expected or (answer, [])
    assert syntax.parse(answer, NAMES) == expected
    rng = random.Random(len(answer))
    for _ in range(20):
        held, released = HeldToolCalls(syntax, NAMES), ""
        cuts = sorted(rng.sample(range(1, len(answer)), min(5, len(answer) - 1)))
        for a, b in zip([0, *cuts], [*cuts, len(answer)], strict=True):
            released += held.feed(answer[a:b])
            if (
                not expected[1] and syntax.start.strip() and syntax.start.strip() not in answer
            ):  # a marker's start waits
                assert len(released) >= b - len(syntax.start.strip())
        rest, calls = held.finish()
        assert (released + rest, calls) == (expected[0] if expected[1] else answer, expected[1])


def test_an_answer_that_ran_out_of_tokens_keeps_the_calls_it_completed() -> None:
    syntax = syntax_of(HERMES)
    answer = (
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n'
        '{"name": "get_weather", "arguments": {"city": "Ro'
    )
    assert syntax.parse(answer, NAMES) == (answer, [])
    assert syntax.parse(answer, NAMES, cut=True) == ("Sure.", [PARIS])
    held = HeldToolCalls(syntax, NAMES)
    assert held.feed(answer) == "Sure."
    assert held.finish(cut=True) == ("", [PARIS])
    # a call cut short is not content, whole or streamed: the text from its start marker is dropped
    cut_short = 'Let me check.\n<tool_call>\n{"name": "get_weather", "argu'
    auto = ToolUse([WEATHER], ToolChoice("auto"), syntax, parallel=True)
    assert auto.read(cut_short, cut=True) == ("Let me check.", [])
    assert auto.read(cut_short) == (cut_short, [])  # an answer that ended there: its text, as written
    held = auto.held()
    assert held is not None and held.feed(cut_short) == "Let me check."
    assert held.finish(cut=True) == ("", [])
    # an answer cut short that holds no call cut short keeps its text, whole and streamed: a marker followed by other
    # text or by a whole call (of a function it may not call), a part of a marker, JSON content where calls have no
    # marker, any answer in a name-first syntax
    kept = [(HERMES, "Use <tool_call> tags to call tools; then the reply goes on"),
            (HERMES, 'Sure.\n<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>\nAnd then more'),
            (HERMES, "x < y and x <"), (HERMES, "Let me check.\n<tool_c"),
            (LISTED, "see that ["), (GLUED, "The answer is that"), (GLUED, "The answer is that to"),
            (GLUED, "Pass the option auto="),
            (BARE, '{"summary": "The weather in Paris is'), (NAME_FIRST, "get_weather is what I")]  # fmt: skip
    for source, text in kept:
        use = ToolUse([WEATHER], ToolChoice("auto"), syntax_of(source), parallel=True)
        assert use.read(text, cut=True) == (text, []), (source, text)
        held = use.held()
        assert held is not None
        assert held.feed(text) + held.finish(cut=True)[0] == text, (source, text)
    # ... and one that does, without its call: Llama 3's bare call, Devstral's cut in the name or the arguments
    cut_calls = [(BARE, '{"name": "get_weather", "parameters": {"ci', ""),
                 (BARE, '{"type": "function", "name": "get_weather", "parameters": {"ci', ""),
                 (NAME_FIRST, "Sure.[TOOL_CALLS]get_wea", "Sure."),
                 (NAME_FIRST, "Sure.[TOOL_CALLS]get_weather[ARGS] ", "Sure."),
                 (NAME_FIRST, 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Pa', "Sure."),
                 (GLUED, ' to=get_weather {"city": "Pa', ""),  # a name-first syntax with a blank separator
                 (LISTED, "Sure [TOOL_CALLS]", "Sure")]  # its marker but the bracket opening the list  # fmt: skip
    for source, text, content in cut_calls:
        use = ToolUse([WEATHER], ToolChoice("auto"), syntax_of(source), parallel=True)
        assert use.read(text, cut=True) == (content, []), (source, text)
        held = use.held()
        assert held is not None
        assert held.feed(text) + held.finish(cut=True)[0] == content, (source, text)
    # a held answer's prefill (the marker the prompt ends with) is never content, cut short or not
    use = ToolUse([WEATHER], ToolChoice("required"), syntax, parallel=True)
    assert use.read('{"name": "get_weather", "arguments": {"city": "Paris"}}') == ("", [PARIS])
    assert use.read('{"name": "get_weather", "argu', cut=True) == ("", [])
    held = use.held()
    assert held is not None and held.feed('{"name": "get_weather", "argu') == ""
    assert held.finish(cut=True) == ("", [])
    one = ToolUse([WEATHER], ToolChoice("auto"), syntax, parallel=False)  # parallel_tool_calls: false
    assert one.read(answer.replace('"Ro', '"Rome"}}'))[1] == [PARIS]


def test_content_before_a_call_streams_before_the_answer_ends() -> None:
    held = HeldToolCalls(syntax_of(HERMES), NAMES)
    assert held.feed("Let me look. <tool") == "Let me look."  # the blank waits: it may come before a call
    assert held.feed('_call>\n{"name": "get_weather", ') == ""
    assert held.finish() == (' <tool_call>\n{"name": "get_weather", ', [])  # never finished: content after all
    bare = HeldToolCalls(syntax_of(BARE), NAMES)
    assert bare.feed("  ") == ""
    assert bare.feed("It is") == "  It is"  # not a call: released at once


def test_the_chunks_of_a_thinking_answer_with_calls() -> None:
    """Reasoning split first, then the content's calls: given in the finishing chunk, its reason "tool_calls"."""
    syntax = syntax_of(HERMES)
    use = ToolUse([WEATHER], ToolChoice("auto"), syntax, parallel=True)
    gen: Any = SimpleNamespace(logprobs=None)
    chunks = ChatCompletionChunks(None, CompletionMeta.new("chatcmpl", "m"), gen, ReasoningSplit(), use)  # type: ignore[arg-type]
    answer = '<think>Paris?</think>\nChecking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    deltas = [
        c["choices"][0]["delta"] for c in (chunks.piece(answer[i : i + 7]) for i in range(0, len(answer), 7)) if c
    ]
    last = chunks.last("stop")["choices"][0]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Paris?"
    assert "".join(d.get("content", "") for d in deltas) + last["delta"].get("content", "") == "Checking."
    assert last["finish_reason"] == "tool_calls"
    (call,) = last["delta"]["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function" and len(call["id"]) == 9
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert chunks.message(answer, "stop") == ("Checking.", "Paris?", [PARIS])
    cut = ChatCompletionChunks(None, CompletionMeta.new("chatcmpl", "m"), gen, None, use)  # type: ignore[arg-type]
    assert cut.piece(answer[22:]) is not None
    assert cut.last("length")["choices"][0]["finish_reason"] == "length"  # out of tokens: not "tool_calls"


def test_the_grammar_of_calls_parses_and_leaves_the_tools_as_they_were(smollm2_model: Any) -> None:
    refs = {
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}, "unit": {"enum": ["C", "F"]}},
        "$defs": {"Place": {"type": "string"}},
    }
    odd = {"type": "function", "function": {"name": 'quote"back\\slash', "parameters": refs}}
    tools = [WEATHER, TIME, odd]
    before = json.dumps(tools)
    for source in (HERMES, BARE, LISTED, NAME_FIRST):
        for parallel in (False, True):
            grammar = syntax_of(source).grammar(tools, parallel=parallel)
            grammar.start(smollm2_model.tokenizer)  # llama.cpp's grammar engine parses it
    assert json.dumps(tools) == before  # the converter resolves $refs in place: it is given a copy


def test_a_streamed_answer_with_its_reasoning_inline_reads_calls_from_its_content_only() -> None:
    """deepseek-legacy: a streamed answer's reasoning stays in its content between the tags, but a call drafted in
    the reasoning is no call, and the calls after it are read as when the answer is whole."""
    use = ToolUse([WEATHER], ToolChoice("auto"), syntax_of(HERMES), parallel=True)
    gen: Any = SimpleNamespace(logprobs=None)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for answer, reason, calls in [
        (f"<think>\n{call}\nhmm</think>\n\nThe answer is", "length", []),
        (f"<think>\n{call}\nhmm</think>\n\nLet me look.\n{call}", "stop", [PARIS]),
    ]:
        inline = ReasoningSplit(inline_when_streamed=True)
        chunks = ChatCompletionChunks(None, CompletionMeta.new("chatcmpl", "m"), gen, inline, use)  # type: ignore[arg-type]
        pieces = (chunks.piece(answer[i : i + 5]) for i in range(0, len(answer), 5))
        deltas = [c["choices"][0]["delta"] for c in pieces if c]
        last = chunks.last(reason)["choices"][0]
        streamed = "".join(d.get("content", "") for d in [*deltas, last["delta"]])
        content, reasoning, read = chunks.message(answer, reason)
        assert streamed == f"<think>{reasoning}</think>{content}"
        assert read == calls and [c["function"]["name"] for c in last["delta"].get("tool_calls", [])] == [
            c.name for c in calls
        ]


def test_tools_and_choices_are_checked() -> None:
    assert checked_tools(None) == []
    for bad, match in [
        ({"type": "function"}, "must be a list"),
        ([{"type": "code"}], r"tools\[0\] must be"),
        ([{"type": "function", "function": {"name": "a b"}}], "without blanks"),
        ([WEATHER, WEATHER], "two tools are named 'get_weather'"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "JSON schema object"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            checked_tools(bad)
    assert ToolChoice.of(None, [WEATHER]) == ToolChoice("auto")
    assert ToolChoice.of(None, []) == ToolChoice("none")
    assert ToolChoice.of({"type": "function", "function": {"name": "get_time"}}, [WEATHER, TIME]).tools(
        [WEATHER, TIME]
    ) == [TIME]
    for bad, match in [
        ("sometimes", "tool_choice must be"),
        ({"type": "function", "function": "get_weather"}, "tool_choice must be"),
        ({"function": None}, "tool_choice must be"),
        ({"function": {"name": "nope"}}, "not one of the tools"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            ToolChoice.of(bad, [WEATHER])
    no_model: Any = None  # without tools nothing of the model is needed
    assert ToolUse.of(no_model, [], "auto") == ToolUse([], ToolChoice("none"), None, False)  # as some clients send it
    with pytest.raises(InvalidArgumentError, match="needs tools"):
        ToolUse.of(no_model, None, "required")


def test_tools_are_none_without_tools() -> None:
    """As Hugging Face's apply_chat_template and llama.cpp pass it: a template testing `tools is not none` writes no
    tools section for a request without tools (it was undefined, which `is not none` takes for present)."""
    source = "{% if tools is not none %}[TOOLS]{{ tools | length }}[/TOOLS]{% endif %}{{ messages[0]['content'] }}"
    hi = [{"role": "user", "content": "hi"}]
    assert ChatTemplate(source).render(hi) == "hi"
    assert ChatTemplate(source).render(hi, tools=[WEATHER]) == "[TOOLS]1[/TOOLS]hi"


def test_earlier_calls_reach_the_template_as_it_writes_them() -> None:
    calls = [{"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "X"}'}}]
    messages = [{"role": "assistant", "content": "", "tool_calls": calls}, {"role": "tool", "content": "sunny"}]
    as_objects = template_messages(messages, object_arguments=True)
    assert as_objects[0]["tool_calls"][0]["function"]["arguments"] == {"city": "X"}
    assert as_objects[1] == messages[1] and messages[0]["tool_calls"] is calls  # the request's own are untouched
    assert template_messages(messages, object_arguments=False) == messages
    rendered = ChatTemplate(HERMES).render(as_objects, tools=[WEATHER])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "X"}}\n</tool_call>' in rendered
    # tojson takes Hugging Face's arguments (GigaChat's templates write calls with ensure_ascii)
    city = [{"role": "user", "content": "Zürich"}]
    source = "{{ messages[0].content | tojson }} {{ messages[0].content | tojson(ensure_ascii=True, indent=None) }}"
    assert ChatTemplate(source).render(city, add_generation_prompt=False) == '"Zürich" "Z\\u00fcrich"'


# ---- on SmolLM2 (a chat model that has no tool calls of its own: the answers are held to calls by the grammar) ----
def _client(smollm2_path: Any, template: str) -> Any:
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    return TestClient(create_app(ServerConfig(str(smollm2_path), n_ctx=512, n_threads=2, chat_template=template)))


def _wait(client: Any) -> None:
    deadline = time.monotonic() + 120
    while client.get("/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)


def _streamed(reply: Any) -> tuple[str, list[dict], str | None]:
    """The content, tool calls and finish reason of a streamed chat answer."""
    content, calls, reason = "", [], None
    for line in reply.text.splitlines():
        if line.startswith("data: {"):
            choice = json.loads(line[6:])["choices"][0]
            content += choice["delta"].get("content") or ""
            calls += choice["delta"].get("tool_calls") or []
            reason = choice["finish_reason"] or reason
    return content, calls, reason


QUESTION = [{"role": "user", "content": "What is the weather in Paris? Also what time is it?"}]


@pytest.mark.parametrize("template", [HERMES, LISTED, NAME_FIRST, UNEVEN_END, GLUED])
def test_the_server_holds_answers_to_calls_and_reads_them(smollm2_path: Any, template: str) -> None:
    with _client(smollm2_path, template) as client:
        _wait(client)
        for choice, names in [("required", {"get_weather", "get_time"}), (TIME_CHOICE, {"get_time"})]:
            tools = {"tools": [WEATHER, TIME], "tool_choice": choice, "parallel_tool_calls": False}
            body = {"messages": QUESTION, **tools, "max_tokens": 60}
            reply = client.post("/v1/chat/completions", json={**body, "temperature": 0})
            assert reply.status_code == 200, reply.text
            choice_0 = reply.json()["choices"][0]
            message = choice_0["message"]
            assert choice_0["finish_reason"] == "tool_calls" and message["content"] is None, reply.text
            assert len(message["tool_calls"]) == 1 and message["tool_calls"][0]["function"]["name"] in names
            for call in message["tool_calls"]:
                arguments = json.loads(call["function"]["arguments"])
                assert isinstance(arguments, dict)
                if call["function"]["name"] == "get_weather":
                    assert isinstance(arguments["city"], str)  # the schema's required key
            streamed = client.post("/v1/chat/completions", json={**body, "temperature": 0, "stream": True})
            content, calls, reason = _streamed(streamed)
            assert (content, reason) == ("", "tool_calls")
            assert [c["function"] for c in calls] == [c["function"] for c in message["tool_calls"]]
            assert [c["index"] for c in calls] == list(range(len(calls)))
        # the answer, the tool's result, and the next turn: earlier calls rendered as the template writes them
        history = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]}]
        history.append({"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "12:00"})
        reply = client.post("/v1/chat/completions", json={"messages": history, "tools": [TIME], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        legacy = {"messages": QUESTION, "functions": [TIME["function"]], "function_call": {"name": "get_time"}}
        reply = client.post("/v1/chat/completions", json={**legacy, "parallel_tool_calls": False, "max_tokens": 30})
        assert reply.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time", reply.text


TIME_CHOICE = {"type": "function", "function": {"name": "get_time"}}
TIME_CALL = {"id": "abcdefghi", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}


def test_tools_the_server_cannot_use_are_a_400(smollm2_path: Any) -> None:
    with _client(smollm2_path, NO_CALLS) as client:
        _wait(client)
        asked = {"messages": QUESTION, "tools": [WEATHER], "max_tokens": 4}
        # a template that writes no calls: "auto" answers in text (as llama-server), an answer held to calls is a 400
        for choice in ("auto", "none"):
            reply = client.post("/v1/chat/completions", json={**asked, "tool_choice": choice})
            assert reply.status_code == 200 and "tool_calls" not in reply.json()["choices"][0]["message"]
        reply = client.post("/v1/chat/completions", json={**asked, "tool_choice": "required"})
        assert reply.status_code == 400 and "writes no tool calls" in reply.json()["error"]["message"]
    with _client(smollm2_path, HERMES) as client:
        _wait(client)
        for extra, match in [
            ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not one of the tools"),
            ({"tools": [{"type": "function"}]}, r"tools\[0\] must be"),
            ({"response_format": {"type": "json_object"}}, "both constrain"),
            ({"functions": [TIME["function"]]}, "give one pair"),
            ({"tool_choice": {"type": "function", "function": "get_weather"}}, "tool_choice must be"),
            ({"tools": [], "tool_choice": "required"}, "needs tools"),
            ({"messages": [*QUESTION, {"role": "assistant", "tool_calls": [TIME_CALL]}]}, "cannot be continued"),
        ]:
            reply = client.post("/v1/chat/completions", json={**asked, **extra})
            assert reply.status_code == 400, reply.text
            assert re.search(match, reply.json()["error"]["message"]), reply.text


def test_the_drop_in_calls_tools_as_the_server(smollm2_path: Any) -> None:
    from turbosparse import Llama
    from turbosparse.chat_template import ChatTemplate as Template

    llm = Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=2, verbose=False)
    llm.model.chat_template = Template.for_tokenizer(HERMES, llm.model.tokenizer)
    options = {"tools": [WEATHER, TIME], "tool_choice": TIME_CHOICE, "max_tokens": 30, "temperature": 0}
    reply = llm.create_chat_completion(QUESTION, **options)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": "{}"}
    content, calls, reason = _streamed_chunks(llm.create_chat_completion(QUESTION, stream=True, **options))
    assert (content, reason, [c["function"] for c in calls]) == ("", "tool_calls", [call["function"]])
    with pytest.raises(ValueError, match="not one of the tools"):
        llm.create_chat_completion(QUESTION, tools=[WEATHER], tool_choice=TIME_CHOICE)
    llm.close()


def _streamed_chunks(chunks: Any) -> tuple[str, list[dict], str | None]:
    content, calls, reason = "", [], None
    for chunk in chunks:
        choice = chunk["choices"][0]
        content += choice["delta"].get("content") or ""
        calls += choice["delta"].get("tool_calls") or []
        reason = choice["finish_reason"] or reason
    return content, calls, reason


IMAGE_RESULT = {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "image", "source": {}}]}
ANTHROPIC_TOOLS = [
    {"name": t["function"]["name"], "input_schema": t["function"]["parameters"], "cache_control": {"type": "x"}}
    for t in (WEATHER, TIME)
]


@pytest.mark.parametrize("template", [HERMES, NAME_FIRST])
def test_anthropics_tool_use_makes_the_chat_routes_calls(smollm2_path: Any, template: str) -> None:
    """/v1/messages with tools (as llama-server serves them to Claude Code and the anthropic SDK): the calls the chat
    route makes for the same request, as tool_use blocks whole and streamed, stop_reason "tool_use"; the calls and
    their results sent back make the chat route's prompt."""
    with _client(smollm2_path, template) as client:
        _wait(client)
        for choice, chat_choice in [
            ({"type": "any", "disable_parallel_tool_use": True}, "required"),
            ({"type": "tool", "name": "get_time"}, TIME_CHOICE),
        ]:
            chat = {"messages": QUESTION, "tools": [WEATHER, TIME], "tool_choice": chat_choice, "max_tokens": 60}
            chat_reply = client.post(
                "/v1/chat/completions", json={**chat, "parallel_tool_calls": False, "temperature": 0}
            )
            expected = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                        for c in chat_reply.json()["choices"][0]["message"]["tool_calls"]]  # fmt: skip
            body = {"messages": QUESTION, "tools": ANTHROPIC_TOOLS, "tool_choice": choice, "max_tokens": 60}
            reply = client.post("/v1/messages", json={**body, "temperature": 0})
            assert reply.status_code == 200, reply.text
            message = reply.json()
            assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", None), message
            assert [(b["type"], b["name"], b["input"]) for b in message["content"]] == [
                ("tool_use", name, arguments) for name, arguments in expected
            ]
            assert all(len(b["id"]) == 9 and b["id"].isalnum() for b in message["content"])  # Mistral's templates' ids
            events = anthropic_events(client.post("/v1/messages", json={**body, "temperature": 0, "stream": True}).text)
            streamed = streamed_blocks(events)
            assert [(b["name"], b["input"]) for b in streamed] == expected
            assert events[-2]["delta"]["stop_reason"] == "tool_use"

        # the answer's call and its result sent back: the same prompt as the chat route's history
        call = message["content"][0]
        history = [*QUESTION, {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, call]}]
        history.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": [{"type": "text", "text": "12:00"}]},
            {"type": "text", "text": "And the weather?"}]})  # fmt: skip
        chat_history = [*QUESTION, {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}]  # fmt: skip
        chat_history += [{"role": "tool", "tool_call_id": call["id"], "content": "12:00"},
                         {"role": "user", "content": "And the weather?"}]  # fmt: skip
        counted = client.post("/v1/messages/count_tokens", json={"messages": history, "tools": ANTHROPIC_TOOLS})
        chat_reply = client.post("/v1/chat/completions", json={"messages": chat_history, "tools": [WEATHER, TIME],
                                                               "max_tokens": 1})  # fmt: skip
        assert counted.json() == {"input_tokens": chat_reply.json()["usage"]["prompt_tokens"]}, counted.text
        reply = client.post("/v1/messages", json={"messages": history, "tools": ANTHROPIC_TOOLS, "max_tokens": 8})
        assert reply.status_code == 200, reply.text

        # an answer that runs out of tokens after a call: "max_tokens" with the calls it completed, as the chat
        # route's "length" (llama-server's: "tool_use" only for an answer that ended); the first such limit is found
        for limit in range(8, 81, 4):
            chat_cut = client.post("/v1/chat/completions", json={**chat, "tool_choice": "required", "temperature": 0,
                                                                 "max_tokens": limit}).json()["choices"][0]  # fmt: skip
            if chat_cut["finish_reason"] == "length" and chat_cut["message"].get("tool_calls"):
                break
        else:
            pytest.fail("no answer was cut after a call")
        cut = {**body, "tool_choice": {"type": "any"}, "max_tokens": limit, "temperature": 0}
        message = client.post("/v1/messages", json=cut).json()
        assert message["stop_reason"] == "max_tokens", message
        calls = [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in chat_cut["message"]["tool_calls"]
        ]
        assert [(b["name"], b["input"]) for b in message["content"]] == calls
        events = anthropic_events(client.post("/v1/messages", json={**cut, "stream": True}).text)
        assert [(b["name"], b["input"]) for b in streamed_blocks(events)] == calls
        assert events[-2]["delta"]["stop_reason"] == "max_tokens"

        web_search = {"type": "web_search_20250305", "name": "web_search"}  # Anthropic runs it: dropped
        reply = client.post("/v1/messages", json={**body, "tools": [*ANTHROPIC_TOOLS, web_search], "max_tokens": 30})
        assert reply.status_code == 200 and reply.json()["content"][0]["name"] == "get_time", reply.text
        for bad, match in [
            ({"tools": [{"name": "f"}]}, "input_schema"),
            ({"tool_choice": {"type": "tool"}}, "needs the tool's name"),
            ({"tool_choice": {"type": "tool", "name": "nope"}}, "not one of the tools"),
            ({"tool_choice": {"type": "any"}, "tools": []}, "needs tools"),
            ({"messages": [{"role": "user", "content": [call]}]}, "cannot hold tool_use blocks"),
            ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "'image' are not"),
            ({"tools": [WEATHER]}, "tools\\[0\\] is of type 'function'"),  # OpenAI's form
            ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "give custom tools"),  # its schema is Anthropic's
            ({"messages": [{"role": "assistant", "content": [{**call, "id": None}]}]}, "content blocks 0.tool_use.id"),
            ({"messages": [{"role": "user", "content": [IMAGE_RESULT]}]}, "tool_result content blocks of type 'image'"),
            ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, "tools and output_config.format"),
            ({"output_config": {"format": {"type": "json_schema"}}}, r"output_config\.format\.schema"),
        ]:
            reply = client.post("/v1/messages", json={**body, **bad})
            assert reply.status_code == 400 and re.search(match, reply.json()["error"]["message"]), reply.text


def test_anthropic_messages_become_chat_messages() -> None:
    """tool_use blocks an assistant's calls, tool_result blocks tool messages before the user's text, thinking blocks
    its reasoning, text blocks content parts."""
    from turbosparse.server.anthropic import MessagesRequest

    request = MessagesRequest.model_validate({
        "max_tokens": 5, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "A tool.", "signature": "s"},
                {"type": "redacted_thinking", "data": "d"},
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "abcdefghi", "name": "get_time", "input": {"zone": "UTC"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "abcdefghi", "content": "12:00", "is_error": False},
                {"type": "text", "text": "Thanks."}, {"type": "text", "text": "More?"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        ],
        "tools": [{"name": "get_time", "description": "The time", "input_schema": {"type": "object"}},
                  {"name": "get_date", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    })  # fmt: skip
    chat = request.chat()
    assert [m.for_template() for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Looking.", "reasoning_content": "A tool.", "tool_calls": [
            {"id": "abcdefghi", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
        {"role": "tool", "content": "12:00", "tool_call_id": "abcdefghi"},
        {"role": "tool", "content": "ab", "tool_call_id": "x"},  # the next user message's: one turn with this one
        {"role": "user", "content": "Thanks.\nMore?"},
    ]  # fmt: skip
    schema = {"type": "object"}
    assert chat.tools == [  # a description always, "" where none was given (templates write it without asking)
        {"type": "function", "function": {"name": "get_time", "description": "The time", "parameters": schema}},
        {"type": "function", "function": {"name": "get_date", "description": "", "parameters": schema}},
    ]
    assert (chat.tool_choice, chat.parallel_tool_calls) == (
        {"type": "function", "function": {"name": "get_time"}},
        False,
    )

    # system messages among the turns (text only); a tool's type null is a custom tool's; the chat completion's own
    # fields given beside Anthropic's pass on (template variables, say), the ones Anthropic names otherwise do not
    request = MessagesRequest.model_validate({
        "max_tokens": 5, "chat_template_kwargs": {"enable_thinking": False}, "seed": 3, "stop": ["x"],
        "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                     {"role": "user", "content": "Time?"}],
        "tools": [{"type": None, "name": "get_time", "input_schema": {"type": "object"}}],
    })  # fmt: skip
    chat = request.chat()
    assert [m.for_template() for m in chat.messages] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Time?"},
    ]
    assert (chat.chat_template_kwargs, chat.seed, chat.stop, len(chat.tools)) == (
        {"enable_thinking": False},
        3,
        None,
        1,
    )
    # thinking on or off: the template's enable_thinking (the kwargs given beside win)
    off, on = {"enable_thinking": False}, {"enable_thinking": True}
    for thinking, kwargs, expected in [({"type": "disabled"}, None, off), ({"type": "adaptive"}, None, None),
                                       ({"type": "enabled", "budget_tokens": 2048}, None, on),
                                       ({"type": "enabled"}, off, off), ({"type": []}, None, None)]:  # fmt: skip
        body = {"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], "thinking": thinking}
        asked = MessagesRequest.model_validate({**body, **({"chat_template_kwargs": kwargs} if kwargs else {})})
        assert asked.chat().chat_template_kwargs == expected, thinking
    with pytest.raises(ValueError, match="a system message cannot hold tool_result blocks"):
        MessagesRequest.model_validate({"max_tokens": 5, "messages": [{"role": "system", "content": [
            {"type": "tool_result", "tool_use_id": "x", "content": "a"}]}]})  # fmt: skip


def test_consecutive_anthropic_turns_of_one_role_are_one() -> None:
    """As Anthropic combines them: a user's tool results then its question sent as two user messages make the same
    chat messages as one user message holding both."""
    from turbosparse.server.anthropic import MessagesRequest

    call = {"type": "tool_use", "id": "abcdefghi", "name": "get_time", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "abcdefghi", "content": "12:00"}
    start = [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": [call]}]
    split = [*start, {"role": "user", "content": [result]}, {"role": "user", "content": "Thanks."}]
    whole = [*start, {"role": "user", "content": [result, {"type": "text", "text": "Thanks."}]}]

    def chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        request = MessagesRequest.model_validate({"max_tokens": 5, "messages": messages})
        return [m.for_template() for m in request.chat().messages]

    assert chat(split) == chat(whole)
    assert chat([{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]) == [
        {"role": "user", "content": "A\nB"}
    ]

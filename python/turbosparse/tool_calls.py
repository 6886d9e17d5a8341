"""Tool calls (OpenAI's `tools`): the chat template's own syntax for an assistant's calls, learned by rendering some
(as llama.cpp learns a template's syntax by comparing renderings), then used to read calls out of an answer, to hold a
streamed answer's call text back from its content, and to hold an answer to calls (tool_choice "required" or a named
function) with a grammar. Hermes / Qwen's `<tool_call>{...}</tool_call>`, Mistral's `[TOOL_CALLS][{...}]`, Llama
3.x's bare `{"name": ..., "parameters": ...}` and a name-then-arguments syntax (`[TOOL_CALLS]name[ARGS]{...}`) are
all learned this way. A template that writes no tool calls has none: its answers are not read, and cannot be held to
calls."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import secrets
import string
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from llama_cpp.llama_grammar import SchemaConverter

from turbosparse.chat_template import ChatTemplate
from turbosparse.errors import ChatTemplateError, GrammarError, InvalidArgumentError
from turbosparse.grammar import Grammar, check_schema_counts, strict_strings

if TYPE_CHECKING:
    from turbosparse.model import Model
    from turbosparse.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# a conversation's renderings: (messages, add_generation_prompt) -> prompt text
Render = Callable[[list[dict[str, Any]], bool], str]

_PROBE_CALLS = (
    ("probe_function_one", {"probe_argument": "probe value one"}),
    ("probe_function_two", {"other_argument": "probe value two"}),
)
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "A probe.",
            "parameters": {"type": "object", "properties": {key: {"type": "string"} for key in arguments}},
        },
    }
    for name, arguments in _PROBE_CALLS
]
_PROBE_QUESTION = "probe question"
_PROBE_ANSWER = "probe answer text"
_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A tool call's id: 9 letters and digits, which every template takes (Mistral's refuse any other length)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text

    def openai(self, call_id: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallSyntax:
    """How the template writes calls: start, the calls (between: what separates two; None: one call per answer),
    end. A call is a JSON object holding the name under name_key and the arguments under arguments_key (keys in
    that order unless name_last), or with name_key None the name, separator, then the arguments. object_arguments:
    the template writes arguments given as objects (else it is given them as JSON text); quoted_arguments: it writes
    them as a JSON string (holding the JSON text) where it writes a JSON object."""

    start: str
    between: str | None
    end: str
    name_key: str | None
    arguments_key: str
    name_last: bool
    separator: str
    object_arguments: bool
    quoted_arguments: bool = False

    @classmethod
    def learn(cls, render: Render) -> ToolCallSyntax:
        """The syntax of the template render renders with; ChatTemplateError when it writes no tool calls."""
        for object_arguments in (True, False):
            syntax = _learn(render, object_arguments)
            if syntax is not None:
                return syntax
        raise ChatTemplateError(
            "the chat template writes no tool calls (an assistant message with one renders without it), so its "
            "answers' calls cannot be read: give a template that writes them (--chat-template-file)"
        )

    # ---- reading answers ------------------------------------------------------------------------------------------
    def parse(self, text: str, names: Set[str], *, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """An answer's content and its calls of the functions named names. Text that does not hold such calls as the
        template writes them is content. cut: the answer ran out of tokens; the calls it completed are read, the one
        it did not is dropped (as llama-server reads a partial answer)."""
        for at, after in self._starts(text):
            calls = self._calls(text, after, names, cut)
            if calls:
                return text[:at].rstrip(), calls
        return text, []

    def _starts(self, text: str) -> Iterator[tuple[int, int]]:
        """Where calls may start in text, and where their first one does: each start marker (blanks in and around
        it not counted), or with no marker the answer's start."""
        marker = self.start.strip()
        if not marker:
            if self.opens(text):
                at = len(text) - len(text.lstrip())
                yield at, at
            return
        for at, end, whole in _marker_matches(text, marker):
            if whole:
                yield at, end

    def cut_call_start(self, text: str) -> int | None:
        """Where a call the text ends inside of starts (an answer cut short by max_tokens there): a whole start marker
        (with no marker, the answer's start) followed by nothing but the start of a call, whose name or JSON the text
        ends in, or the text's end inside a marker that lacks only the brackets opening the call's JSON (Mistral's
        `[TOOL_CALLS][`); None where there is none (a marker followed by other text, or by a whole call, is not one;
        nor is a marker that starts with a blank found inside a word)."""
        marker = self.start.strip()
        for at, after in self._starts(text):
            inside_a_word = self.start[:1].isspace() and at > 0 and not text[at - 1].isspace()
            if not inside_a_word and self._ends_inside_a_call(text, after):
                return at
        if not marker:
            return None
        for at, _, whole in _marker_matches(text, marker):  # the end inside the marker, short of brackets only
            missing = "".join(marker.split())[len("".join(text[at:].split())) :]
            if not whole and set(missing) <= set("[{"):
                return at
        return None

    def content_end(self, text: str, *, cut: bool) -> int:
        """How much of an answer with no whole call is content: all of it, but where it was cut short (cut) inside a
        call, what comes before that call's start (trailing blanks left out)."""
        start = self.cut_call_start(text) if cut else None
        return len(text) if start is None else len(text[:start].rstrip())

    def _ends_inside_a_call(self, text: str, pos: int) -> bool:
        pos = _skip_blanks(text, pos)
        if pos >= len(text):
            return bool(self.start.strip())  # the marker and nothing after it
        rest = text[pos:]
        if self.name_key is None:  # the name, the separator, the arguments (a blank separator: as _call reads it)
            separator = self.separator.strip()
            if separator:
                head, found, arguments = rest.partition(separator)
                named = bool(found)
            else:
                end = next((i for i, c in enumerate(rest) if c.isspace() or c == "{"), len(rest))
                head, arguments, named = rest[:end], rest[end:], end < len(rest)
            if any(c.isspace() for c in head.strip()):
                return False
            if not named:
                return bool(self.start.strip())  # the name, cut short
            return not arguments.strip() or _unfinished_json(arguments.lstrip())
        if not self.start.strip():  # no marker: only an object opening with the call's first key is one
            first = self.arguments_key if self.name_last else self.name_key
            opening = "".join(rest.split())
            keys = ['{"' + first + '"', '{"type":"function","' + first + '"']  # Llama 3.x may write the type first
            if not any(opening.startswith(key) or key.startswith(opening) for key in keys):
                return False
        return rest[0] == "{" and _unfinished_json(rest)

    def opens(self, text: str) -> bool:
        """With no start marker: whether an answer that begins as text may be calls."""
        return text.lstrip().startswith("{") or self.name_key is None

    def _calls(self, text: str, pos: int, names: Set[str], cut: bool) -> list[ToolCall]:
        read = self._call(text, pos)
        if read is None or read[0].name not in names:
            return []
        calls = [read[0]]
        pos = read[1]
        while self.between is not None:
            after = _skip_loose(text, pos, self.between)
            read = self._call(text, after) if after is not None else None
            if read is None:
                break
            if read[0].name not in names:
                return []
            calls.append(read[0])
            pos = read[1]
        # the end as written, or cut short where the template's end holds tokens the answer stops at (its turn's end)
        # or the answer stopped before it
        rest = "".join(text[pos:].split())
        return calls if cut or "".join(self.end.split()).startswith(rest) else []

    def _call(self, text: str, pos: int) -> tuple[ToolCall, int] | None:
        decoder = json.JSONDecoder()
        pos = _skip_blanks(text, pos)
        if self.name_key is None:
            if self.separator.strip():
                sep_at = text.find(self.separator.strip(), pos)
                if sep_at < 0:
                    return None
                name, args_at = text[pos:sep_at].strip(), sep_at + len(self.separator.strip())
            else:  # the name, blanks, the arguments (functionary's ">>>name\n{...}")
                args_at = pos
                while args_at < len(text) and not text[args_at].isspace() and text[args_at] != "{":
                    args_at += 1
                name = text[pos:args_at]
            args_at = _skip_blanks(text, args_at)
            try:
                arguments, end = decoder.raw_decode(text, args_at)
            except json.JSONDecodeError:
                return None
            if not name or any(c.isspace() for c in name) or not isinstance(arguments, dict):
                return None
            return ToolCall(name, json.dumps(arguments, ensure_ascii=False)), end
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get(self.name_key), str):
            return None
        # the template's key, or the other common one (Llama 3.x's files say "parameters", models often "arguments");
        # none: no arguments, unless nothing marks the call (then a JSON answer with a "name" is not one)
        keys = (self.arguments_key, "arguments", "parameters")
        arguments = next((value[key] for key in keys if key in value), {} if self.start.strip() else None)
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return ToolCall(value[self.name_key], json.dumps(arguments, ensure_ascii=False)), end

    # ---- holding answers to calls ---------------------------------------------------------------------------------
    def grammar(self, tools: Sequence[Mapping[str, Any]], *, parallel: bool) -> Grammar:
        """Calls of tools (one, or with parallel several) as the template writes them after its start marker, which
        the prompt is given (prefill)."""
        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        alternatives = []
        for i, tool in enumerate(tools):
            function = tool["function"]
            schema = copy.deepcopy(function.get("parameters") or {"type": "object"})  # the converter edits $refs
            if self.quoted_arguments:
                schema = {"type": "string"}
            try:
                check_schema_counts(schema)
                arguments = converter.visit(converter.resolve_refs(schema, "stdin"), f"tool-{i}-arguments")
            except GrammarError as exc:
                raise GrammarError(f"tool {function['name']!r}: {exc}") from None
            except Exception as exc:  # the converter raises whatever its walk meets (KeyError, TypeError, ...)
                raise GrammarError(
                    f"tool {function['name']!r}: its parameters cannot be turned into a grammar: {exc!r}"
                ) from None
            alternatives.append(f"tool-{i}")
            name = _gbnf_literal(function["name"])
            if self.name_key is None:
                body = f"{name} {_gbnf_literal(self.separator)} {arguments}"
            else:
                colon = 'space ":" space'
                name_key, arguments_key, value = (
                    _gbnf_literal(json.dumps(k)) for k in (self.name_key, self.arguments_key, function["name"])
                )
                name_part = f"{name_key} {colon} {value}"
                arguments_part = f"{arguments_key} {colon} {arguments}"
                first, second = (arguments_part, name_part) if self.name_last else (name_part, arguments_part)
                body = f'"{{" space {first} space "," space {second} space "}}"'
            converter._add_rule(f"tool-{i}", body)
        converter._add_rule("tool-call", " | ".join(alternatives))
        more = f" ({_gbnf_literal(self.between)} tool-call)*" if parallel and self.between is not None else ""
        converter._add_rule("tool-calls", f"tool-call{more} {_gbnf_literal(self.end)}")
        return Grammar(strict_strings(converter.format_grammar()), root="tool-calls")


def _learn(render: Render, object_arguments: bool) -> ToolCallSyntax | None:
    def call_message(calls: Sequence[tuple[str, dict[str, str]]]) -> dict[str, Any]:
        tool_calls = [
            {
                "id": f"probe000{i + 1}",
                "type": "function",
                "function": {"name": name, "arguments": arguments if object_arguments else json.dumps(arguments)},
            }
            for i, (name, arguments) in enumerate(calls)
        ]
        return {"role": "assistant", "content": "", "tool_calls": tool_calls}

    user = {"role": "user", "content": _PROBE_QUESTION}
    try:
        answered = render([user, {"role": "assistant", "content": _PROBE_ANSWER}], False)
        empty = render([user, {"role": "assistant", "content": ""}], False)
        one = render([user, call_message(_PROBE_CALLS[:1])], False)
        prompt = render([user], True)
    except ChatTemplateError:
        return None
    turn_end = answered[answered.find(_PROBE_ANSWER) + len(_PROBE_ANSWER) :] if _PROBE_ANSWER in answered else ""
    # where the answer starts: after the assistant's opening (an empty answer's text without its turn's end) or what
    # it shares with the generation prompt, whichever is longer (not inside a marker the two only begin alike)
    opening = empty[: len(empty) - len(turn_end)] if turn_end and empty.endswith(turn_end) else empty
    shared = len(_common_prefix(one, prompt))
    region = max(len(opening) if one.startswith(opening) else 0, _marker_boundary(one, shared, stop=len(prompt)))
    first = _find_call(one, region, *_PROBE_CALLS[0])
    if first is None:
        return None
    tail = one[first.end :]
    end = tail[: len(tail) - len(turn_end)] if turn_end and tail.endswith(turn_end) else tail.rstrip()
    between = None
    try:
        two = render([user, call_message(_PROBE_CALLS)], False)
    except ChatTemplateError:
        two = ""
    first_of_two = _find_call(two, region, *_PROBE_CALLS[0])
    if first_of_two is not None:
        second = _find_call(two, first_of_two.end, *_PROBE_CALLS[1])
        if second is not None:
            between = two[first_of_two.end : second.start]
            if second.separator != first.separator:
                raise ChatTemplateError(
                    "the chat template numbers its calls (a second call is written unlike the first), which reading "
                    "answers does not support"
                )
    start = one[region : first.start]
    if any("probe000" in part for part in (start, first.separator, between or "")):
        raise ChatTemplateError(
            "the chat template writes each call's id inside its calls, which reading answers does not support"
        )
    return ToolCallSyntax(
        start=start,
        between=between,
        end=end,
        name_key=first.name_key,
        arguments_key=first.arguments_key,
        name_last=first.name_last,
        separator=first.separator,
        object_arguments=object_arguments,
        quoted_arguments=first.quoted,
    )


class _WrittenCall(NamedTuple):
    """Where and how a template wrote a call: its span; the keys of its name and arguments (name_key None: the name
    written bare, then separator, then the arguments); whether the arguments are a JSON string (quoted)."""

    start: int
    end: int
    name_key: str | None
    arguments_key: str
    name_last: bool
    separator: str
    quoted: bool


def _find_call(text: str, after: int, name: str, arguments: dict[str, str]) -> _WrittenCall | None:
    """Where the call (name, arguments) is written in text after a position."""
    name_at = text.find(name, after)
    if name_at < 0:
        return None
    decoder = json.JSONDecoder()
    opening = text.rfind("{", after, name_at)
    while opening >= 0:
        try:
            value, end = decoder.raw_decode(text, opening)
        except json.JSONDecodeError:
            value, end = None, opening
        if isinstance(value, dict) and end > name_at:
            name_key = next((k for k, v in value.items() if v == name), None)
            arguments_key = next((k for k, v in value.items() if _same_arguments(v, arguments)), None)
            if name_key is not None and arguments_key is not None:
                keys = list(value)
                name_last = keys.index(name_key) > keys.index(arguments_key)
                quoted = isinstance(value[arguments_key], str)
                return _WrittenCall(opening, end, name_key, arguments_key, name_last, "", quoted)
        opening = text.rfind("{", after, opening)
    arguments_at = text.find("{", name_at)
    if arguments_at < 0:
        return None
    try:
        value, end = decoder.raw_decode(text, arguments_at)
    except json.JSONDecodeError:
        return None
    separator = text[name_at + len(name) : arguments_at]
    if not _same_arguments(value, arguments):
        return None
    return _WrittenCall(name_at, end, None, "", False, separator, False)


def _same_arguments(value: Any, arguments: dict[str, str]) -> bool:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return False
    return value == arguments


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _marker_boundary(text: str, pos: int, stop: int) -> int:
    """pos moved back to where a marker or word it cuts begins (after a blank, or a closing > ] }); pos itself where
    it is stop (all of the generation prompt is shared: the answer starts there whatever the characters)."""
    while pos != stop and 0 < pos < len(text) and not text[pos - 1].isspace() and text[pos - 1] not in ">]}":
        pos -= 1
    return pos


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _skip_loose(text: str, pos: int, literal: str) -> int | None:
    """Where literal ends if text holds it at pos, blanks anywhere in either not counted (None: it does not)."""
    found = _match_loose(text, pos, literal)
    return found[0] if found is not None and found[1] else None


_JSON_OUTSIDE_STRINGS = set("{}[]:,-+.eE0123456789truefalsn \t\r\n")


def _unfinished_json(text: str) -> bool:
    """Whether text starts a JSON object or array and ends inside it (a call's JSON cut short), as far as its
    brackets, strings and characters tell: not a whole value, not other text."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack or stack.pop() != char:
                return False
            if not stack:
                return False  # a whole value (what follows it is not this call's)
        elif char not in _JSON_OUTSIDE_STRINGS or not stack:
            return False
    return bool(stack)


def _marker_matches(text: str, marker: str, start: int = 0) -> Iterator[tuple[int, int, bool]]:
    """Each place from start on where text holds marker (blanks not counted): where it starts, where it ends, and
    whether it is whole (False: the text ends inside it)."""
    at = text.find(marker[0], start)
    while at >= 0:
        found = _match_loose(text, at, marker)
        if found is not None:
            yield at, found[0], found[1]
        at = text.find(marker[0], at + 1)


def _match_loose(text: str, pos: int, literal: str) -> tuple[int, bool] | None:
    """How text at pos holds literal, blanks anywhere in either not counted: where the match ends and whether it is
    whole (False: text ends before literal does); None where they differ."""
    for char in literal:
        if char.isspace():
            continue
        pos = _skip_blanks(text, pos)
        if pos >= len(text):
            return pos, False
        if text[pos] != char:
            return None
        pos += 1
    return pos, True


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


@dataclass(frozen=True)
class ToolChoice:
    """What the answer may do with the tools: "none" (answer in text; the tools are not shown), "auto" (calls or
    text), "required" (one call or more), or name (a call of that function)."""

    mode: str
    name: str | None = None

    @classmethod
    def of(cls, choice: Any, tools: Sequence[Mapping[str, Any]]) -> ToolChoice:
        if choice is None:
            return cls("auto" if tools else "none")
        if choice in ("none", "auto", "required"):
            return cls(choice)
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or (isinstance(choice, dict) and choice.get("type", "function") != "function"):
            raise InvalidArgumentError(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}, '
                f"got {choice!r}"
            )
        if name not in {tool["function"]["name"] for tool in tools}:
            raise InvalidArgumentError(f"tool_choice names {name!r}, which is not one of the tools")
        return cls("function", name)

    def tools(self, tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The tools an answer may call."""
        return [t for t in tools if t["function"]["name"] == self.name] if self.name is not None else list(tools)


def checked_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI's tools ([{"type": "function", "function": {"name", "description"?, "parameters"?}}]), checked;
    InvalidArgumentError naming the first that is not one."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidArgumentError(f"tools must be a list, got {type(tools).__name__}")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidArgumentError(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}')
        name = function.get("name")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise InvalidArgumentError(f"tools[{i}].function.name must be a name without blanks, got {name!r}")
        if name in names:
            raise InvalidArgumentError(f"tools[{i}]: two tools are named {name!r}")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidArgumentError(f"tools[{i}].function.parameters must be a JSON schema object")
    return tools


def template_messages(messages: Sequence[Mapping[str, Any]], *, object_arguments: bool) -> list[dict[str, Any]]:
    """Messages as templates take them: an assistant's call arguments (JSON text in OpenAI's messages) as objects
    where the template writes objects (Hugging Face's convention; left as text where it is not a JSON object)."""
    out = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if object_arguments and isinstance(calls, list):
            message["tool_calls"] = [_with_object_arguments(call) for call in calls]
        out.append(message)
    return out


def _with_object_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if not isinstance(arguments, str):
        return call
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return call
    return {**call, "function": {**function, "arguments": value}} if isinstance(value, dict) else call


class HeldToolCalls:
    """A streamed answer's content, fed in pieces: what cannot be part of a call is released at once, a call's text
    (from the start marker and the blanks before it, or with no marker from an answer that opens with a call) is held
    to the end and read there (ToolCallSyntax.parse: calls of the functions named names). prefill: the text the
    prompt ended with (a held answer's start marker), read with the answer, never released."""

    def __init__(self, syntax: ToolCallSyntax, names: Set[str], prefill: str = "") -> None:
        self._syntax = syntax
        self._names = names
        self._text = prefill
        self._released = len(prefill)
        self._searching = True  # a call may still start in what is held
        self._calling = bool(prefill)  # a call started: all that follows is held

    def feed(self, text: str) -> str:
        self._text += text
        if not self._searching:
            return self._release(len(self._text))
        if self._calling:
            return ""
        marker = self._syntax.start.strip()
        if marker:
            upto = self._marker_at(marker)
            while upto > self._released and self._text[upto - 1].isspace():  # blanks before a call are not content
                upto -= 1
            return self._release(upto)
        if self._text.strip() and not self._syntax.opens(self._text):
            self._searching = False
            return self._release(len(self._text))
        return ""

    def _marker_at(self, marker: str) -> int:
        """Where the first marker, or the start of one the text may still complete, is (the text's end: none)."""
        for at, _, whole in _marker_matches(self._text, marker, self._released):
            self._calling = whole
            return at
        return len(self._text)

    def finish(self, *, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """The content left to release, and the answer's calls (cut: as parse's; a call it cut short is not content,
        and what is held back from where it starts is dropped)."""
        content, calls = self._syntax.parse(self._text, self._names, cut=cut)
        if calls:
            return content[self._released :], calls
        return self._release(self._syntax.content_end(self._text, cut=cut)), []

    def _release(self, upto: int) -> str:
        upto = max(upto, self._released)
        text, self._released = self._text[self._released : upto], upto
        return text


@dataclass(frozen=True)
class ToolUse:
    """A chat request's tools as its answer uses them: the tools the template is given (none with tool_choice
    "none"), the syntax the answer's calls are read in (None: nothing is read), whether it may hold several calls,
    and for "required" or a named function the grammar that holds the answer to calls, after the syntax's start
    marker given in the prompt (prefill)."""

    tools: list[dict[str, Any]]
    choice: ToolChoice
    syntax: ToolCallSyntax | None
    parallel: bool

    @classmethod
    def of(
        cls,
        model: Model,
        tools: Any,
        tool_choice: Any,
        *,
        parallel: bool | None = None,
        template_kwargs: Mapping[str, object] | None = None,
    ) -> ToolUse:
        """InvalidArgumentError for tools or a choice that are not OpenAI's; ChatTemplateError where the answer is
        to be held to calls and the template writes none. With "auto" and such a template, the template is given
        the tools (a Jinja2 one: it may describe them) and the answer is plain content, as llama-server answers."""
        checked = checked_tools(tools)
        choice = ToolChoice.of(tool_choice, checked)
        if choice.mode == "required" and not checked:
            raise InvalidArgumentError('tool_choice "required" needs tools')
        if choice.mode == "none" or not checked:  # "auto" without tools (some clients send it): nothing to call
            return cls([], ToolChoice("none"), None, False)
        try:
            syntax = ToolCallSyntax.learn(
                lambda messages, generate: model.chat_prompt(
                    messages, add_generation_prompt=generate, template_kwargs=template_kwargs, tools=_PROBE_TOOLS
                )
            )
        except ChatTemplateError as exc:
            if choice.mode != "auto":
                raise
            logger.warning("tools are not read from the answers: %s", exc)
            return cls(checked if isinstance(model.chat_template, ChatTemplate) else [], choice, None, False)
        syntax = dataclasses.replace(syntax, end=_before_end_of_generation(syntax.end, model.tokenizer))
        # several calls where the template writes several and the request does not say otherwise; a named function
        # is called once
        can_repeat = syntax.between is not None and choice.mode != "function"
        return cls(checked, choice, syntax, can_repeat if parallel is None else parallel and can_repeat)

    @property
    def names(self) -> frozenset[str]:
        """The functions the answer may call."""
        return frozenset(tool["function"]["name"] for tool in self.choice.tools(self.tools))

    @property
    def forced(self) -> bool:
        """The answer is held to calls."""
        return self.syntax is not None and self.choice.mode in ("required", "function")

    @property
    def prefill(self) -> str:
        """The text the prompt ends with: a held answer's start marker."""
        return self.syntax.start.lstrip() if self.forced and self.syntax is not None else ""

    def prompt_tokens(self, model: Model, messages: Sequence[Mapping[str, Any]], **options: Any) -> list[int]:
        """The chat prompt's tokens (Model.chat_tokens, given options): earlier calls' arguments as the template takes
        them (template_messages), the tools given to it, and a held answer's prefill after."""
        object_arguments = self.syntax is None or self.syntax.object_arguments
        chat = template_messages(messages, object_arguments=object_arguments)
        tokens = model.chat_tokens(chat, tools=self.tools, **options)
        return tokens + model.tokenize(self.prefill, add_bos=False, special=True) if self.prefill else tokens

    def grammar(self) -> Grammar | None:
        if not self.forced or self.syntax is None:
            return None
        return self.syntax.grammar(self.choice.tools(self.tools), parallel=self.parallel)

    def shown_tokens(self, model: Model) -> frozenset[int]:
        """The special tokens of the syntax's markers, whose texts the answer must write to be read."""
        if self.syntax is None:
            return frozenset()
        text = self.syntax.start + (self.syntax.between or "") + self.syntax.end + self.syntax.separator
        tokenizer = model.tokenizer
        tokens = tokenizer.tokenize(text, add_bos=False, special=True)
        return frozenset(t for t in tokens if tokenizer.piece(t, special=True) != tokenizer.piece(t, special=False))

    def read(self, content: str, *, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """An answer's content (its text after the prefill) and calls (cut: it ran out of tokens; a call it cut
        short, from where it starts, is not content)."""
        if self.syntax is None:
            return content, []
        text, calls = self.syntax.parse(self.prefill + content, self.names, cut=cut)
        if calls:
            return text, self.allowed(calls)
        answer = self.prefill + content
        return answer[len(self.prefill) : self.syntax.content_end(answer, cut=cut)], []

    def allowed(self, calls: list[ToolCall]) -> list[ToolCall]:
        """calls, only the first where the answer may hold one."""
        return calls if self.parallel else calls[:1]

    def held(self) -> HeldToolCalls | None:
        """A streamed answer's holder (None: nothing is read)."""
        return None if self.syntax is None else HeldToolCalls(self.syntax, self.names, self.prefill)


def _before_end_of_generation(text: str, tokenizer: Tokenizer) -> str:
    """text up to its first end-of-generation token's (an answer stops at that token, so a syntax's end that holds
    one, with what the template writes after it, is never written: Command R's, DeepSeek-R1's)."""
    cut = len(text)
    for token in tokenizer.tokenize(text, add_bos=False, special=True):
        if tokenizer.is_end_of_generation(token):
            at = text.find(tokenizer.piece(token, special=True).decode("utf-8", errors="replace"))
            cut = min(cut, at) if at >= 0 else cut
    return text[:cut]


def functions_as_tools(functions: Any, function_call: Any) -> tuple[Any, Any]:
    """OpenAI's deprecated functions / function_call as tools / tool_choice."""
    tools = None if functions is None else [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, dict):
        return tools, {"type": "function", "function": {"name": function_call.get("name")}}
    return tools, function_call

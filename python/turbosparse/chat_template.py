"""Chat prompts from a GGUF's `tokenizer.chat_template`: the Jinja2 template rendered as llama.cpp (with --jinja) and
Hugging Face render it - in a sandbox, blocks trimmed, with `raise_exception`, `strftime_now` and a `tojson` that
keeps non-ASCII text. A template given by name (llama-server's `--chat-template chatml`) is one of llama.cpp's
built-in ones, rendered by llama.cpp itself."""

from __future__ import annotations

import ctypes
import datetime
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

import jinja2
import jinja2.defaults
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import llama_cpp

from turbosparse.errors import ChatTemplateError
from turbosparse.tokenizer import Tokenizer


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face marks assistant text with it): renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's own class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)  # the tag name
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """Hugging Face's tojson: its arguments, in its order (GigaChat's templates pass ensure_ascii)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# the functions templates call, beside Jinja2's own globals (namespace, range, ...)
_GLOBALS = {"raise_exception": _raise_exception, "strftime_now": _strftime_now}
# what every template is given; template variables (llama-server's chat_template_kwargs) cannot replace them
_GIVEN = ("messages", "add_generation_prompt", "bos_token", "eos_token", *_GLOBALS, *jinja2.defaults.DEFAULT_NAMESPACE)


def checked_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Template variables (llama-server's chat_template_kwargs) as a template is given them; ChatTemplateError for a
    name the template is given anyway, or an enable_thinking that is not a boolean (llama-server's check: a string
    "false" would turn nothing off)."""
    if not isinstance(variables, Mapping):
        raise ChatTemplateError(f"template variables are a JSON object ({{name: value}}), got {variables!r}")
    taken = [name for name in variables if name in _GIVEN]
    if taken:
        raise ChatTemplateError(f"a template variable cannot be named {taken[0]!r}: the template is given its own")
    thinking = variables.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise ChatTemplateError(f"enable_thinking must be true or false, got {thinking!r}")
    return dict(variables)


# A template comes with the model file: these bound what one rendering may cost (real ones take milliseconds and
# write what the messages hold; no context holds a prompt of 32 Mi characters)
MAX_RENDER_SECONDS = 10.0
MAX_PROMPT_CHARS = 1 << 25
_MAX_POWER_BITS = 1 << 16
_FORMAT_SIZES = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d+|\*)?(?:\.(\d+|\*))?")  # printf widths and precisions


def _repeated_length(left: Any, right: Any) -> int:
    """The length of `left * right` where it repeats a string or list, else 0."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(times, int):
            return len(seq) * times
    return 0


def _check_format(text: Any, args: Any) -> None:
    """`text % args` pads to no width or precision past MAX_PROMPT_CHARS (one C call would make it whole)."""
    if not isinstance(text, str):
        return
    matches = list(_FORMAT_SIZES.finditer(text))
    sizes = [int(n) for match in matches for n in match.groups() if n and n != "*"]
    if any("*" in match.group(0) for match in matches):  # widths given among the arguments
        sizes += [a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int)]
    if sizes and max(sizes) > MAX_PROMPT_CHARS:
        raise jinja2.sandbox.SecurityError(f"a format of width {max(sizes)}")


def _check_width(width: Any, lines: int = 1) -> None:
    if isinstance(width, int) and width * lines > MAX_PROMPT_CHARS:
        raise jinja2.sandbox.SecurityError(f"a padding of {width * lines} characters")


class _BoundedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja2's sandbox, with what can make a whole string or number in one step (`*`, `**`, `%` and the `format`,
    `center` and `indent` filters) checked before it runs: one C call that makes 10**10 characters cannot be stopped
    once started. (Strings grown step by step, `~` in a loop, are bounded by the time only.)"""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        center, indent, fmt = self.filters["center"], self.filters["indent"], self.filters["format"]

        def bounded_center(value: str, width: int = 80) -> str:
            _check_width(width)
            return center(value, width)

        def bounded_indent(value: str, width: int | str = 4, *args: Any, **kwargs: Any) -> str:
            _check_width(width if isinstance(width, int) else len(width), str(value).count("\n") + 1)
            return indent(value, width, *args, **kwargs)

        def bounded_format(value: str, *args: Any, **kwargs: Any) -> str:
            _check_format(value, args)
            return fmt(value, *args, **kwargs)

        self.filters |= {"center": bounded_center, "indent": bounded_indent, "format": bounded_format}

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and _repeated_length(left, right) > MAX_PROMPT_CHARS:
            raise jinja2.sandbox.SecurityError(f"a repetition of {_repeated_length(left, right)} items")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left).bit_length() * right > _MAX_POWER_BITS:
                raise jinja2.sandbox.SecurityError(f"a power of about {abs(left).bit_length() * right} bits")
        if operator == "%":
            _check_format(left, right)
        return super().call_binop(context, operator, left, right)


def _deadline_tracer(seconds: float, previous: Any) -> Callable[[FrameType, str, Any], Any]:
    """A sys.settrace tracer that raises once `seconds` have passed, checked at every Python call (filters, Jinja2's
    runtime) and at every line of the template's own code (Jinja2 compiles it to Python named "<template>"): loops
    that write nothing are stopped too. Other frames go to the tracer that was there (a debugger's), if any."""
    deadline = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > deadline:
            raise ChatTemplateError(f"the chat template took longer than {seconds:g} s to render")

    def in_template(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            check()
        return in_template

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        check()
        if frame.f_code.co_filename == "<template>":
            return in_template
        return previous(frame, event, arg) if previous is not None else None

    return on_call


class ChatTemplate:
    """A compiled chat template. bos_token / eos_token: the texts of the model's special tokens."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = _BoundedSandbox(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag]
        )
        env.globals.update(_GLOBALS)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template does not parse: {exc}") from None
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def for_tokenizer(cls, source: str, tokenizer: Tokenizer) -> ChatTemplate:
        def text(token: int) -> str:
            return tokenizer.piece(token, special=True).decode("utf-8", errors="replace") if token >= 0 else ""

        return cls(source, bos_token=text(tokenizer.bos), eos_token=text(tokenizer.eos))

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        variables: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for messages ([{"role": ..., "content": ...}, ...]); variables go to the template too
        (llama-server's chat_template_kwargs: {"enable_thinking": False} for Qwen3's, ...), and tools (OpenAI's
        function list; None where none are given)."""
        context = {
            "tools": None,  # defined, as Hugging Face's apply_chat_template and llama.cpp pass it: `tools is not none`
            **checked_variables(variables or {}),
            **({"tools": [dict(t) for t in tools]} if tools else {}),
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        previous = sys.gettrace()  # a debugger's, put back after
        sys.settrace(_deadline_tracer(MAX_RENDER_SECONDS, previous))
        try:
            return self._bounded_text(context)
        except ChatTemplateError:
            raise
        except jinja2.sandbox.SecurityError as exc:  # the template's own doing, whatever the messages
            raise ChatTemplateError(f"the chat template was stopped: {exc}") from None
        except Exception as exc:  # whatever the template makes of the messages (a TypeError on a None, ...)
            raise ChatTemplateError(f"the chat template refused the messages: {exc}") from None
        finally:
            sys.settrace(previous)

    def _bounded_text(self, context: dict[str, Any]) -> str:
        parts, size = [], 0
        for part in self._template.generate(context):
            size += len(part)
            if size > MAX_PROMPT_CHARS:
                raise ChatTemplateError(f"the chat template wrote more than {MAX_PROMPT_CHARS} characters")
            parts.append(part)
        return "".join(parts)


def builtin_template_names() -> list[str]:
    """The names of llama.cpp's built-in chat templates (chatml, llama3, gemma, mistral-v7, phi3, ...)."""
    n = llama_cpp.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    llama_cpp.llama_chat_builtin_templates(names, n)
    return [name.decode() for name in names]


class BuiltinChatTemplate:
    """One of llama.cpp's built-in chat templates, chosen by name and rendered by llama.cpp (llama_chat_apply_template),
    as llama-server and llama-cli render `--chat-template NAME`."""

    def __init__(self, name: str) -> None:
        if name not in builtin_template_names():
            raise ChatTemplateError(f"{name!r} is not one of llama.cpp's built-in chat templates")
        self.name = name

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for messages (roles and string contents only: a built-in template reads nothing else)."""
        texts = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ChatTemplateError(f"message {i}: the {self.name} template takes a string role and content")
            try:
                encoded = (role.encode("utf-8"), content.encode("utf-8"))
            except UnicodeEncodeError:
                raise ChatTemplateError(f"message {i} holds an unpaired surrogate, which is not Unicode text") from None
            if b"\0" in encoded[0] + encoded[1]:  # llama.cpp reads C strings: the text would end there
                raise ChatTemplateError(f"message {i} holds a NUL character, which llama.cpp's templates cannot take")
            texts.append(encoded)
        chat = (llama_cpp.llama_chat_message * len(texts))()
        for slot, (role, content) in zip(chat, texts, strict=True):
            slot.role, slot.content = role, content
        name = self.name.encode()
        size = 2 * sum(len(role) + len(content) for role, content in texts) + 256
        while True:  # llama.cpp says the length it needs where the buffer is too small
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(name, chat, len(texts), add_generation_prompt, buf, size)
            if n < 0:
                raise ChatTemplateError(f"llama.cpp's {self.name} template refused the messages")
            if n <= size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n


def chat_template_from(text: str, tokenizer: Tokenizer) -> ChatTemplate | BuiltinChatTemplate:
    """A chat template given as llama-server's --chat-template takes one: a built-in template's name, else Jinja2."""
    names = builtin_template_names()
    if text.strip() in names:
        return BuiltinChatTemplate(text.strip())
    if "{{" not in text and "{%" not in text:
        raise ChatTemplateError(
            f"the chat template {text[:60]!r} is neither a Jinja2 template (it has no {{{{ or {{%) nor the name of "
            f"one of llama.cpp's built-in templates: {', '.join(names)}"
        )
    return ChatTemplate.for_tokenizer(text, tokenizer)

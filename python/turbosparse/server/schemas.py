"""Request bodies of the OpenAI endpoints (and llama-server's /completion, /tokenize, /detokenize), validated by
pydantic.

Fields OpenAI clients send that do not change the answer (user, model, ...) are accepted; features the engine
does not have (n > 1, ...) are refused with a message saying so. Defaults of the sampling fields are
llama-server's; so are its `grammar` (GBNF) and `json_schema` fields, beside OpenAI's `response_format`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from turbosparse.errors import GrammarError
from turbosparse.grammar import Grammar
from turbosparse.logprobs import MAX_TOP_LOGPROBS
from turbosparse.reasoning import ReasoningFormat
from turbosparse.sampling import SamplingParams, llama_seed
from turbosparse.server.errors import validation_text
from turbosparse.tool_calls import functions_as_tools

MAX_STOPS = 16
BANNED = -1e30  # llama-server's logit_bias false as JSON's numbers hold it (no -inf there): the token is never sampled


def _unpaired_surrogate(value: Any, where: str) -> str | None:
    """Where in value's strings (lists and dicts searched) the first unpaired UTF-16 surrogate is, else None. JSON
    can spell one ("\\ud800": a client that cut a string inside an emoji's pair); it is not Unicode text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where}: an unpaired surrogate (U+{ord(value[exc.start]):04X} at character {exc.start})"
    elif isinstance(value, list | dict):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found = _unpaired_surrogate(key, where) or _unpaired_surrogate(item, f"{where}.{key}")
            if found:
                return found
    return None


class _Body(BaseModel):
    # unknown fields are ignored, as OpenAI-compatible servers do (but for text that is not Unicode, below);
    # Python's JSON reads NaN and Infinity, refused here
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _unicode_text(self) -> _Body:
        for name, value in self:  # fields and unknown ones; nested bodies check themselves
            found = _unpaired_surrogate(value, name)
            if found:
                raise ValueError(f"{found} is not Unicode text")
        return self


class StreamOptions(_Body):
    include_usage: bool = False


class _Generate(_Body):
    """What completions and chat completions share: sampling, limits, stop strings, streaming."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=0.8, ge=0.0, le=100.0)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)  # 0: the best token alone
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)
    repeat_last_n: int = Field(default=64, ge=-1)  # -1: every token, as llama-server's
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logit_bias: dict[str, float] | None = None  # token id (as JSON keys are strings) -> added to its logit
    grammar: str | None = None  # GBNF
    json_schema: dict[str, Any] | None = None
    cache_prompt: bool = False  # llama-server's: keep all a slot holds of the prompt, generated tokens too
    id_slot: int = Field(default=-1, ge=-1)  # llama-server's: the slot to decode in where it is free (-1: any)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """A field sent as null takes its default, as in llama-server (OpenAI's fields are nullable, and clients send
        their unset options as null)."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n = 1 is supported")
        return n

    @field_validator("seed")
    @classmethod
    def _seed(cls, seed: int | None) -> int | None:
        return llama_seed(seed)  # llama-server's -1 (0xFFFFFFFF): a fresh random seed

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token in bias or {}:
            if not _is_id(token):
                raise ValueError(f"logit_bias keys are token ids, got {token!r}")
        return bias

    @property
    def bias(self) -> dict[int, float]:
        return {int(token): value for token, value in (self.logit_bias or {}).items()}

    def constraint_field(self) -> str | None:
        """The field that constrains the answer (None: none); GrammarError when more than one does."""
        asked = [name for name, value in self._constraints().items() if value is not None]
        if len(asked) > 1:
            raise GrammarError(f"{' and '.join(asked)} both constrain the answer: give one of them")
        return asked[0] if asked else None

    def constraint(self) -> Grammar | None:
        """The grammar the answer follows (None: none); GrammarError when it cannot be made."""
        name = self.constraint_field()
        value = self._constraints()[name] if name else None
        if name == "grammar":
            return Grammar(value)
        if name == "json_schema":
            return Grammar.from_json_schema(value)
        return Grammar.from_response_format(value)

    def _constraints(self) -> dict[str, Any]:
        return {"grammar": self.grammar, "json_schema": self.json_schema}

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            repeat_last_n=self.repeat_last_n,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            seed=self.seed,
            logit_bias=self.bias,
        )


class CompletionRequest(_Generate):
    prompt: str | list[int] | list[str] | list[list[int]]  # OpenAI's four forms; one prompt per request
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None  # insertion: the middle between prompt and suffix filled (FIM tokens needed)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[int] | list[str] | list[list[int]]) -> str | list[int] | list[str]:
        """The prompt as text, token ids or a one-element list of text; a one-element list of token ids becomes its
        token ids (evaluation harnesses send tokenized prompts that way)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if isinstance(prompt, list) and isinstance(prompt[0], str | list) and len(prompt) != 1:
            raise ValueError("one prompt per request is supported")
        if isinstance(prompt, list) and isinstance(prompt[0], list):
            if not prompt[0]:
                raise ValueError("the prompt is empty")
            return prompt[0]
        return prompt  # type: ignore[return-value]

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.suffix and self.echo:
            raise ValueError("echo with a suffix (a fill-in-the-middle prompt) is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of = 1 is supported")
        return self


def _is_id(key: str) -> bool:
    return key.isascii() and key.isdigit()


class NativeCompletionRequest(_Generate):
    """llama-server's own /completion: prompt as text, token ids, or both mixed in one list (each text tokenized in
    turn, the BOS before a leading text only); n_predict (or max_tokens; -1: until the slot is full); cache_prompt on,
    as there; n_probs alternatives per token (completion_probabilities); return_tokens: the generated ids too;
    logit_bias also as [[id, bias], ...], false banning the token; ignore_eos banning the end-of-generation tokens."""

    prompt: str | list[StrictInt | str]
    n_predict: int | None = Field(default=None, ge=-1)
    cache_prompt: bool = True
    n_probs: StrictInt = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS)
    return_tokens: bool = False
    ignore_eos: bool = False  # end-of-generation tokens banned (the route gives them: resolve)
    # (token id or text, bias) in order, as llama-server adds them up; false (a ban) as BANNED
    logit_bias: list[tuple[StrictInt | str, float]] | None = None  # type: ignore[assignment]
    _extra_bias: list[tuple[int, float]] = PrivateAttr(default_factory=list)  # resolve's: the texts' tokens, bans

    def text_biases(self) -> list[str]:
        """The texts logit_bias biases (each of a text's tokens, as llama-server tokenizes them)."""
        return [key for key, _ in self.logit_bias or [] if isinstance(key, str)]

    def resolve(self, tokens_of: dict[str, list[int]], end_of_generation: list[int]) -> None:
        """What needs the model: the tokens of each text_biases text, and with ignore_eos the end-of-generation ones."""
        texts = [
            (token, value) for key, value in self.logit_bias or [] if isinstance(key, str) for token in tokens_of[key]
        ]
        self._extra_bias = texts + ([(token, BANNED) for token in end_of_generation] if self.ignore_eos else [])

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]  # one prompt of token ids (and texts), as a list of prompts
        if not prompt:
            raise ValueError("the prompt is empty")
        if isinstance(prompt, list) and any(isinstance(p, list) for p in prompt):
            raise ValueError("one prompt per request is supported (a list of lists is several prompts)")
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
            raise ValueError("one prompt per request is supported (a list of texts is several prompts)")
        return prompt

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _pairs(cls, bias: Any) -> Any:
        """{"id or text": bias} and [[id or text, bias], ...] as pairs (in a pair a string is always a text, in an
        object a key of digits an id, as llama-server reads them); true (no bias) dropped, false (a ban) as BANNED."""
        if isinstance(bias, dict):
            bias = [[int(key) if _is_id(key) else key, value] for key, value in bias.items()]
        if not isinstance(bias, list):
            return bias
        out: list[tuple[Any, Any]] = []
        for pair in bias:
            if not isinstance(pair, list | tuple) or len(pair) != 2 or isinstance(pair[0], bool):
                raise ValueError(f"logit_bias entries are [token id or text, bias] pairs, got {pair!r}")
            token, value = pair
            if not isinstance(token, int | str) or (isinstance(token, int) and token < 0):
                raise ValueError(f"logit_bias keys are token ids or texts, got {token!r}")
            if value is not True:  # true: no bias, as llama-server skips it
                out.append((token, BANNED if value is False else value))
        return out

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: list[tuple[int | str, float]] | None) -> list[tuple[int | str, float]] | None:
        return bias  # texts too (resolve)

    @property
    def bias(self) -> dict[int, float]:
        """Each token's bias: the entries naming it (by id, or among a text's tokens) added up; a ban stays one."""
        entries = [(key, value) for key, value in self.logit_bias or [] if isinstance(key, int)] + self._extra_bias
        total: dict[int, float] = {}
        for token, value in entries:
            banned = value <= BANNED or total.get(token) == -math.inf
            total[token] = -math.inf if banned else total.get(token, 0.0) + value
        return total

    @model_validator(mode="after")
    def _supported(self) -> NativeCompletionRequest:
        if self.n_predict is not None:  # n_predict wins over max_tokens, as there
            self.max_tokens = None if self.n_predict < 0 else self.n_predict
        return self


class ExtraFileChunk(_Body):
    """/infill's input_extra entry: another file's text, as context."""

    text: str
    filename: str = "tmp"


class InfillRequest(NativeCompletionRequest):
    """llama-server's /infill: the code before (input_prefix) and after (input_suffix) the cursor, each text or token
    ids and texts mixed, other files' text as context (input_extra), prompt (optional) written after the prefix; the
    rest as /completion's."""

    prompt: str | list[StrictInt | str] = ""
    input_prefix: str | list[StrictInt | str] = ""
    input_suffix: str | list[StrictInt | str] = ""
    input_extra: list[ExtraFileChunk] = Field(default_factory=list)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        """Empty or one prompt (the prefix and suffix are the request's text)."""
        return NativeCompletionRequest._one_prompt(prompt) if prompt else prompt


def typed_parts(content: Any, parts: TypeAdapter[Any], known: tuple[str, ...], what: str) -> Any:
    """content, where a list is read as parts (or blocks) of the known types: a ValueError names the first other
    type, or the first bad part's field (not the error of content's string form, which pydantic names first)."""
    if not isinstance(content, list):
        return content
    for part in content:
        if isinstance(part, dict) and part.get("type") not in known:
            raise ValueError(f"{what} of type {part.get('type')!r} are not supported (only {', '.join(known)})")
    try:
        return parts.validate_python(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{what} {'.'.join(str(p) for p in first['loc'])}: {validation_text(first)}") from None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class RefusalPart(_Body):
    """An earlier answer's refusal (OpenAI's assistant content part), rendered as its text."""

    type: Literal["refusal"]
    refusal: str

    @property
    def text(self) -> str:
        return self.refusal


_CONTENT_PARTS = TypeAdapter(list[Annotated[TextPart | RefusalPart, Field(discriminator="type")]])


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | RefusalPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None  # an earlier answer's reasoning, which thinking templates may render
    tool_calls: list[dict[str, Any]] | None = None  # an earlier answer's calls (OpenAI's shape)
    tool_call_id: str | None = None  # a tool message's: the call it answers

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        return typed_parts(content, _CONTENT_PARTS, ("text", "refusal"), "content parts")

    @model_validator(mode="after")
    def _refusals_are_answers(self) -> ChatMessage:
        parts = self.content if isinstance(self.content, list) else []
        if self.role != "assistant" and any(isinstance(part, RefusalPart) for part in parts):
            raise ValueError(f"a refusal content part is an assistant's, not a {self.role} message's")
        return self

    def for_template(self, parts_joined_by: str = "\n") -> dict[str, Any]:
        """The message as chat templates expect it: content a string (text parts joined by newlines, as
        llama-server joins them for templates that take a string; a prefilled answer's parts as they are)."""
        text = (
            self.content
            if isinstance(self.content, str) or self.content is None
            else parts_joined_by.join(part.text for part in self.content)
        )
        message: dict[str, Any] = {"role": self.role, "content": text or ""}
        if self.name:
            message["name"] = self.name
        if self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(_Generate):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # None: where the template writes several calls
    functions: list[Any] | None = None  # OpenAI's deprecated form of tools
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # llama-server's: variables for the Jinja2 chat template
    reasoning_format: ReasoningFormat | None = None  # llama-server's: over --reasoning-format (reasoning.py)

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return top

    def _constraints(self) -> dict[str, Any]:
        text = self.response_format is None or self.response_format.get("type", "text") == "text"
        return {**super()._constraints(), "response_format": None if text else self.response_format}

    @property
    def answers_json(self) -> bool:
        """The answer is held to JSON (json_schema, a JSON response_format): never split into reasoning and content,
        as llama-server's thinking formats are not used with a schema."""
        constraints = self._constraints()
        return constraints["json_schema"] is not None or constraints["response_format"] is not None

    @property
    def n_top(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def tools_and_choice(self) -> tuple[Any, Any]:
        """tools and tool_choice, or the deprecated functions and function_call as them."""
        if self.functions is not None or self.function_call is not None:
            return functions_as_tools(self.functions, self.function_call)
        return self.tools, self.tool_choice

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        legacy = self.functions is not None or self.function_call is not None
        if legacy and (self.tools is not None or self.tool_choice is not None):
            raise ValueError("functions / function_call and tools / tool_choice both given: give one pair")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class EmbeddingRequest(_Body):
    """OpenAI's: one text or token list, or several."""

    input: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None  # OpenAI's shortened embeddings: only the model's n_embd (checked by the route)

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("input is an empty list")
        return value

    def inputs(self) -> list[str | list[int]]:
        """Each text or token list."""
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, int) for item in self.input):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)  # type: ignore[arg-type]


class SlotFileRequest(_Body):
    """/slots/{id}?action=save|restore: a file name inside --slot-save-path (erase reads none)."""

    filename: str | None = None


class TokenizeRequest(_Body):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Body):
    tokens: list[int]


# the chat completion's fields that another API's request (Anthropic's, the Responses API's) names otherwise or has no
# place for: never taken from beside its own fields
_NAMED_OTHERWISE = frozenset({
    "messages", "max_tokens", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "stream", "stream_options", "functions", "function_call", "logprobs", "top_logprobs",
})  # fmt: skip


def chat_fields_beside(extra: dict[str, Any] | None, named_otherwise: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The chat completion's fields another API's request gives beside its own (llama-server passes them on:
    sampling, seed, template variables, ...), less the ones that API names otherwise (those of every such API, and
    named_otherwise)."""
    own = _NAMED_OTHERWISE | named_otherwise
    return {key: value for key, value in (extra or {}).items()
            if key in ChatCompletionRequest.model_fields and key not in own}  # fmt: skip

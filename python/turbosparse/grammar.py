"""Grammar-constrained sampling: llama.cpp's own GBNF engine (through llama-cpp-python) tells which tokens may come
next; JSON schemas become GBNF through llama-cpp-python's converter. OpenAI's `response_format` maps onto both."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from turbosparse.errors import GrammarError
from turbosparse.grammar_engine import GrammarState
from turbosparse.tokenizer import Tokenizer

# llama.cpp's grammar code recurses once per nested group and once per rule reference (grammar_worker.py runs it on
# a thread with a 256 MB stack, over 100000 levels): a grammar may hold at most this many groups and rules together,
# counted anywhere in its text, which bounds every chain of them whatever the syntax around. Its parse time grows with
# the square of a chain's length (10000 rules each naming the next: 1 s; 50000: 47 s)
MAX_GROUPS_AND_RULES = 20_000
# llama.cpp's bound on a repetition's count; the JSON schema converter writes out minLength / minItems / ... copies
# of an item (a minLength of 10**9 took it a minute and 5 GB), so counts above it are refused before it runs
MAX_REPETITIONS = 2000
_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# a regular expression's {m} / {m,n} / {,n}: each part is read as the converter reads it (int(), so "1_000", "+5")
_QUANTIFIER = re.compile(r"\{([^{}]*)\}")
# llama.cpp's token references (<[id]>, <text>, !<...>) abort its engine: its matcher allows a token that spans a
# literal and a token reference (" the" for `" " !<[2]>`), which accepting it then throws on. A grammar with a "<"
# outside its "literals" and [classes] (as llama.cpp reads them: escapes, and # comments to the end of the line,
# whose "<" count too) is refused. A literal or class left open runs to the end (llama.cpp stops there with an error),
# which keeps the scan linear.
_LITERALS_AND_CLASSES = re.compile(r'"(?:\\.|[^"\\])*(?:"|$)|\[(?:\\.|[^\]\\])*(?:\]|$)|#[^\r\n<]*')
MAX_GBNF_CHARS = 1 << 20


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar (llama.cpp's format) that generated text must follow, from its rule `root`."""

    gbnf: str
    root: str = "root"

    @classmethod
    def of(cls, value: Grammar | str | dict[str, Any]) -> Grammar:
        """What a grammar= argument may be: a Grammar, GBNF text (as llama-cpp-python's LlamaGrammar.from_string
        takes it) or a JSON schema (a dict)."""
        if isinstance(value, Grammar):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            return cls.from_json_schema(value)
        raise GrammarError(
            f"grammar: expected a Grammar, GBNF text or a JSON schema (a dict), got {type(value).__name__}"
        )

    @classmethod
    def json(cls) -> Grammar:
        """Any JSON object (OpenAI's "JSON mode")."""
        return cls(JSON_GBNF)

    @classmethod
    def from_json_schema(cls, schema: dict[str, Any] | str) -> Grammar:
        """JSON that validates against schema (a dict, or its JSON text)."""
        try:
            value = json.loads(schema) if isinstance(schema, str) else schema
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the JSON schema is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise GrammarError(f"a JSON schema is a JSON object, got {type(value).__name__} {str(value)[:60]}")
        try:
            check_schema_counts(value)
            return cls(strict_strings(json_schema_to_gbnf(json.dumps(value))))
        except GrammarError:
            raise
        except Exception as exc:  # the converter raises whatever its walk meets (KeyError, TypeError, ...)
            raise GrammarError(
                f"the JSON schema cannot be turned into a grammar ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def from_response_format(cls, response_format: dict[str, Any] | None) -> Grammar | None:
        """OpenAI's response_format: {"type": "text"} (None: no grammar), {"type": "json_object"} (optionally with
        a "schema", as llama-cpp-python and llama-server take it) or {"type": "json_schema", "json_schema":
        {"schema": ...}} (OpenAI's structured outputs)."""
        if response_format is None:
            return None
        if not isinstance(response_format, dict):
            raise GrammarError(f"response_format must be an object, got {response_format!r}")
        kind = response_format.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            schema = response_format.get("schema")
            return cls.json() if schema is None else cls.from_json_schema(schema)
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is None:
                schema = response_format.get("schema")  # llama-server's shorter form
            if schema is None:
                raise GrammarError('response_format of type "json_schema" needs json_schema.schema')
            return cls.from_json_schema(schema)
        raise GrammarError(f"response_format type {kind!r} is not supported: 'text', 'json_object' or 'json_schema'")

    def check(self) -> None:
        """GrammarError for a grammar with more groups and rules than llama.cpp's recursion can take, or with token
        references."""
        if len(self.gbnf) > MAX_GBNF_CHARS:
            raise GrammarError(f"the grammar has {len(self.gbnf)} characters; at most {MAX_GBNF_CHARS}")
        try:
            self.gbnf.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise GrammarError(f"the grammar holds an unpaired surrogate at character {exc.start}") from None
        count = self.gbnf.count("(") + self.gbnf.count("::=")
        if count > MAX_GROUPS_AND_RULES:
            raise GrammarError(f"the grammar has {count} groups and rules; at most {MAX_GROUPS_AND_RULES}")
        if "<" in _LITERALS_AND_CLASSES.sub("", self.gbnf):
            raise GrammarError("token references (<...>) are not supported: llama.cpp's grammar engine aborts on some")

    def start(self, tokenizer: Tokenizer) -> GrammarState:
        """The grammar's state at the start of a generation; GrammarError when it does not parse."""
        self.check()
        return GrammarState(self.gbnf, self.root, tokenizer)


# llama-cpp-python's schema converter lets a JSON string hold raw control characters, which JSON does not allow
# (a newline inside a string made answers that json.loads refuses); llama.cpp's own converter, which llama-server
# uses, leaves them out, as JSON_GBNF's string rule does
_LOOSE_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def strict_strings(gbnf: str) -> str:
    """A converter's grammar with its JSON strings' characters as JSON allows them (no raw control characters)."""
    return "\n".join(_STRICT_CHAR + line[len(_LOOSE_CHAR) :] if line.startswith(_LOOSE_CHAR) else line
                     for line in gbnf.split("\n"))  # fmt: skip


def _numbers(quantifier: str) -> list[int]:
    """The counts of a {...} quantifier's inside, as the converter reads them; [] for what it does not read so."""
    out = []
    for part in quantifier.split(","):
        try:
            out.append(int(part.strip()))
        except ValueError:
            pass
    return out


def check_schema_counts(schema: Any) -> None:
    """GrammarError for a count in schema (anywhere in it) above MAX_REPETITIONS: a length / item / property
    keyword, or a {m,n} quantifier in a "pattern"."""
    todo = [schema]
    while todo:
        value = todo.pop()
        if isinstance(value, list):
            todo.extend(value)
        if not isinstance(value, dict):
            continue
        todo.extend(value.values())
        counts = [(key, value.get(key)) for key in _COUNT_KEYWORDS]
        pattern = value.get("pattern")
        if isinstance(pattern, str):
            counts += [("pattern", n) for inside in _QUANTIFIER.findall(pattern) for n in _numbers(inside)]
        for key, count in counts:
            if isinstance(count, int | float) and count > MAX_REPETITIONS:
                raise GrammarError(
                    f"the JSON schema's {key} count {count} is above {MAX_REPETITIONS} (llama.cpp's repetition bound)"
                )

"""Grammar-constrained sampling: llama.cpp's own GBNF engine (through llama-cpp-python) tells which tokens may come
next; JSON schemas become GBNF through llama-cpp-python's converter. OpenAI's `response_format` maps onto both."""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from turbosparse.errors import GrammarError
from turbosparse.tokenizer import Tokenizer

# llama_token_data: {int32 id; float logit; float p}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
# llama.cpp's grammar parser writes why a grammar does not parse straight to stderr (file descriptor 2), its loader
# logs a line through the process-wide log callback: while a grammar is parsed both are kept, so that the error can
# say what is wrong
_PARSE_LOCK = threading.Lock()
# llama.cpp's parser recurses once per nested group and its matcher once per rule reference, on the calling thread's
# stack: deeper grammars (20000 nested groups) crash the process, so these bounds are checked first
MAX_NESTING = 2000
MAX_RULES = 4096
# llama.cpp's bound on a repetition's count; the JSON schema converter writes out minLength / minItems / ... copies
# of an item (a minLength of 10**9 took it a minute and 5 GB), so counts above it are refused before it runs
MAX_REPETITIONS = 2000
_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")  # a regular expression's {m} / {m,n}
# what holds no group or rule: "literals", [character classes] (escapes included) and # comments
_LITERALS_AND_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*')
_PARENS = re.compile(r"[()]")


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar (llama.cpp's format) that generated text must follow, from its rule `root`."""

    gbnf: str
    root: str = "root"

    @classmethod
    def json(cls) -> Grammar:
        """Any JSON object (OpenAI's "JSON mode")."""
        return cls(JSON_GBNF)

    @classmethod
    def from_json_schema(cls, schema: dict[str, Any] | str) -> Grammar:
        """JSON that validates against schema (a dict, or its JSON text)."""
        try:
            value = json.loads(schema) if isinstance(schema, str) else schema
            _check_counts(value)
            return cls(json_schema_to_gbnf(json.dumps(value)))
        except GrammarError:
            raise
        except Exception as exc:  # the converter raises whatever its walk meets (KeyError, TypeError, ...)
            raise GrammarError(f"the JSON schema cannot be turned into a grammar: {exc!r}") from None

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
        """GrammarError for a grammar too deeply nested, or with too many rules, for llama.cpp's recursion."""
        code = _LITERALS_AND_COMMENTS.sub(" ", self.gbnf)
        rules = code.count("::=")
        depth = deepest = 0
        for paren in _PARENS.findall(code):
            depth += 1 if paren == "(" else -1
            deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            raise GrammarError(f"the grammar nests groups {deepest} deep; at most {MAX_NESTING}")
        if rules > MAX_RULES:
            raise GrammarError(f"the grammar has {rules} rules; at most {MAX_RULES}")

    def start(self, tokenizer: Tokenizer) -> GrammarState:
        """The grammar's state at the start of a generation; GrammarError when it does not parse."""
        return GrammarState(self, tokenizer)


def _check_counts(schema: Any) -> None:
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
            counts += [("pattern", int(n)) for match in _QUANTIFIER.findall(pattern) for n in match if n]
        for key, count in counts:
            if isinstance(count, int | float) and count > MAX_REPETITIONS:
                raise GrammarError(
                    f"the JSON schema's {key} count {count} is above {MAX_REPETITIONS} (llama.cpp's repetition bound)"
                )


def _parse(tokenizer: Tokenizer, grammar: Grammar) -> llama_cpp.llama_sampler_p:
    """llama.cpp's grammar sampler for grammar; GrammarError with llama.cpp's words when it does not parse."""
    logged: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        logged.append(text.decode("utf-8", errors="replace"))

    vocab = tokenizer._vocab  # raises when the tokenizer is closed
    with _PARSE_LOCK, tempfile.TemporaryFile() as written:
        previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
        sys.stderr.flush()
        stderr = os.dup(2)
        os.dup2(written.fileno(), 2)
        llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
        try:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.gbnf.encode(), grammar.root.encode())
        finally:
            llama_cpp.llama_log_set(previous, user_data)
            os.dup2(stderr, 2)
            os.close(stderr)
        written.seek(0)
        text = written.read().decode("utf-8", errors="replace")
    if sampler:
        if text:  # another thread's writes while the grammar was parsed
            sys.stderr.write(text)
        return sampler
    # the parser's line is "parse: error parsing grammar: <why>", then the whole grammar
    said = [ln.split("error parsing grammar:", 1)[1] for ln in text.splitlines() if "error parsing grammar:" in ln]
    why = said[0] if said else ""
    why = " ".join((why or "".join(logged)).split()) or "no reason given"
    raise GrammarError(f"the grammar does not parse (root rule {grammar.root!r}): {why}")


class GrammarState:
    """Where one generation stands in its grammar: which tokens may come next; accept() each token taken."""

    def __init__(self, grammar: Grammar, tokenizer: Tokenizer) -> None:
        grammar.check()
        self._tokenizer = tokenizer
        self._sampler = _parse(tokenizer, grammar)

    def allowed(self, ids: np.ndarray) -> np.ndarray:
        """Which of ids (token ids) the grammar allows next, as booleans. End-of-generation tokens are allowed
        only where the grammar is complete."""
        self._tokenizer._check_open()
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        candidates = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(candidates))  # sets refused tokens' logits to -inf
        return np.isfinite(data["logit"])

    def accept(self, token: int) -> None:
        """Moves the grammar past token, which allowed() must have allowed (llama.cpp aborts on any other)."""
        self._tokenizer._check_open()
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if getattr(self, "_sampler", None):
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()

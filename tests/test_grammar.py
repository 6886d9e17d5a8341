"""Grammar-constrained generation (llama.cpp's GBNF engine, JSON schemas, JSON mode) and logit_bias, on the real
SmolLM2 file: answers follow their grammar on prompts of several kinds, sampling under a grammar is sampling from the
whole vocabulary with the refused tokens taken out, bad grammars are clear errors (never a crash)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import numpy as np
import pytest

from turbosparse import Grammar, GrammarError, InvalidArgumentError, grammar_engine
from turbosparse.sampling import Sampler, SamplingParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "hobbies"],
    "additionalProperties": False,
}
PROMPTS = [  # different kinds of request; the schema bounds every answer's length
    "Invent a character for a fantasy novel.",
    "Describe the person who wrote this function: def add(a, b): return a + b",
    "Who is the captain of a football team in a small town?",
    "Tell me about a retired chemistry teacher.",
]


def person_ok(text: str) -> bool:
    value = json.loads(text)
    assert set(value) == {"name", "age", "mood", "hobbies"}, text
    assert isinstance(value["name"], str) and len(value["name"]) <= 16
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 150
    assert value["mood"] in ("happy", "sad", "calm")
    assert isinstance(value["hobbies"], list) and len(value["hobbies"]) <= 3
    return all(isinstance(h, str) and len(h) <= 12 for h in value["hobbies"])


def test_answers_follow_a_json_schema_on_varied_prompts(smollm2_model) -> None:
    grammar = Grammar.from_json_schema(PERSON)
    for prompt in PROMPTS:
        chat = smollm2_model.chat_prompt([{"role": "user", "content": prompt + " Answer in JSON."}])
        for temperature, seed in ((0.0, None), (0.8, 1), (1.2, 2)):
            tokens = smollm2_model.tokenize(chat, special=True)
            params = SamplingParams(temperature=temperature, seed=seed)
            gen = smollm2_model.start(tokens, sampling=params, max_tokens=160, grammar=grammar)
            text = "".join(smollm2_model.run(gen))
            assert gen.finish_reason == "stop", (prompt, text)
            assert person_ok(text), text


def test_json_mode_gives_json_objects(smollm2_model) -> None:
    asks = [
        "Give the settings of a web server as JSON.",
        "Summarise Macbeth's first act as a JSON object.",
        "What is the capital of Italy? Answer as JSON.",
        "Give a JSON object with a city and its country.",
    ]
    params = SamplingParams(temperature=0.0, repeat_penalty=1.1)
    stopped = 0
    for ask in asks:
        tokens = smollm2_model.chat_tokens([{"role": "user", "content": ask}])
        gen = smollm2_model.start(tokens, sampling=params, max_tokens=200, grammar=Grammar.json())
        text = "".join(smollm2_model.run(gen))
        assert text.startswith("{"), text
        if gen.finish_reason == "stop":  # else cut by max_tokens
            assert isinstance(json.loads(text), dict), text
            stopped += 1
    assert stopped >= 2


def test_a_choice_grammar_ends_the_generation_where_it_is_complete(smollm2_model) -> None:
    grammar = Grammar('root ::= " yes" | " no"')
    for prompt in ("Is the sky blue? Answer:", "Do fish fly? Answer:", "def f(): return 1  # does it return? Answer:"):
        tokens = smollm2_model.tokenize(prompt)
        gen = smollm2_model.start(tokens, sampling=SamplingParams(temperature=0.7, seed=5), grammar=grammar)
        assert "".join(smollm2_model.run(gen)) in (" yes", " no")
        assert gen.finish_reason == "stop" and gen.n_generated <= 2


def test_a_grammar_that_no_token_can_follow_ends_the_generation(smollm2_model, caplog) -> None:
    grammar = Grammar('root ::= "ab" [\\x00]')  # llama.cpp refuses tokens that hold a NUL byte
    with caplog.at_level(logging.WARNING):
        gen = smollm2_model.start(smollm2_model.tokenize("Hi"), sampling=SamplingParams(seed=0), grammar=grammar)
        assert "".join(smollm2_model.run(gen)) == "ab"
    assert gen.finish_reason == "stop"
    assert "grammar allows no token" in caplog.text


def test_a_grammar_too_slow_to_match_ends_its_own_generation(smollm2_model, monkeypatch, caplog) -> None:
    """Three chained rules of up to 40 items that can match nothing take llama.cpp ~4 s to judge a vocabulary (and
    grow as the count's fourth power): past the step timeout the generation ends, and the next grammar runs at once on
    a fresh thread while the old one finishes alone."""
    monkeypatch.setattr(grammar_engine, "STEP_TIMEOUT_S", 0.5)
    slow = Grammar(
        "".join(f"r{i} ::= n{{0,40}} r{i + 1}\n" for i in range(3)).replace("r0", "root")
        + 'r3 ::= "z"\nn ::= "a" | ""\n'
    )
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        gen = smollm2_model.start(smollm2_model.tokenize("Hi"), sampling=SamplingParams(seed=1), grammar=slow)
        list(smollm2_model.run(gen))
    assert gen.finish_reason == "stop" and "took more than 0.5 s" in caplog.text
    assert smollm2_model.generate("Is it? Answer:", grammar=Grammar('root ::= " yes" | " no"')) in (" yes", " no")
    assert time.perf_counter() - started < 3


def masked(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The reference: every refused token pushed so far down that nothing samples it."""
    out = np.full_like(logits, -1e30)
    out[allowed] = logits[allowed]
    return out


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.9, seed=3),  # top-k 40, top-p, min-p
        SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=4),
        SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.02, seed=5),
        SamplingParams(temperature=1.5, top_k=3000, top_p=1.0, min_p=0.0, seed=6),
    ],
)
def test_sampling_under_a_grammar_is_sampling_the_allowed_tokens(smollm2_model, params) -> None:
    """The sampler asks the grammar about the best tokens first and stops early; it must draw exactly what sampling
    over the whole vocabulary with the refused tokens removed draws: at the JSON grammar's start (3 tokens allowed),
    inside a string (almost all) and after a key (a few)."""
    tok = smollm2_model.tokenizer
    rng = np.random.default_rng(0)
    ids = np.arange(tok.n_vocab)
    for prefix in ("", '{"na', '{"name":'):
        state = Grammar.json().start(tok)
        for t in tok.tokenize(prefix, add_bos=False):
            state.accept(t)
        allowed = ids[state.allowed(ids)]
        assert 0 < allowed.size < tok.n_vocab
        constrained, reference = Sampler(params, state), Sampler(params)
        for _ in range(60):
            logits = (rng.standard_normal(tok.n_vocab) * rng.choice([0.5, 3.0, 10.0])).astype(np.float32)
            logits[rng.choice(allowed)] += rng.choice([0.0, 20.0])  # sometimes an allowed token leads
            if rng.random() < 0.5:  # ties, which go to the lower id
                logits = np.round(logits / 4)
            assert constrained.sample(logits) == reference.sample(masked(logits, allowed))


def test_bad_grammars_are_clear_errors(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    cases = [
        (Grammar("root ::= foo"), "Undefined rule identifier 'foo'"),
        (Grammar('root ::= "a"', root="start"), "'start'"),
        (Grammar('root ::= root "a" | "b"'), "left recursion"),
        (Grammar('root ::= "a"{100000}'), "repetitions"),
        # llama.cpp allows " the" here, then aborts the process accepting it
        (Grammar('root ::= " " !<[2]>'), "token references"),
        (Grammar('root ::= "a" # note\r <|im_end|>'), "token references"),
        # llama.cpp recurses per group and per rule reference: bounded (on a thread with a 256 MB stack)
        (Grammar("root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000), "20001 groups and rules"),
        (Grammar("root ::= r0\n" + "".join(f'r{i} ::= (r{i + 1}) | "x"\n' for i in range(15_000))), "30001 groups"),
    ]  # fmt: skip
    for grammar, message in cases:
        with pytest.raises(GrammarError, match=message):
            grammar.start(tok)
    Grammar('root ::= "<b>" [<>] "\\"<"').check()  # "<" in literals and classes is text
    with pytest.raises(GrammarError, match="surrogate"):
        Grammar('root ::= "\ud800"').check()
    started = time.perf_counter()  # a class or literal left open is read to the end once (it took 27 s per 40000)
    for opener in '["':
        with pytest.raises(GrammarError):
            Grammar("root ::= " + opener * 200_001).start(tok)
    assert time.perf_counter() - started < 10
    with pytest.raises(GrammarError, match=r"does not parse.{0,400}$"):  # the reason, not the rest of the grammar
        Grammar("root ::= ( " + '"a" ' * 100_000).start(tok)
    with pytest.raises(GrammarError, match="JSON schema"):
        Grammar.from_json_schema({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})
    with pytest.raises(GrammarError, match="JSON schema"):
        Grammar.from_json_schema("{not json")
    # llama-cpp-python's converter writes out every copy a count asks for (10**9: a minute and 5 GB)
    with pytest.raises(GrammarError, match="minLength count 1000000000"):
        Grammar.from_json_schema({"type": "object", "properties": {"a": {"type": "string", "minLength": 10**9}}})
    with pytest.raises(GrammarError, match="pattern count 100000"):
        Grammar.from_json_schema({"type": "string", "pattern": "^a{3,100000}$"})
    for quantifier in ("{100_000_000}", "{,100000000}", "{+100000}", "{ 5 , 300000 }"):  # as int() reads them
        with pytest.raises(GrammarError, match="pattern count"):
            Grammar.from_json_schema({"type": "string", "pattern": f"^x{quantifier}$"})
    Grammar.from_json_schema({"type": "string", "maxLength": 1000}).start(tok)  # deep (1000 nested groups), allowed
    with pytest.raises(GrammarError, match="'xml'"):
        Grammar.from_response_format({"type": "xml"})
    with pytest.raises(GrammarError, match=r"json_schema\.schema"):
        Grammar.from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    assert Grammar.from_response_format({"type": "text"}) is None
    assert issubclass(GrammarError, InvalidArgumentError)


def test_deep_grammars_do_not_crash(smollm2_model) -> None:
    """Depths that crash llama.cpp on a thread's usual stack (20000 nested groups on 8 MB; a comment ended by a
    carriage return once hid groups from a depth check; rules nesting each other add up) run on the grammar thread."""
    tok = smollm2_model.tokenizer
    ids = np.arange(tok.n_vocab)
    chained = "".join(f"r{i} ::= " + "(" * 1999 + f" r{i + 1} " + ")" * 1999 + "\n" for i in range(9))
    for gbnf in (
        "root ::= (# a comment\r" + "(" * 19_000 + '"a"' + ")" * 19_000 + ")",
        "root ::= r0\n" + chained + 'r9 ::= "a"\n',
        "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "b"\n' for i in range(10_000)) + 'r10000 ::= "a" | "x"\n',
    ):
        state = Grammar(gbnf).start(tok)
        allowed = ids[state.allowed(ids)]
        assert allowed.size and all(tok.piece(int(t)).startswith((b"a", b"x")) for t in allowed)
        state.accept(int(allowed[0]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_grammars_work_in_a_forked_child(smollm2_model) -> None:
    """The grammar thread does not survive a fork; the child starts its own (it hung waiting for the parent's)."""
    tok = smollm2_model.tokenizer
    Grammar('root ::= "yes"').start(tok)  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        signal.alarm(30)
        ok = False
        try:
            ok = Grammar('root ::= "a" [0-9]').start(tok).allowed(np.arange(tok.n_vocab)).sum() >= 1
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_a_parse_error_is_the_exceptions_and_stderr_is_given_back(smollm2_model, capfd) -> None:
    """llama.cpp's parser writes its reason to file descriptor 2, which is taken while it parses."""
    with pytest.raises(GrammarError, match="expecting"):
        Grammar('root ::= ("a"').start(smollm2_model.tokenizer)
    os.write(2, b"still stderr\n")
    err = capfd.readouterr().err
    assert "still stderr" in err and "error parsing grammar" not in err


def test_logit_bias(smollm2_model) -> None:
    tokens = smollm2_model.tokenize("The capital of France is")

    def first(bias: dict[int, float] | None) -> int:
        gen = smollm2_model.start(tokens, sampling=SamplingParams(temperature=0.0, logit_bias=bias), max_tokens=1)
        list(smollm2_model.run(gen))
        return gen.generated[0]

    best = first(None)
    assert first({best: -100.0}) != best
    assert first({best: float("-inf")}) == first({best: -100.0})  # llama_cpp's way to ban a token
    assert first({best: -1e-3}) == best
    other = smollm2_model.tokenize(" banana", add_bos=False)[0]
    assert first({other: 100.0}) == other
    for bad, message in (
        ({smollm2_model.n_vocab: 1.0}, "out of the vocabulary"),
        ({-1: 1.0}, "integers >= 0"),
        ({best: float("nan")}, "number or -inf"),
        ({best: float("inf")}, "number or -inf"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            first(bad)


def test_a_banned_token_is_never_sampled_under_a_grammar(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    ids = np.arange(tok.n_vocab)
    allowed = ids[Grammar('root ::= "Hello"').start(tok).allowed(ids)]
    assert allowed.size > 1
    keep = int(allowed[-1])
    ban = {int(t): float("-inf") for t in allowed if t != keep}
    rng = np.random.default_rng(1)
    for temperature in (0.0, 0.8, 3.0):
        params = SamplingParams(temperature=temperature, seed=2, logit_bias=ban)
        sampler = Sampler(params, Grammar('root ::= "Hello"').start(tok))
        assert sampler.sample((rng.standard_normal(tok.n_vocab) * 3).astype(np.float32)) == keep
    everything = SamplingParams(seed=2, logit_bias={int(t): float("-inf") for t in allowed})
    gen = smollm2_model.start(tok.tokenize("Say:"), sampling=everything, grammar=Grammar('root ::= "Hello"'))
    assert "".join(smollm2_model.run(gen)) == "" and gen.finish_reason == "stop"  # nothing left: the end


def test_generate_takes_grammar_and_bias(smollm2_model) -> None:
    assert smollm2_model.generate("Count: one, two,", temperature=0.0, grammar=Grammar('root ::= " three"')) == " three"
    ban = smollm2_model.tokenize(" three", add_bos=False)[0]
    text = smollm2_model.generate("Count: one, two,", max_tokens=3, temperature=0.0, logit_bias={ban: -100.0})
    assert not text.startswith(" three")

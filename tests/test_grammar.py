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

from turbosparse import EvalError, Grammar, GrammarError, InvalidArgumentError, grammar_engine
from turbosparse.grammar_engine import GrammarDeadEnd
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


def test_grammar_given_as_gbnf_text_or_a_schema_dict(smollm2_model) -> None:
    """grammar= takes GBNF text and a JSON schema dict as they are (an AttributeError before); what is neither, or a
    schema that is not a JSON object, is a GrammarError saying what was expected."""
    assert smollm2_model.generate("Is the sky blue? Answer:", grammar='root ::= " yes" | " no"') in (" yes", " no")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = smollm2_model.generate("A number as JSON:", grammar=schema, temperature=0.0, max_tokens=24)
    assert isinstance(json.loads(answer)["n"], int)
    with pytest.raises(GrammarError, match="expected a Grammar, GBNF text or a JSON schema"):
        smollm2_model.generate("x", grammar=3)
    with pytest.raises(GrammarError, match="a JSON schema is a JSON object, got list"):
        Grammar.from_json_schema("[1, 2]")
    with pytest.raises(GrammarError, match="the JSON schema is not JSON: Expecting property name"):
        Grammar.from_json_schema("{x")


def test_a_grammar_that_no_token_can_follow_ends_the_generation(smollm2_model, caplog) -> None:
    grammar = Grammar('root ::= "ab" [\\x00]')  # llama.cpp refuses tokens that hold a NUL byte
    with caplog.at_level(logging.WARNING):
        gen = smollm2_model.start(smollm2_model.tokenize("Hi"), sampling=SamplingParams(seed=0), grammar=grammar)
        assert "".join(smollm2_model.run(gen)) == "ab"
    assert gen.finish_reason == "stop"
    assert "grammar allows no token" in caplog.text


SLOW = Grammar(  # three chained rules of up to 40 items that can match nothing: llama.cpp takes ~4 s per vocabulary
    "".join(f"r{i} ::= n{{0,40}} r{i + 1}\n" for i in range(3)).replace("r0", "root") + 'r3 ::= "z"\nn ::= "a" | ""\n'
)
YES_NO = Grammar('root ::= " yes" | " no"')


def worker_pid(tokenizer) -> int:
    worker = grammar_engine._engine(tokenizer)._worker
    assert worker is not None
    return worker.process.pid


def kill_worker(tokenizer) -> None:
    """Ends the worker as the system would (the next question starts another)."""
    pid = worker_pid(tokenizer)
    os.kill(pid, signal.SIGKILL)
    assert gone(pid, within_s=5)


def gone(pid: int, within_s: float = 0.0) -> bool:
    """Whether process pid has ended (a zombie counts: it runs no more), waiting up to within_s seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_a_grammar_too_slow_to_match_ends_its_own_generation(smollm2_model, monkeypatch, caplog) -> None:
    """Past the step timeout the generation ends, the worker process that was matching is gone (it kept a core busy
    for minutes when it was a thread), and the next grammar runs in a new one."""
    monkeypatch.setattr(grammar_engine, "STEP_TIMEOUT_S", 0.5)
    with caplog.at_level(logging.WARNING):
        gen = smollm2_model.start(smollm2_model.tokenize("Hi"), sampling=SamplingParams(seed=1), grammar=SLOW)
        pid = worker_pid(smollm2_model.tokenizer)
        list(smollm2_model.run(gen))
    assert gen.finish_reason == "stop" and "took more than 0.5 s to judge the tokens of one step" in caplog.text
    assert gone(pid)
    assert smollm2_model.generate("Is it? Answer:", grammar=YES_NO) in (" yes", " no")


def test_the_step_timeout_bounds_all_the_questions_of_a_step(smollm2_model, monkeypatch) -> None:
    """A step asks about up to four bands of tokens: together they get STEP_TIMEOUT_S (a server's step waited up to four
    times as long). A stand-in clock: each question here is fast, the clock says otherwise."""
    tok = smollm2_model.tokenizer
    ids = np.arange(tok.n_vocab)
    now = [1000.0]
    monkeypatch.setattr(grammar_engine.time, "monotonic", lambda: now[0])
    state = YES_NO.start(tok)
    state.begin_step()
    for _ in range(2):
        now[0] += 4.0
        assert state.allowed(ids).any()  # 8 s into the step: 2 s left
    now[0] += 4.0
    with pytest.raises(GrammarDeadEnd, match="more than 10 s to judge the tokens of one step"):
        state.allowed(ids)
    calls = []

    class Grammar_:
        def begin_step(self) -> None:
            calls.append("step")

        def allowed(self, band: np.ndarray) -> np.ndarray:
            calls.append("question")
            return np.ones(len(band), dtype=bool)

    sampler = Sampler(SamplingParams(temperature=0.0), Grammar_())  # type: ignore[arg-type]
    logits = np.random.default_rng(0).standard_normal(tok.n_vocab).astype(np.float32)
    sampler.sample(logits)
    sampler.sample(logits)
    assert calls == ["step", "question", "step", "question"]  # every sampled token is a step of its own


def test_a_grammar_too_slow_to_set_up_is_a_clear_error(smollm2_model, monkeypatch) -> None:
    """20000 rules each starting with the next take llama.cpp ~4 s to parse (the time grows with the square)."""
    monkeypatch.setattr(grammar_engine, "PARSE_TIMEOUT_S", 0.5)
    chained = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "b"\n' for i in range(19_990)) + 'r19990 ::= "a"\n'
    with pytest.raises(GrammarError, match=r"took more than 0\.5 s to parse the grammar"):
        Grammar(chained).start(smollm2_model.tokenizer)
    assert smollm2_model.generate("Is it? Answer:", grammar=YES_NO) in (" yes", " no")


def test_a_grammar_parsed_again_allows_what_it_allowed(smollm2_model) -> None:
    """What a new worker process is told of a grammar (its text, then every token accepted) puts it where it was: at
    every position of a JSON answer, a grammar moved to a new worker there allows exactly what one never moved
    allows."""
    tok = smollm2_model.tokenizer
    ids = np.arange(tok.n_vocab)
    schema = Grammar.from_json_schema(PERSON)
    tokens = smollm2_model.chat_tokens([{"role": "user", "content": PROMPTS[1] + " Answer in JSON."}])
    gen = smollm2_model.start(tokens, sampling=SamplingParams(temperature=0.0), max_tokens=40, grammar=schema)
    list(smollm2_model.run(gen))
    answer = gen.generated
    assert len(answer) >= 20
    kept, moved = schema.start(tok), schema.start(tok)
    for i, token in enumerate(answer):
        if i % 3 == 1:  # the worker ended between two questions: the next one goes to a new worker
            kill_worker(tok)
        assert np.array_equal(kept.allowed(ids), moved.allowed(ids)), (i, tok.detokenize(answer[:i]))
        kept.accept(token)
        moved.accept(token)


def test_other_generations_go_on_when_one_grammar_is_stopped(smollm2_path, monkeypatch) -> None:
    """Generations stepped together (as the server steps them) share a worker process: ending it for one's slow
    grammar moves the others to a new one, parsed again and past their tokens, and they generate what they would
    alone."""
    from turbosparse import Model

    model = Model(smollm2_path, n_threads=2, n_ctx=512, n_seq=2, sparse="off")
    schema = Grammar.from_json_schema(PERSON)
    tokens = model.chat_tokens([{"role": "user", "content": PROMPTS[0] + " Answer in JSON."}])
    alone = model.generate(tokens, max_tokens=40, temperature=0.0, grammar=schema)
    monkeypatch.setattr(grammar_engine, "STEP_TIMEOUT_S", 0.5)
    good = model.start(tokens, sampling=SamplingParams(temperature=0.0), max_tokens=40, grammar=schema)
    texts = [model.step([good])[0] for _ in range(5)]  # a few tokens in before the slow one comes
    slow = model.start(model.tokenize("Hi"), sampling=SamplingParams(seed=1), grammar=SLOW)
    while not good.done:
        texts.append(model.step([good, slow])[0])
    assert slow.finish_reason == "stop" and good.finish_reason == "length"
    assert "".join(texts) == alone
    pid = worker_pid(model.tokenizer)
    model.close()
    assert gone(pid, within_s=2)  # Model.close() ends its grammar worker


def test_a_generation_goes_on_when_the_grammar_worker_dies(smollm2_model) -> None:
    """A worker process that ends on its own (killed, out of memory) costs its grammars a new parse, not their
    generation."""
    schema = Grammar.from_json_schema(PERSON)
    tokens = smollm2_model.chat_tokens([{"role": "user", "content": PROMPTS[3] + " Answer in JSON."}])
    alone = smollm2_model.generate(tokens, max_tokens=30, temperature=0.0, grammar=schema)
    gen = smollm2_model.start(tokens, sampling=SamplingParams(temperature=0.0), max_tokens=30, grammar=schema)
    texts = []
    for i, text in enumerate(smollm2_model.run(gen)):
        texts.append(text)
        if i in (3, 12):
            os.kill(worker_pid(smollm2_model.tokenizer), signal.SIGKILL)
    assert gen.finish_reason == "length" and "".join(texts) == alone


def test_a_token_the_grammar_refuses_ends_the_generation_cleanly(smollm2_model) -> None:
    """Accepting a token the grammar does not allow aborts llama.cpp's engine: the worker checks each one first."""
    tok = smollm2_model.tokenizer
    state = YES_NO.start(tok)
    refused = tok.tokenize("maybe", add_bos=False)[0]
    state.accept(refused)
    with pytest.raises(GrammarDeadEnd, match=f"token {refused} is not allowed"):
        state.allowed(np.arange(tok.n_vocab))
    assert smollm2_model.generate("Is it? Answer:", grammar=YES_NO) in (" yes", " no")


def test_a_call_cut_short_leaves_no_answer_behind(smollm2_model) -> None:
    """An exception in the middle of a question (Ctrl-C, a signal handler's) ends the worker: its answer must not
    be taken for the next question's, another grammar's."""
    tok = smollm2_model.tokenizer
    ids = np.arange(tok.n_vocab)
    slow = SLOW.start(tok)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            slow.allowed(ids)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    allowed = ids[Grammar('root ::= "yes"').start(tok).allowed(ids)]
    assert allowed.size and all(b"yes".startswith(tok.piece(int(t))) for t in allowed)


def test_closing_the_model_ends_its_grammar_engine_for_good(smollm2_path, monkeypatch) -> None:
    """Model.close() in the middle of a question from another thread: the question fails (ModelClosedError), and no
    worker is started after it (the call used to go on in a new one)."""
    import threading

    from turbosparse import Model, ModelClosedError

    monkeypatch.setattr(grammar_engine, "STEP_TIMEOUT_S", 60.0)
    model = Model(smollm2_path, n_threads=2, sparse="off")
    tok = model.tokenizer
    slow = SLOW.start(tok)
    pid = worker_pid(tok)
    caught: list[BaseException] = []

    def ask() -> None:
        try:
            slow.allowed(np.arange(tok.n_vocab))
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.5)  # inside llama.cpp's matching
    model.close()
    thread.join(30)
    assert not thread.is_alive() and len(caught) == 1 and isinstance(caught[0], ModelClosedError), caught
    assert gone(pid, within_s=2) and grammar_engine._engine(tok)._worker is None


def test_closing_the_model_while_its_grammar_worker_starts_is_a_closed_model(smollm2_path) -> None:
    """Model.close() from another thread while a generation's grammar worker is starting: the generation ends with
    ModelClosedError (it said the worker "ended with signal SIGKILL")."""
    import threading

    from turbosparse import Model, ModelClosedError

    model = Model(smollm2_path, n_threads=2, sparse="off")
    tok = model.tokenizer
    caught: list[BaseException] = []

    def generate() -> None:
        try:
            model.generate("Is water wet? Answer:", grammar=YES_NO, max_tokens=3)
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=generate)
    thread.start()
    deadline = time.monotonic() + 30
    while grammar_engine._engine(tok)._worker is None and time.monotonic() < deadline:
        time.sleep(0.001)
    model.close()  # the worker is starting: a Python process loading the vocabulary takes ~0.5 s
    thread.join(30)
    assert not thread.is_alive() and len(caught) == 1 and isinstance(caught[0], ModelClosedError), caught


def test_token_ids_out_of_the_vocabulary_are_refused_before_the_worker(smollm2_model) -> None:
    tok = smollm2_model.tokenizer
    state = YES_NO.start(tok)
    pid = worker_pid(tok)
    for ids in ([tok.n_vocab], [-1]):
        with pytest.raises(InvalidArgumentError, match="token ids must be in"):
            state.allowed(np.array(ids))
    with pytest.raises(InvalidArgumentError, match="out of the vocabulary"):
        state.accept(tok.n_vocab)
    assert state.allowed(np.arange(tok.n_vocab)).any() and worker_pid(tok) == pid  # the same worker


def test_grammars_work_with_the_standard_descriptors_closed(smollm2_path, tmp_path) -> None:
    """A process with stdin and stdout closed gets them back from os.pipe(): the worker's pipes must not land there
    (its own stdin and stdout would cover them)."""
    import subprocess
    import sys

    script = tmp_path / "closed.py"
    script.write_text(
        "import os, sys, numpy as np\n"
        "from turbosparse import Grammar\n"
        "from turbosparse.tokenizer import Tokenizer\n"
        "tok = Tokenizer(sys.argv[1])\n"
        "os.close(0)\n"
        "os.close(1)\n"
        "state = Grammar('root ::= \"yes\"').start(tok)\n"
        "os._exit(0 if state.allowed(np.arange(tok.n_vocab)).any() else 3)\n"
    )
    out = subprocess.run([sys.executable, str(script), str(smollm2_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_worker_that_cannot_start_is_the_machines_error(smollm2_path, monkeypatch) -> None:
    """Not the grammar's fault: an EvalError (a 500 in the server), not a GrammarError (a 400)."""
    from turbosparse.tokenizer import Tokenizer

    monkeypatch.setenv(grammar_engine.PYTHON_ENV, "/bin/false")
    tok = Tokenizer(str(smollm2_path))
    with pytest.raises(EvalError, match="grammar engine failed") as caught:
        YES_NO.start(tok)
    assert not isinstance(caught.value, GrammarError)


def test_a_worker_ends_with_its_parent(smollm2_path, tmp_path) -> None:
    """A parent killed while its worker matches for minutes leaves no worker behind (it watches its parent)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from turbosparse import Grammar, grammar_engine\n"
        "from turbosparse.tokenizer import Tokenizer\n"
        "grammar_engine.STEP_TIMEOUT_S = 600\n"
        "tok = Tokenizer(sys.argv[1])\n"
        f"state = Grammar({SLOW.gbnf!r}.replace('40', '90')).start(tok)\n"
        "print(grammar_engine._engine(tok)._worker.process.pid, flush=True)\n"
        "state.allowed(np.arange(tok.n_vocab))\n"
    )
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, str(script), str(smollm2_path)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        time.sleep(0.5)  # the worker is inside llama.cpp's matching
        assert not gone(pid)
    finally:
        parent.kill()
        parent.wait()
    assert gone(pid, within_s=5)


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
        # llama.cpp allows " the" here, then aborts accepting it
        (Grammar('root ::= " " !<[2]>'), "token references"),
        (Grammar('root ::= "a" # note\r <|im_end|>'), "token references"),
        # llama.cpp recurses per group and per rule reference: bounded (its worker runs it on a 256 MB stack)
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
    carriage return once hid groups from a depth check; rules nesting each other add up) run in the grammar worker
    (where a crash would be a GrammarError or GrammarDeadEnd)."""
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
        assert state.allowed(ids).any()  # the worker accepts the token with this question


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_grammars_work_in_a_forked_child(smollm2_model) -> None:
    """A forked child starts a grammar worker of its own (a grammar thread once hung it, waiting for the parent's),
    and leaves the parent's alone."""
    tok = smollm2_model.tokenizer
    parents = Grammar('root ::= "yes"').start(tok)  # the parent's worker is running
    parent_worker = worker_pid(tok)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        signal.alarm(30)
        ok = False
        try:
            ok = Grammar('root ::= "a" [0-9]').start(tok).allowed(np.arange(tok.n_vocab)).sum() >= 1
            ok = ok and worker_pid(tok) != parent_worker
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    allowed = np.flatnonzero(parents.allowed(np.arange(tok.n_vocab)))
    assert allowed.size and all(b"yes".startswith(tok.piece(int(t))) for t in allowed)


def test_a_parse_error_is_the_exceptions_and_stderr_is_given_back(smollm2_model, capfd) -> None:
    """llama.cpp's parser writes its reason to file descriptor 2, which the worker takes while it parses."""
    kill_worker(smollm2_model.tokenizer)  # the next worker writes to this test's captured stderr
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


def test_json_strings_hold_no_raw_control_characters(smollm2_model) -> None:
    """As JSON itself and llama.cpp's converter (llama-server's): inside a schema's string a raw newline or tab is
    refused, its escape allowed. llama-cpp-python's converter allows them, and answers came out that json.loads
    refuses; tool calls' grammars take the same rule."""
    tokenizer = smollm2_model.tokenizer
    state = Grammar.from_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}).start(tokenizer)
    for token in tokenizer.tokenize('{"a": "x', add_bos=False):
        state.accept(token)
    newline, tab, escaped, letter = (tokenizer.tokenize(t, add_bos=False)[0] for t in ("\n", "\t", "\\n", "y"))
    assert state.allowed(np.array([newline, tab, escaped, letter])).tolist() == [False, False, True, True]
    state.close()

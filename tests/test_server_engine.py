"""The server's decoding loop (server/engine.py) in this process, on the real SmolLM2 file: generations stepped together
give the text each gives alone, a constrained generation that is slow to sample holds up no other, and a failure ends
only its own request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from turbosparse import Grammar, Model, grammar_engine
from turbosparse.generation import Generation
from turbosparse.grammar_engine import GrammarState
from turbosparse.sampling import SamplingParams
from turbosparse.server.engine import Engine, Event, Job

SLOTS = 3
YES_NO_LIST = Grammar('root ::= item ("," item)*\nitem ::= " yes" | " no" | " maybe"')
EIGHT_WORDS = Grammar('root ::= word{8}\nword ::= " yes" | " no" | " maybe"')  # at least 8 tokens
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def model(smollm2_path) -> Iterator[Model]:
    m = Model(smollm2_path, n_threads=2, n_ctx=SLOTS * 512, n_seq=SLOTS, sparse="off")
    yield m
    m.close()


@pytest.fixture
def engine(model: Model) -> Iterator[Engine]:
    e = Engine(model, queue_size=4)
    e.start()
    yield e
    e.stop()


class Listener:
    """A request's events, as the engine emits them (on its thread), each with the generation's length then."""

    def __init__(self, gen: Generation) -> None:
        self.gen = gen
        self.events: list[tuple[Event, int]] = []
        self.ended = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append((event, self.gen.n_generated))
        if event.finished or event.error is not None:
            self.ended.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e, _ in self.events)

    def wait(self, timeout: float = 120.0) -> None:
        assert self.ended.wait(timeout), self.events


def submit(engine: Engine, model: Model, prompt: str, **kwargs) -> Listener:
    gen = model.start(model.tokenize(prompt), **kwargs)
    listener = Listener(gen)
    engine.submit(Job(gen, listener))
    return listener


def test_generations_stepped_together_give_what_they_give_alone(model: Model, engine: Engine) -> None:
    alone = [
        model.generate("The capital of France is", max_tokens=20, temperature=0.0),
        model.generate("Is water wet? Answer:", max_tokens=12, temperature=0.0, grammar=YES_NO_LIST),
        model.generate("Once upon a time", max_tokens=20, temperature=0.8, seed=3),
    ]
    together = [
        submit(engine, model, "The capital of France is", sampling=GREEDY, max_tokens=20),
        submit(engine, model, "Is water wet? Answer:", sampling=GREEDY, max_tokens=12, grammar=YES_NO_LIST),
        submit(engine, model, "Once upon a time", sampling=SamplingParams(temperature=0.8, seed=3), max_tokens=20),
    ]
    for listener in together:
        listener.wait()
    assert [listener.text for listener in together] == alone
    assert all(listener.events[-1][0].finished for listener in together)


def test_constrained_generations_are_decoded_together(model: Model, engine: Engine) -> None:
    """Each waits for the other's grammar answer (a fast one), so they share every forward pass (going on without the
    other took one pass each, twice as many)."""
    words = Grammar('root ::= word{16}\nword ::= " yes" | " no" | " maybe"')  # at least 16 tokens
    prompts = ["Is water wet? Answer:", "Is the sky green? Answer:"]
    listeners = [submit(engine, model, p, sampling=GREEDY, max_tokens=16, grammar=words) for p in prompts]
    for listener in listeners:
        listener.wait()
        assert listener.gen.n_generated == 16
    assert engine.counters.steps <= 16 + 5, engine.counters


def test_a_grammar_slow_to_match_holds_up_no_other_generation(model: Model, engine: Engine, monkeypatch) -> None:
    """The grammar's first answer waits here until the plain generation beside it has ended (the engine stepped them
    together, so the plain one waited for every answer: it never ended), and both give what they give alone."""
    plain_alone = model.generate("The capital of France is", max_tokens=16, temperature=0.0)
    slow_alone = model.generate("Is water wet? Answer:", max_tokens=8, temperature=0.0, grammar=EIGHT_WORDS)
    allowed = GrammarState.allowed
    gate = threading.Event()

    def slow_allowed(self, ids):
        gate.wait(30)
        return allowed(self, ids)

    monkeypatch.setattr(GrammarState, "allowed", slow_allowed)
    slow = submit(engine, model, "Is water wet? Answer:", sampling=GREEDY, max_tokens=8, grammar=EIGHT_WORDS)
    plain = submit(engine, model, "The capital of France is", sampling=GREEDY, max_tokens=16)
    try:
        plain.wait(20)
        assert slow.gen.n_generated == 0
    finally:
        gate.set()
    slow.wait()
    assert plain.text == plain_alone
    assert slow.text == slow_alone and slow.gen.n_generated == 8


def test_a_grammar_slow_to_match_ends_no_other_constrained_generation(
    model: Model, engine: Engine, monkeypatch
) -> None:
    """One worker process answers the grammars' questions one at a time: a question's wait for another grammar's
    answer is not its own time (each took up all of its step's time waiting behind the slow one, and ended)."""
    monkeypatch.setattr(grammar_engine, "STEP_TIMEOUT_S", 1.0)
    digits = Grammar("root ::= [0-9]+")
    sampling = SamplingParams(temperature=0.8, seed=1)
    alone = model.generate("Digits:", max_tokens=10, temperature=0.8, seed=1, grammar=digits)
    exchange = grammar_engine._Engine._exchange
    slow_keys: set[int] = set()

    def slow_exchange(self, worker, request, timeout, doing):
        if request[0] == "allowed" and request[1] in slow_keys:
            time.sleep(0.6)  # in the worker's lock: every other grammar waits meanwhile
        return exchange(self, worker, request, timeout, doing)

    monkeypatch.setattr(grammar_engine._Engine, "_exchange", slow_exchange)
    slow_gen = model.start(model.tokenize("Letters:"), sampling=GREEDY, max_tokens=6, grammar=Grammar("root ::= [ab]+"))
    slow_keys.add(slow_gen._grammar.key)
    slow = Listener(slow_gen)
    engine.submit(Job(slow_gen, slow))
    others = [submit(engine, model, "Digits:", sampling=sampling, max_tokens=10, grammar=digits) for _ in range(2)]
    for listener in (slow, *others):
        listener.wait()
    for other in others:
        assert other.gen.finish_reason == "length" and other.text == alone, other.events


def test_a_failure_while_sampling_ends_only_its_own_request(model: Model, engine: Engine, monkeypatch) -> None:
    def broken(self, ids):
        raise RuntimeError("the grammar broke")

    monkeypatch.setattr(GrammarState, "allowed", broken)
    failing = submit(engine, model, "Is water wet? Answer:", sampling=GREEDY, max_tokens=8, grammar=YES_NO_LIST)
    plain = submit(engine, model, "The capital of France is", sampling=GREEDY, max_tokens=8)
    failing.wait()
    plain.wait()
    assert failing.events[-1][0].error == "RuntimeError: the grammar broke"
    assert plain.events[-1][0].finished and plain.gen.n_generated == 8
    monkeypatch.undo()
    after = submit(engine, model, "Is water wet? Answer:", sampling=GREEDY, max_tokens=4, grammar=YES_NO_LIST)
    after.wait()  # the engine and the grammar go on
    assert after.events[-1][0].finished and after.text


def test_a_request_cancelled_while_sampling_leaves_its_slot_once(smollm2_path, monkeypatch) -> None:
    """A cancelled generation keeps its slot until its sampling (on another thread) has ended, then leaves it,
    counted once; the slot takes the next request."""
    started, gate = threading.Event(), threading.Event()
    allowed = GrammarState.allowed

    def slow_allowed(self, ids):
        started.set()
        gate.wait(30)
        return allowed(self, ids)

    monkeypatch.setattr(GrammarState, "allowed", slow_allowed)
    model = Model(smollm2_path, n_threads=2, n_ctx=512, n_seq=1, sparse="off")  # one slot: the next request waits
    engine = Engine(model, queue_size=2)
    engine.start()
    try:
        cancelled = submit(engine, model, "Is water wet? Answer:", sampling=GREEDY, max_tokens=8, grammar=YES_NO_LIST)
        nxt = submit(engine, model, "The capital of France is", sampling=GREEDY, max_tokens=4)
        assert started.wait(60)
        cancelled.gen.cancel()
        time.sleep(0.05)
        assert engine.processing == 1 and engine.deferred == 1  # still sampling: its slot is not free yet
        gate.set()
        nxt.wait()
        assert nxt.events[-1][0].finished and nxt.gen.n_generated == 4
        assert engine.counters.requests_cancelled == 1 and engine.counters.requests_finished == 1
        assert cancelled.gen.n_generated <= 1
    finally:
        gate.set()
        engine.stop()
        model.close()


def test_metrics_leave_out_the_rows_read_gauge_where_nothing_counts_it() -> None:
    """A mixture of experts' stats() give rows_read_fraction None per layer: /metrics said 1 (every row read)."""
    from types import SimpleNamespace

    from turbosparse.server.metrics import collect

    counters = SimpleNamespace(tokens_predicted=4, step_seconds=0.1, steps=4, busy_slots=4, requests_finished=1,
                               requests_cancelled=0, requests_rejected=0)  # fmt: skip
    engine = SimpleNamespace(counters=counters, processing=0, deferred=0)

    def gauges(rows: list[float | None]) -> dict[str, float]:
        stats = {"rows_read_fraction": rows, "active_fraction": [0.5, 0.25], "prompt_tokens": 8, "prompt_seconds": 0.1}
        return {m.name: m.value for m in collect(engine, SimpleNamespace(stats=lambda: stats))}

    moe = gauges([None, None])
    assert "turbosparse:ffn_rows_read_ratio" not in moe and moe["turbosparse:ffn_rows_per_token_ratio"] == 0.375
    assert gauges([0.5, 0.75])["turbosparse:ffn_rows_read_ratio"] == 0.625

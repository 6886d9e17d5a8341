"""One Model shared by threads, streams and batched generations: every generation gets the text it gets alone."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from turbosparse import Model
from turbosparse.sampling import SamplingParams

PROMPTS = ["The capital of France is", "Once upon a time, in a small village", "def fibonacci(n):"]
N = 16


def answers_of_threads(answer: Callable[[int], str], n_threads: int, rounds: int) -> dict[tuple[int, int], str]:
    """answer(i) asked `rounds` times by each thread i of n_threads running at once: {(i, round): answer}."""
    results: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for r in range(rounds):
                results[i, r] = answer(i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.fixture(scope="module")
def solo(smollm2_model) -> list[str]:
    return [smollm2_model.generate(p, max_tokens=N, temperature=0.0) for p in PROMPTS]


def test_threads_share_one_model(smollm2_model, solo: list[str]) -> None:
    """Three threads generating on one model (one sequence) at once: before the lock this aborted the process."""
    results = answers_of_threads(lambda i: smollm2_model.generate(PROMPTS[i], max_tokens=N, temperature=0.0), 3, 2)
    assert results == {(i, r): solo[i] for i in range(3) for r in range(2)}


def test_interleaved_streams_take_turns_on_one_sequence(smollm2_model, solo: list[str]) -> None:
    """Two open streams on a one-sequence model: each step first re-evaluates (as a prompt) the tokens the other
    stream displaced, so both run to their end. (The re-evaluated keys and values come from the prompt kernels,
    which round differently from decoding: the text may part from the solo text after a near-tie; the logits
    are checked in test_a_displaced_sequence_is_evaluated_again.)"""
    streams = [smollm2_model.generate(p, max_tokens=N, temperature=0.0, stream=True) for p in PROMPTS[:2]]
    pieces: list[list[str]] = [[], []]
    alive = [True, True]
    while any(alive):
        for i, stream in enumerate(streams):
            if alive[i]:
                piece = next(stream, None)
                alive[i] = piece is not None
                pieces[i] += [piece] if piece else []
    for i in range(2):
        assert solo[i].startswith(pieces[i][0])  # the first token comes from the prompt alone
        assert len(smollm2_model.tokenize("".join(pieces[i]), add_bos=False)) >= N - 2


def test_a_displaced_sequence_is_evaluated_again(smollm2_model) -> None:
    """Two users of one sequence take it from each other at every call; each call's logits are still those of
    the user's own tokens (the displaced tokens are evaluated again)."""
    a_tokens = smollm2_model.tokenize("To be, or not to be, that is the question: whether tis nobler in the mind")
    b_tokens = smollm2_model.tokenize("Tomorrow, and tomorrow, and tomorrow creeps in this petty pace")
    ref = smollm2_model.eval_logits(a_tokens)

    class User:
        pass

    a, b = User(), User()
    smollm2_model.reset_stats()
    rows = []
    for i in range(4, len(a_tokens)):
        rows.append(smollm2_model.evaluate(a, a_tokens[: i + 1]))
        smollm2_model.evaluate(b, b_tokens[: 3 + i % 5])
    assert smollm2_model.stats()["prompt_tokens"] > 2 * len(a_tokens)  # re-evaluated, not reused
    assert np.abs(np.stack(rows) - ref[4:]).max() <= 1e-3 * np.abs(ref).max()


def test_a_closed_stream_frees_its_sequence(smollm2_model, solo: list[str]) -> None:
    stream = smollm2_model.generate(PROMPTS[0], max_tokens=N, temperature=0.0, stream=True)
    next(stream)
    stream.close()
    assert all(seq.is_free() for seq in smollm2_model._pool.sequences)
    assert smollm2_model.generate(PROMPTS[1], max_tokens=N, temperature=0.0) == solo[1]


def test_step_decodes_generations_together(smollm2_path, solo: list[str]) -> None:
    model = Model(smollm2_path, n_threads=2, n_ctx=256, sparse="off", n_seq=3)
    greedy = SamplingParams(temperature=0.0)
    gens = [model.start(model.tokenize(p, special=True), sampling=greedy, max_tokens=N) for p in PROMPTS]
    texts = ["", "", ""]
    model.reset_stats()
    steps = 0
    while not all(g.done for g in gens):
        for i, piece in enumerate(model.step(gens)):
            texts[i] += piece
        steps += 1
    assert texts == solo
    assert steps == N
    stats = model.stats()
    assert stats["decode_tokens"] == sum(g.n_generated - 1 for g in gens)
    with pytest.raises(ValueError, match="4 generations at once"):
        model.step([model.start([1, 2], sampling=greedy, max_tokens=2) for _ in range(4)])


def test_evaluate_continues_a_users_sequence(smollm2_model) -> None:
    """Model.evaluate (what turbosparse.Llama.eval uses) evaluates only what the user's sequence lacks."""
    tokens = smollm2_model.tokenize("To be, or not to be, that is the question")
    ref = smollm2_model.eval_logits(tokens)

    class User:
        pass

    user = User()
    smollm2_model.reset_stats()
    rows = smollm2_model.evaluate(user, tokens[:5], logits_from=0)
    rest = [smollm2_model.evaluate(user, tokens[: i + 1]) for i in range(5, len(tokens))]
    assert rows.shape == (5, smollm2_model.n_vocab)
    assert smollm2_model.stats()["prompt_tokens"] == 5  # nothing evaluated twice
    got = np.concatenate([rows, np.stack(rest)])
    # single tokens decode with other kernels than a prompt evaluation (activations quantized per row): close,
    # same argmax, not equal
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_closing_while_another_thread_tokenizes(smollm2_path) -> None:
    """close() from one thread while another is inside llama.cpp's tokenizer (ctypes lets both run): the close
    waits for the call, the other thread's next call is ModelClosedError (the vocabulary was freed under the call:
    a segfault)."""
    from turbosparse import ModelClosedError

    model = Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off")
    text = "The quick brown fox jumps over the lazy dog. " * 20000
    started = threading.Event()
    caught: list[BaseException] = []

    def tokenize() -> None:
        try:
            while True:
                model.tokenize(text)
                started.set()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=tokenize)
    thread.start()
    assert started.wait(30)
    model.close()
    thread.join(30)
    assert not thread.is_alive() and len(caught) == 1 and isinstance(caught[0], ModelClosedError), caught


def test_llama_threads_on_a_sparse_model_get_their_serial_answers(tmp_path) -> None:
    """turbosparse.Llama's whole (non-streamed) completions hold the model, as Model.generate does: threads sharing
    its one sequence took it from each other, and the displaced answer was evaluated again as a prompt, through the
    dense FFN where decoding had used the predictor's sparse one, which changed its text."""
    from turbosparse import Llama
    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    sparse, _ = synthetic_pair(SyntheticSpec(SHAPES["tiny"], rank=64), tmp_path)
    llm = Llama(str(sparse), n_ctx=128, n_threads=2, sparse="predictor", verbose=False)
    prompts = [[1, 5 + 7 * i, 9, 11 + i] for i in range(3)]

    def answer(prompt: list[int]) -> str:
        return llm.create_completion(prompt, max_tokens=12, temperature=0.0)["choices"][0]["text"]

    serial = [answer(p) for p in prompts]
    results = answers_of_threads(lambda i: answer(prompts[i]), 3, 3)
    assert results == {(i, r): serial[i] for i in range(3) for r in range(3)}


def test_an_idle_users_sequence_is_no_running_generation(smollm2_path) -> None:
    """A sequence held by evaluate()'s user (a Llama between calls) is not a running generation: embed() takes it
    (it refused: "every sequence holds a running generation"), sequence_status() says it is idle."""

    class User:
        pass

    with Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off") as model:
        user, tokens = User(), model.tokenize("Hello world")
        model.evaluate(user, tokens)
        assert model.sequence_status() == [(len(tokens), False)]
        assert model.embed(tokens, pooling="mean").shape == (model.info.n_embd,)


def test_a_closed_model_refuses_every_use_and_cannot_be_copied(smollm2_path) -> None:
    import copy
    import pickle

    from turbosparse import ModelClosedError

    model = Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off")
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied or pickled: open the file again"):
            duplicate(model)
    stream = model.generate("Hi", max_tokens=8, stream=True)
    next(stream)  # a generation left open holds the only sequence
    model.close()

    class User:
        pass

    for use in (
        lambda: setattr(model, "threshold", 0.5),  # was taken silently
        lambda: model.save_state(User()),  # was SequenceBusyError
        model.sequence_status,  # answered from the pool
        lambda: model.tokenize("Hi"),
    ):
        with pytest.raises(ModelClosedError, match="closed"):
            use()


def test_tokenizer_calls_run_together_and_close_waits_for_them(smollm2_path) -> None:
    """Calls into the vocabulary run at once in several threads (llama.cpp's are read-only), close() waits for the
    ones running and refuses new ones meanwhile, and a forked child tokenizes though a call was running in the
    parent at the fork."""
    import os

    from turbosparse import ModelClosedError

    model = Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off")
    tok = model.tokenizer
    expected = tok.tokenize("Hello world")
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:  # a call in flight until released
        with tok._held():
            inside.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(30)
    beside: list[list[int]] = []
    other = threading.Thread(target=lambda: beside.append(tok.tokenize("Hello world")))
    other.start()
    other.join(30)
    assert beside == [expected]  # not held up by the call in flight
    pid = os.fork()
    if pid == 0:  # the child: the parent's call in flight does not hold it up
        os._exit(0 if tok.tokenize("Hello world") == expected else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    closer = threading.Thread(target=model.close)
    closer.start()
    while not tok._calls._ended:
        closer.join(0.01)
    with pytest.raises(ModelClosedError):
        tok.tokenize("Hello world")  # closing: no new call
    assert closer.is_alive()  # waiting for the call in flight
    release.set()
    closer.join(30)
    holder.join(30)
    assert not closer.is_alive() and not holder.is_alive()
    with pytest.raises(ModelClosedError):
        tok.tokenize("Hello world")

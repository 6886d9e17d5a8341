"""Model.generate: sampling options, seeds, stop strings, streaming, context limits, chat templates."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from turbosparse import ContextOverflowError, EvalError, InvalidArgumentError, Model
from turbosparse.generation import StopScanner
from turbosparse.sampling import Sampler, SamplingParams, _best

PROMPT = "The three most important inventions in history are"


def test_seeded_sampling_is_reproducible(smollm2_model) -> None:
    a = smollm2_model.generate(PROMPT, max_tokens=24, temperature=0.9, seed=7)
    b = smollm2_model.generate(PROMPT, max_tokens=24, temperature=0.9, seed=7)
    c = smollm2_model.generate(PROMPT, max_tokens=24, temperature=0.9, seed=8)
    assert a == b
    assert a != c


def test_top_k_one_is_greedy(smollm2_model) -> None:
    greedy = smollm2_model.generate(PROMPT, max_tokens=16, temperature=0.0)
    assert smollm2_model.generate(PROMPT, max_tokens=16, temperature=1.5, top_k=1, seed=3) == greedy


def test_streaming_yields_the_same_text(smollm2_model) -> None:
    whole = smollm2_model.generate(PROMPT, max_tokens=20, temperature=0.0)
    pieces = list(smollm2_model.generate(PROMPT, max_tokens=20, temperature=0.0, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces) == whole


def test_stop_strings_cut_the_text(smollm2_model) -> None:
    whole = smollm2_model.generate(PROMPT, max_tokens=40, temperature=0.0)
    stop = whole[10:14]
    cut = smollm2_model.generate(PROMPT, max_tokens=40, temperature=0.0, stop=[stop, "never-seen"])
    assert cut == whole[: whole.find(stop)]
    streamed = "".join(smollm2_model.generate(PROMPT, max_tokens=40, temperature=0.0, stop=stop, stream=True))
    assert streamed == cut


def test_stop_scanner_holds_back_partial_matches() -> None:
    scanner = StopScanner(("STOP",))
    assert scanner.feed("abc ST") == "abc "
    assert scanner.feed("OR") == "STOR"  # no longer a prefix of STOP: released
    assert scanner.feed("x STO") == "x "
    assert scanner.feed("P tail") == ""
    assert scanner.stopped and scanner.text == "abc STORx "


def test_a_long_stop_string_costs_what_the_held_back_tail_costs() -> None:
    """A stop string of a million characters (a request may send one): each piece is checked against the tail not yet
    released, not against every prefix of the stop string (minutes per token on the server's engine thread)."""
    long = "ab" * 500_000
    scanner = StopScanner((long, "END"))
    released = "".join(scanner.feed(piece) for piece in ["x y z "] * 2000)
    assert released == "x y z " * 2000
    assert scanner.feed("a") == "" and scanner.feed("b") == "" and scanner.feed("abab") == ""  # may become the stop
    assert scanner.feed("c") == "abababc" and scanner.feed(" END") == " " and scanner.stopped


def test_prefix_reuse_gives_the_same_result(smollm2_model) -> None:
    smollm2_model.generate(PROMPT + " the wheel", max_tokens=4, temperature=0.0)
    reused = smollm2_model.generate(PROMPT, max_tokens=12, temperature=0.0)
    smollm2_model.eval_logits(smollm2_model.tokenize("unrelated text"))
    fresh = smollm2_model.generate(PROMPT, max_tokens=12, temperature=0.0)
    assert reused == fresh


def test_a_repeated_prompt_is_not_evaluated_again(smollm2_model) -> None:
    """The prompt a sequence last evaluated keeps its keys, values and logits: asking it again decodes only."""
    first = smollm2_model.generate(PROMPT, max_tokens=8, temperature=0.0)
    smollm2_model.reset_stats()
    again = smollm2_model.generate(PROMPT, max_tokens=8, temperature=0.0)
    stats = smollm2_model.stats()
    assert again == first
    assert stats["prompt_tokens"] == 0 and 0 < stats["decode_tokens"] <= 7


def test_cache_prompt_keeps_generated_tokens_and_the_default_stays_exact(smollm2_path) -> None:
    """cache_prompt (a chat's next turn): a prompt keeps all its sequence holds of it, generated tokens too, and only
    what is new is evaluated, with the right keys and values (its choices are a fresh model's); a default request
    after it still gets a fresh model's answer, keeping only whole n_batch blocks of the first prompt's evaluation
    (blocks that started elsewhere are never kept for it)."""

    greedy = SamplingParams(temperature=0.0)

    def run(model, tokens: list[int], cache_prompt: bool = False):
        gen = model.start(tokens, sampling=greedy, max_tokens=8, logprobs=5, cache_prompt=cache_prompt)
        list(model.run(gen))
        return gen

    with Model(smollm2_path, n_threads=2, n_batch=16, sparse="off") as model:
        prompt = model.tokenize(" ".join([PROMPT] * 5))
        assert len(prompt) > 32
        first = run(model, prompt)
        follow = first.tokens + model.tokenize(" Also, the", add_bos=False)
        model.reset_stats()
        cached = run(model, follow, cache_prompt=True)
        assert model.stats()["prompt_tokens"] == len(follow) - (len(first.tokens) - 1)  # its last: never evaluated
        model.reset_stats()
        again = run(model, follow)
        assert model.stats()["prompt_tokens"] == len(follow) - len(prompt) // 16 * 16
        diverged = prompt[:37] + model.tokenize(" and the", add_bos=False)  # kept up to 37: blocks start there
        run(model, diverged, cache_prompt=True)
        model.reset_stats()
        repeated = run(model, diverged)
        assert model.stats()["prompt_tokens"] == len(diverged) - 32
    with Model(smollm2_path, n_threads=2, n_batch=16, sparse="off") as fresh:
        alone = run(fresh, follow)
        diverged_alone = run(fresh, diverged)
    assert again.text == alone.text and again.token_logprobs == alone.token_logprobs
    assert repeated.token_logprobs == diverged_alone.token_logprobs
    assert cached.token_logprobs[0].token == alone.token_logprobs[0].token
    assert {t for t, _ in cached.token_logprobs[0].top} == {t for t, _ in alone.token_logprobs[0].top}


def test_context_overflow_is_a_clear_error(smollm2_path) -> None:
    from turbosparse import Model

    model = Model(smollm2_path, n_threads=2, n_ctx=32, sparse="off")
    long_prompt = "word " * 40
    with pytest.raises(ContextOverflowError, match="n_ctx = 32"):
        model.generate(long_prompt, max_tokens=4)
    # max_tokens is a bound, as llama-cpp-python's: the text ends where the context is full
    model.reset_stats()
    never_ends = {t: -1e9 for t in model.tokenizer.end_of_generation_tokens()}
    model.generate("Hi", max_tokens=40, temperature=0.0, logit_bias=never_ends)
    stats = model.stats()
    assert stats["prompt_tokens"] + stats["decode_tokens"] + 1 == 32  # + the last token: sampled, not evaluated
    with pytest.raises(ContextOverflowError):
        model.eval_logits(list(range(33)))
    # max_tokens=None stops when the context is full instead
    text = model.generate("Hi", max_tokens=None, temperature=0.0)
    assert isinstance(text, str)


def test_eval_logits_and_stats(smollm2_model) -> None:
    tokens = smollm2_model.tokenize("To be, or not to be, that is the question")
    logits = smollm2_model.eval_logits(tokens)
    assert logits.shape == (len(tokens), smollm2_model.n_vocab) and logits.dtype == np.float32
    smollm2_model.reset_stats()
    smollm2_model.generate(PROMPT, max_tokens=8, temperature=0.0)
    stats = smollm2_model.stats()
    assert stats["sparse_mode"] == "off"
    assert len(stats["active_fraction"]) == smollm2_model.info.n_layer
    assert stats["decode_tokens"] == 7 and stats["decode_tok_s"] > 0


def test_chat_prompt_uses_the_file_template(smollm2_model) -> None:
    prompt = smollm2_model.chat_prompt([{"role": "user", "content": "Hello"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nHello<|im_end|>" in prompt


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took longer than 0.5 s"),
        ("{{ ((range(100000)|list) * 50)|map('string')|sort|unique|list|length }}", "took longer than 0.5 s"),
        ("{{ 'x' * 10**8 }}", "stopped: a repetition of 100000000 items"),
        ("{{ 7 ** (10 ** 9) }}", "a power of about 3000000000 bits"),
        ("{{ '%40000000s' % 'x' }}", "a format of width 40000000"),
        ("{{ '%*s'|format(40000000, 'x') }}", "a format of width 40000000"),
        ("{{ 'x'|center(40000000) }}", "a padding of 40000000 characters"),
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "wrote more than 33554432 characters"),
    ],
    ids=["loops", "filters", "repetition", "power", "format", "format-filter", "center", "output"],
)
def test_a_chat_template_that_would_run_for_ever_or_fill_the_memory(monkeypatch, source: str, said: str) -> None:
    """A template comes with the model file: its rendering is bounded (it hung a chat request, server thread and all,
    or wrote 100 M characters for the tokenizer), a debugger's tracer sees the frames around it and is put back, and
    a real template renders as before."""
    import sys

    from turbosparse import chat_template
    from turbosparse.errors import ChatTemplateError

    monkeypatch.setattr(chat_template, "MAX_RENDER_SECONDS", 0.5)
    traced: set[str] = set()

    def debugger(frame: Any, event: str, arg: Any) -> None:
        traced.add(frame.f_code.co_name)

    before = sys.gettrace()
    sys.settrace(debugger)
    try:
        with pytest.raises(ChatTemplateError, match=said):
            chat_template.ChatTemplate(source).render([{"role": "user", "content": "Hi"}])
        assert sys.gettrace() is debugger and "_bounded_text" in traced
    finally:
        sys.settrace(before)
    chatml = "{% for m in messages %}<|{{ m.role }}|>{{ m.content * 2 }}{% endfor %}{{ 2 ** 10 }}{{ '%5s' % 'a' }}"
    assert chat_template.ChatTemplate(chatml).render([{"role": "user", "content": "Hi"}]) == "<|user|>HiHi1024    a"


def test_sampler_filters() -> None:
    logits = np.array([5.0, 4.0, 1.0, 0.0, -3.0])
    assert Sampler(SamplingParams(temperature=0.0)).sample(logits) == 0
    draws = {
        Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=s)).sample(logits)
        for s in range(50)
    }
    assert draws == {0, 1}
    # min_p keeps tokens at least min_p times as likely as the best
    draws = {
        Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3, seed=s)).sample(logits)
        for s in range(50)
    }
    assert draws == {0, 1}
    # the repeat penalty divides positive logits of recent tokens
    params = SamplingParams(temperature=0.0, repeat_penalty=10.0)
    assert Sampler(params).sample(logits, history=[0]) == 1
    # ... the last repeat_last_n tokens (-1, as llama.cpp's: every one), 0: none
    for last_n, best in ((1, 0), (2, 1), (-1, 1), (0, 0)):
        params = SamplingParams(temperature=0.0, repeat_penalty=10.0, repeat_last_n=last_n)
        assert Sampler(params).sample(logits, history=[0, 2]) == best, last_n
    with pytest.raises(ValueError):
        SamplingParams(top_p=-0.1)
    # top_p 0 keeps the best token alone, as llama.cpp's (people set it for a deterministic answer)
    kept = {
        Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.0, min_p=0.0, seed=s)).sample(logits)
        for s in range(50)
    }
    assert kept == {int(np.argmax(logits))}
    with pytest.raises(ValueError, match="repeat_last_n"):
        SamplingParams(repeat_last_n=-2)


def test_the_sampler_takes_extreme_parameters_and_refuses_what_is_not_a_number() -> None:
    logits = np.array([5.0, 4.0, 1.0, 0.0, -3.0], dtype=np.float32)
    # a tiny repeat penalty takes the recent tokens' logits past float32's range: they win, evenly
    params = [SamplingParams(temperature=0.7, repeat_penalty=1e-300, frequency_penalty=-2.0, seed=s) for s in range(40)]
    assert {Sampler(p).sample(logits, history=[1, 2]) for p in params} == {1, 2}
    # penalties whose steps overflow one after the other (inf - inf was NaN), without numpy's overflow warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extreme = SamplingParams(temperature=1.0, repeat_penalty=1e-310, frequency_penalty=1e308, seed=0)
        assert Sampler(extreme).sample(logits, history=[0, 0]) in range(5)
    # a temperature near zero is greedy
    cold = [SamplingParams(temperature=1e-310, top_k=0, min_p=0.0, seed=s) for s in range(20)]
    assert {Sampler(p).sample(logits) for p in cold} == {0}
    for field in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(InvalidArgumentError, match=f"{field} must be a finite number"):
                SamplingParams(**{field: value})
    seeds = [SamplingParams(seed=s).seed for s in (-1, 2**32 - 1, -3, 2**32 + 5, 7)]  # llama.cpp's uint32s
    assert seeds == [None, None, 2**32 - 3, 5, 7]
    whole = SamplingParams(top_k=40.0, repeat_last_n=64.0, seed=7.0)  # as a JSON or YAML setting gives them
    assert (whole.top_k, whole.repeat_last_n, whole.seed) == (40, 64, 7) and isinstance(whole.top_k, int)
    for field, value in (("top_k", 40.5), ("repeat_last_n", "64"), ("seed", 1.5)):
        with pytest.raises(InvalidArgumentError, match=f"{field} must be a whole number"):
            SamplingParams(**{field: value})
    for bad in (np.nan, np.inf):
        broken = logits.copy()
        broken[3] = bad
        with pytest.raises(EvalError, match="token 3"):
            Sampler(SamplingParams(temperature=0.0)).sample(broken)


def test_text_that_is_not_unicode_is_refused(smollm2_model) -> None:
    with pytest.raises(InvalidArgumentError, match=r"unpaired surrogate \(U\+D83D at character 6\)"):
        smollm2_model.tokenize("smile \ud83d")


def test_the_k_best_tokens_are_those_a_full_sort_gives() -> None:
    """_best sorts only the logits above a bound read off a sample: the same ids as a stable sort of the whole
    vector, ties included, whatever the order of the vocabulary (best tokens first, last, or spread)."""
    rng = np.random.default_rng(3)
    for trial in range(120):
        n = int(rng.choice([5, 520, 32000, 49152]))
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        x = [x, np.round(x), np.sort(x)[::-1], np.sort(x)][trial % 4].copy()
        k = int(rng.integers(1, min(n, 5000) + 1))
        assert np.array_equal(_best(x, k), np.argsort(-x, kind="stable")[:k]), (n, trial % 4, k)
    # the best values exactly where the sample looks: too few reach its bound, so every id is sorted
    x = rng.standard_normal(49152).astype(np.float32)
    x[:: 49152 // 2048] += 100.0
    assert np.array_equal(_best(x, 300), np.argsort(-x, kind="stable")[:300])


def test_n_ctx_past_the_files_context_length_is_taken_with_a_warning(tmp_path, smollm2_path, caplog) -> None:
    """As llama.cpp: a context longer than the model was trained on is the user's to ask for (it was lowered
    silently to llama.context_length)."""
    import logging

    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    short = tmp_path / "short.gguf"
    reader = gguf.GGUFReader(str(smollm2_path))
    writer = gguf.GGUFWriter(str(short), arch=reader.fields["general.architecture"].contents())
    copy_with_new_metadata(reader, writer, {"llama.context_length": MetadataDetails(gguf.GGUFValueType.UINT32, 64)}, [])
    with caplog.at_level(logging.WARNING, logger="turbosparse.model"):
        model = Model(short, n_threads=2, n_ctx=128)
    assert model.n_ctx == 128 and "past the 64 tokens the model was trained on" in caplog.text
    assert model.eval_logits(list(range(300, 400))).shape[0] == 100
    model.close()
    assert Model(short, n_threads=2, n_ctx=0).n_ctx == 64  # 0: the file's


def test_generate_takes_the_presence_and_frequency_penalties(smollm2_path) -> None:
    """As run's --presence-penalty / --frequency-penalty (generate had neither)."""
    model = Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off")
    prompt = "one one one one one one one one"
    plain = model.generate(prompt, max_tokens=8, temperature=0)
    for penalty in ({"presence_penalty": 5.0}, {"frequency_penalty": 5.0}):
        assert model.generate(prompt, max_tokens=8, temperature=0, **penalty) != plain


def test_a_long_prompt_is_evaluated_block_by_block_as_in_one_call(smollm2_path) -> None:
    """A prompt longer than n_batch goes to the C library one n_batch block per call (Ctrl-C is seen between
    them), computed as one call computes it: the same logits, bit for bit."""
    text = "To be, or not to be, that is the question: whether tis nobler in the mind to suffer " * 4
    with Model(smollm2_path, n_threads=2, n_ctx=256, n_batch=16, sparse="off") as model:
        tokens = model.tokenize(text)
        assert len(tokens) > 4 * 16
        calls: list[int] = []
        native_eval = model._ctx.eval

        def counted(block: Any, **kwargs: Any) -> np.ndarray:
            calls.append(len(block))
            return native_eval(block, **kwargs)

        model._ctx.eval = counted  # type: ignore[method-assign]
        blocks = model.eval_logits(tokens)
        model.generate(tokens, max_tokens=1, temperature=0)
        last = model._prompt_logits[0].copy()
        blocks_calls = calls[: len(calls) // 2]
        # the last call takes the last two blocks (its sliding-window checkpoint: tests/test_sliding_window_cache.py)
        assert set(blocks_calls[:-1]) == {16} and 16 < blocks_calls[-1] <= 32 and sum(blocks_calls) == len(tokens)
    with Model(smollm2_path, n_threads=2, n_ctx=256, n_batch=16, sparse="off") as model:
        whole = model._ctx.eval(tokens, dense_ffn=True, logits_all=True)
        model._ctx.truncate(0)
        np.testing.assert_array_equal(model._ctx.eval(tokens, dense_ffn=True, logits_all=False), last)
    np.testing.assert_array_equal(blocks, whole)


def test_a_prompt_cut_short_between_blocks_leaves_the_model_as_it_was(smollm2_path) -> None:
    """KeyboardInterrupt between two blocks of a prompt: the sequence holds what it held before, and the next
    generations (the same prompt, one sharing its beginning) give a fresh model's text."""
    text = "Once upon a time, in a small village at the edge of a great forest, there lived " * 4
    with Model(smollm2_path, n_threads=2, n_ctx=256, n_batch=16, sparse="off") as fresh:
        tokens = fresh.tokenize(text)
        expected = [fresh.generate(p, max_tokens=8, temperature=0) for p in (tokens, tokens[:40])]
    with Model(smollm2_path, n_threads=2, n_ctx=256, n_batch=16, sparse="off") as model:
        model.generate(tokens[:20], max_tokens=2, temperature=0)  # something held before
        native_eval, calls = model._ctx.eval, []

        def interrupted(block: Any, **kwargs: Any) -> np.ndarray:
            calls.append(len(block))
            if len(calls) == 2:  # the prompt's second block
                raise KeyboardInterrupt
            return native_eval(block, **kwargs)

        model._ctx.eval = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            model.generate(tokens, max_tokens=8, temperature=0)
        model._ctx.eval = native_eval  # type: ignore[method-assign]
        seq = model._pool.sequences[0]
        assert len(seq.tokens) <= 16 and model._ctx.n_past_of(0) == len(seq.tokens)  # what the C library holds
        assert [model.generate(p, max_tokens=8, temperature=0) for p in (tokens, tokens[:40])] == expected

"""Token log-probabilities (turbosparse.logprobs): the log-softmax and its alternatives against float64 numpy, which
tokens a released text carries, a generation's values against teacher-forced logits, the prompt's scores."""

from __future__ import annotations

import numpy as np
import pytest

from turbosparse.errors import InvalidArgumentError
from turbosparse.logprobs import (
    ReleasedLogprobs,
    TokenLogprob,
    chat_logprobs,
    completion_logprobs,
    log_softmax,
    prompt_logprobs,
    scored,
)
from turbosparse.sampling import SamplingParams


def reference_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_log_softmax_matches_float64_and_stays_finite(offset: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=4096) * 8 + offset).astype(np.float32)
    x[7] = -np.inf  # a banned token: probability 0, the rest unchanged
    got = log_softmax(x)
    assert got.dtype == np.float32 and got[7] == -np.inf
    finite = np.isfinite(x)
    np.testing.assert_allclose(got[finite], reference_log_softmax(x[finite]), atol=1e-4)
    assert abs(np.exp(got.astype(np.float64)).sum() - 1.0) < 1e-5


def test_scored_token_and_alternatives() -> None:
    logits = np.array([1.0, 3.0, 3.0, -2.0, 0.5], dtype=np.float32)
    ref = reference_log_softmax(logits)
    e = scored(logits, 4, "x", 3)
    assert e.token == 4 and e.text == "x" and e.logprob == pytest.approx(ref[4], abs=1e-6)
    assert [i for i, _ in e.top] == [1, 2, 0]  # most likely first, a tie by id
    assert [v for _, v in e.top] == pytest.approx(ref[[1, 2, 0]], abs=1e-6)
    assert scored(logits, 0, "", 0).top == ()
    assert [i for i, _ in scored(logits, 0, "", 99).top] == [1, 2, 0, 4, 3]  # at most the vocabulary


def entries(*texts: str) -> list[TokenLogprob]:
    return [TokenLogprob(i, t, -1.0) for i, t in enumerate(texts)]


def test_tokens_go_out_with_the_text_they_start_in() -> None:
    got = entries("Hel", "lo", "", "\u00e9", " wor", "ld")  # "" : the first byte of a character split in two
    out = ReleasedLogprobs(got)
    assert [e.text for e in out.take("He")] == ["Hel"]
    assert out.take("") == []
    assert [e.text for e in out.take("llo")] == ["lo"]  # "" waits for the token that completes its character
    assert [e.text for e in out.take("\u00e9 wor")] == ["", "\u00e9", " wor"]
    assert out.take("") == []  # a stop string cut the text here: "ld" never goes out
    assert len(ReleasedLogprobs(got).take("Hello\u00e9 world")) == len(got)


def test_a_stop_string_keeps_its_tokens_out_also_when_held_back_or_split() -> None:
    got = entries(" The", " end", ".", " STOP")
    out = ReleasedLogprobs(got)
    assert [e.text for e in out.take(" The end")] == [" The", " end"]
    assert [e.text for e in out.take(".")] == ["."]
    assert out.take("") == []
    split = entries(" ok", "", "")  # a stop string that starts with a character split in two bytes
    assert [e.text for e in ReleasedLogprobs(split).take(" ok")] == [" ok"]
    # a generation no stop string cut: its last tokens go out, also those that add no text
    assert [e.text for e in ReleasedLogprobs(split).take(" ok", uncut_end=True)] == [" ok", "", ""]


class FakeTokenizer:
    """A tokenizer whose token t is the character chr(97 + t), token 0 a BOS the vocabulary adds ("<s>"), tokens 30
    and 31 two bytes of a character: "\ufffd" alone."""

    bos = 0
    adds_bos = True

    def detokenizer(self, special: bool = False) -> FakeTokenizer:
        return self

    def push(self, token: int) -> str:
        return "<s>" if token == 0 else chr(97 + token)

    def piece(self, token: int) -> bytes:
        return b"\xf0" if token in (30, 31) else self.push(token).encode()


def test_prompt_scores_are_teacher_forced() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    with_bos = prompt_logprobs(FakeTokenizer(), [0, 3, 1, 2], logits, 2)  # type: ignore[arg-type]
    assert [e.token for e in with_bos] == [3, 1, 2]  # the BOS adds no text and is left out
    for e, row in zip(with_bos, logits[:3], strict=True):  # token i scored by the logits after tokens[:i]
        assert e.logprob == pytest.approx(reference_log_softmax(row)[e.token], abs=1e-5) and len(e.top) == 2
    without = prompt_logprobs(FakeTokenizer(), [3, 1], logits, 1)  # type: ignore[arg-type]
    mid = prompt_logprobs(FakeTokenizer(), [3, 0, 1], logits, 1)  # type: ignore[arg-type]
    assert [e.text for e in mid] == ["d", "<s>", "b"]  # a BOS inside the prompt is text like any special token
    assert without[0].logprob is None and without[0].top == () and without[0].text == "d"
    assert without[1].logprob == pytest.approx(reference_log_softmax(logits[0])[1], abs=1e-5)


def test_alternatives_with_the_same_text_keep_the_best_value() -> None:
    e = TokenLogprob(2, "c", -1.5, ((30, -0.5), (31, -0.7), (2, -1.5)))
    top = completion_logprobs(FakeTokenizer(), [e], 0)["top_logprobs"][0]  # type: ignore[arg-type]
    assert top == {"\ufffd": -0.5, "c": -1.5}
    chat = chat_logprobs(FakeTokenizer(), [e])["content"][0]  # type: ignore[arg-type]
    assert [(t["token"], t["logprob"], t["bytes"]) for t in chat["top_logprobs"]] == [
        ("\ufffd", -0.5, [0xF0]), ("\ufffd", -0.7, [0xF0]), ("c", -1.5, [99])
    ]  # fmt: skip
    chosen_split = TokenLogprob(30, "", -0.5, ((30, -0.5), (2, -1.0)))  # the chosen token: its released text ("")
    assert completion_logprobs(FakeTokenizer(), [chosen_split], 0)["top_logprobs"][0] == {"": -0.5, "c": -1.0}  # type: ignore[arg-type]


def test_a_generation_keeps_the_log_probabilities_of_its_tokens(smollm2_model) -> None:
    """Greedy decoding's tokens are their positions' most likely ones; their values are those of the logits that a
    teacher-forced evaluation gives, within the rounding by which the one-token and batched kernels differ."""
    model = smollm2_model
    prompt = model.tokenize("The three primary colors are")
    gen = model.start(prompt, sampling=SamplingParams(temperature=0.0), max_tokens=12, logprobs=3)
    text = "".join(model.run(gen))
    got = gen.token_logprobs
    assert [e.token for e in got] == gen.generated and "".join(e.text for e in got) == text
    teacher = log_softmax(model.eval_logits(gen.tokens)[len(prompt) - 1 : -1])
    for e, row in zip(got, teacher, strict=True):
        assert len(e.top) == 3 and e.top[0] == (e.token, e.logprob)
        assert int(row.argmax()) == e.token  # ~0.07 apart at most on this file: batched and one-token kernels
        assert e.logprob == pytest.approx(float(row[e.token]), abs=0.15)
    assert model.start(prompt, sampling=SamplingParams(), max_tokens=2).token_logprobs == []  # off by default
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="logprobs"):
            model.start(prompt, sampling=SamplingParams(), max_tokens=2, logprobs=bad)  # type: ignore[arg-type]


def test_the_llama_drop_in_reports_them_echoed_cut_and_in_chat(smollm2_path) -> None:
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    prompt = "Water boils at"
    plain = llm.create_completion(prompt, max_tokens=8, temperature=0, logprobs=1)["choices"][0]
    echoed = llm.create_completion(prompt, max_tokens=8, temperature=0, logprobs=1, echo=True)["choices"][0]
    lp, e = plain["logprobs"], echoed["logprobs"]
    n = len(e["tokens"]) - len(lp["tokens"])
    assert "".join(e["tokens"]) == echoed["text"] == prompt + plain["text"]
    assert e["tokens"][n:] == lp["tokens"] and e["text_offset"][n:] == lp["text_offset"] == [
        len(prompt) + sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))
    ]
    assert e["token_logprobs"][0] is None and e["top_logprobs"][0] is None
    teacher = log_softmax(llm.model.eval_logits(llm.tokenize(prompt.encode())))
    tokens = llm.tokenize(prompt.encode())
    assert e["token_logprobs"][1:n] == pytest.approx([float(teacher[i - 1][t]) for i, t in enumerate(tokens)][1:])
    stop = plain["text"][3:6]
    cut = llm.create_completion(prompt, max_tokens=8, temperature=0, logprobs=0, stop=stop)["choices"][0]
    end = len(prompt) + len(cut["text"])
    assert cut["logprobs"]["tokens"] == [t for t, o in zip(lp["tokens"], lp["text_offset"], strict=True) if o < end]
    messages = [{"role": "user", "content": "Name a color."}]
    chat = llm.create_chat_completion(messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = chat["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == chat["choices"][0]["message"]["content"]
    assert all(len(t["top_logprobs"]) == 2 and bytes(t["bytes"]).decode() == t["token"] for t in content)
    chunks = llm.create_chat_completion(messages, max_tokens=6, temperature=0, logprobs=True, stream=True)
    streamed = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["content"]]
    assert [(t["token"], t["logprob"]) for t in streamed] == [(t["token"], t["logprob"]) for t in content]
    assert all(t["top_logprobs"] == [] for t in streamed)  # logprobs without top_logprobs: no alternatives
    with pytest.raises(ValueError, match="logprobs"):
        llm.create_completion(prompt, max_tokens=2, logprobs=-1)
    # special tokens in an echoed prompt: their text, aligned with the echoed text (SmolLM2's BOS id is <|im_start|>)
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    for given in (chatml, llm.tokenize(chatml.encode(), special=True)):
        r = llm.create_completion(given, max_tokens=4, temperature=0, logprobs=1, echo=True)["choices"][0]
        lp = r["logprobs"]
        assert r["text"].startswith(chatml) and "".join(lp["tokens"]) == r["text"]
        assert all(r["text"][o : o + len(t)] == t for t, o in zip(lp["tokens"], lp["text_offset"], strict=True))


def test_a_sparse_models_prompt_scores_are_its_decoding_ones(tmp_path) -> None:
    """Scoring a prompt computes every position as decoding would (the predictor's sparse FFN), as eval_logits does,
    not the dense FFN a plain prompt evaluation uses; the generation then goes on from there."""
    from turbosparse import Model
    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    sparse, _ = synthetic_pair(SyntheticSpec(SHAPES["tiny"], rank=64), tmp_path)
    model = Model(sparse, n_threads=2, n_ctx=128, sparse="predictor")
    prompt = [5, 17, 40, 99, 7, 250, 31]
    gen = model.start(prompt, sampling=SamplingParams(temperature=0.0), max_tokens=0, logprobs=2, score_prompt=True)
    assert "".join(model.run(gen)) == "" and gen.finish_reason == "length" and gen.n_generated == 0
    teacher = log_softmax(model.eval_logits(prompt))
    scores = gen.prompt_logprobs
    assert scores is not None and [e.token for e in scores] == prompt and scores[0].logprob is None
    got = [e.logprob for e in scores[1:]]
    assert got == pytest.approx([float(teacher[i][t]) for i, t in enumerate(prompt[1:])], abs=1e-5)
    dense = log_softmax(Model(sparse, n_threads=2, n_ctx=128, sparse="off").eval_logits(prompt))
    assert not np.allclose(teacher, dense, atol=1e-3)  # the sparse FFN is what was scored
    gen = model.start(prompt, sampling=SamplingParams(temperature=0.0), max_tokens=8, logprobs=0, score_prompt=True)
    "".join(model.run(gen))
    assert gen.n_generated == 8 and len(gen.token_logprobs) == 8
    assert [e.logprob for e in gen.prompt_logprobs or []] == [e.logprob for e in scores]
    # what is generated and its values are those of a generation that does not score its prompt
    plain = model.start(prompt, sampling=SamplingParams(temperature=0.0), max_tokens=8, logprobs=0)
    "".join(model.run(plain))
    assert plain.generated == gen.generated
    assert [e.logprob for e in plain.token_logprobs] == [e.logprob for e in gen.token_logprobs]
    with pytest.raises(InvalidArgumentError, match="score_prompt"):
        model.start(prompt, sampling=SamplingParams(), max_tokens=1, score_prompt=True)

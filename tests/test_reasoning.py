"""A thinking model's answer split into reasoning and content as llama-server's deepseek format splits it, whole and
piece by piece however the text is cut."""

from __future__ import annotations

import random

import pytest

from turbosparse.reasoning import ReasoningSplitter, open_at_end, split_whole, thinks

CASES = [  # (answer, the prompt left <think> open, (reasoning, content))
    ("<think>\nI think.\n</think>\n\nThe answer.", False, ("I think.", "The answer.")),
    ("  <think>a</think>b", False, ("a", "b")),
    ("Hello <think>x</think>", False, ("", "Hello <think>x</think>")),  # only at the answer's start
    ("reason\n</think>\n\nans", True, ("reason", "ans")),  # DeepSeek-R1's prompt ends in <think>
    ("<think>unfinished thought\n", False, ("unfinished thought", "")),  # cut by max_tokens
    ("<thi", False, ("", "<thi")),
    ("\n\n", False, ("", "\n\n")),
    ("<think>a</thi", False, ("a", "")),  # a </think> cut short by max_tokens is dropped, as llama-server does
    ("<think></think>ans", False, ("", "ans")),
    ("<think> a \n b </think> c <think>d</think>", False, ("a \n b", "c <think>d</think>")),
    ("", True, ("", "")),
]


@pytest.mark.parametrize(("answer", "open_at_start", "expected"), CASES)
def test_split_whole_and_in_any_pieces(answer: str, open_at_start: bool, expected: tuple[str, str]) -> None:
    whole = split_whole(answer, open_at_start=open_at_start)
    assert (whole.reasoning, whole.content) == expected
    for seed in range(100):
        rng = random.Random(seed)
        splitter = ReasoningSplitter(open_at_start=open_at_start)
        reasoning = content = ""
        i = 0
        while i < len(answer):
            n = rng.randint(1, 5)
            part = splitter.feed(answer[i : i + n])
            reasoning, content, i = reasoning + part.reasoning, content + part.content, i + n
        part = splitter.finish()
        assert (reasoning + part.reasoning, content + part.content) == expected, seed


def test_nothing_is_held_back_that_cannot_be_a_tag() -> None:
    splitter = ReasoningSplitter(open_at_start=False)
    assert splitter.feed("<think>step one").reasoning == "step one"
    part = splitter.feed(" and two </th")
    assert part.reasoning == " and two" and not part.content  # the blank waits: it may end the reasoning
    part = splitter.feed("ink>\n\nYes")
    assert not part.reasoning and part.content == "Yes"
    assert ReasoningSplitter(open_at_start=False).feed("Sure!").content == "Sure!"


def test_which_prompts_are_split() -> None:
    assert open_at_end("<|im_start|>assistant\n<think>\n") and not open_at_end("<think>\n\n</think>\n\n")
    assert not open_at_end("What does a <think> tag mean?<|im_end|>\n<|im_start|>assistant\n")  # only at the end
    assert thinks("{{ '<think>' }}...{{ '</think>' }}", "no tags") and thinks(None, "A: <think>")
    assert not thinks("{% for m in messages %}{{ m.content }}{% endfor %}", "A:")


def test_where_the_reasoning_is() -> None:
    splitter = ReasoningSplitter(open_at_start=False)
    splitter.feed("  <thi")
    assert not splitter.reasoned
    splitter.feed("nk>hmm")
    assert splitter.reasoned and not splitter.closed
    splitter.feed("</think>")
    assert splitter.reasoned and splitter.closed

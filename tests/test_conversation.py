"""`run -cnv`'s conversation logic on a stand-in model (one prompt token per character): which messages each turn
sends, the context, turn numbers (seeds), Ctrl-C, what it reads. The whole command on SmolLM2: tests/test_cli.py."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator, Sequence

from turbosparse.cli.conversation import Conversation, converse


class CharModel:
    def __init__(self, n_ctx: int) -> None:
        self.n_ctx = n_ctx

    def chat_tokens(self, messages: Sequence[dict[str, object]]) -> list[int]:
        return [0] * sum(len(str(m["content"])) + 1 for m in messages)


class Answers:
    """Answers "a<turn>", recording each turn's prompt length and number."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, tokens: list[int], turn: int) -> Iterator[str]:
        self.calls.append((len(tokens), turn))
        yield f"a{turn}"


def contents(conversation: Conversation) -> list[object]:
    return [m["content"] for m in conversation.messages]


def test_each_turn_sends_the_conversation_before_it() -> None:
    answers = Answers()
    conversation = Conversation(CharModel(1000), answers, 10, [{"role": "system", "content": "sys"}])
    out = io.StringIO()
    converse(conversation, "first", io.StringIO("second\n\nthird \\\nline\n"), out)
    assert out.getvalue() == "a1\na2\na3\n"
    assert contents(conversation) == ["sys", "first", "a1", "second", "a2", "third \nline", "a3"]
    assert answers.calls == [(4 + 6, 1), (10 + 3 + 7, 2), (20 + 3 + 12, 3)]


def test_past_the_context_the_oldest_exchanges_go_down_to_half_and_turns_count_on(capsys) -> None:
    answers = Answers()
    conversation = Conversation(CharModel(100), answers, 10, [{"role": "system", "content": "s"}])
    for i in range(8):
        conversation.turn(f"message {i} " + "x" * 10, io.StringIO())
    lengths, turns = zip(*answers.calls, strict=True)
    assert turns == tuple(range(1, 9))  # seeds differ turn by turn, also once exchanges are dropped
    assert all(n + 10 <= 100 for n in lengths)
    dropped = [i for i in range(1, 8) if lengths[i] < lengths[i - 1]]
    assert dropped and all(lengths[i] <= 50 for i in dropped)  # down to half: the next turns keep their prefix
    assert len(dropped) < 4
    assert "oldest exchange(s) dropped" in capsys.readouterr().err
    assert contents(conversation)[0] == "s" and contents(conversation)[-2:] == ["message 7 " + "x" * 10, "a8"]


def test_a_message_that_cannot_fit_leaves_the_conversation_as_it_was(capsys) -> None:
    answers = Answers()
    conversation = Conversation(CharModel(100), answers, 10, [{"role": "system", "content": "s"}])
    conversation.turn("hello", io.StringIO())
    before = contents(conversation)
    conversation.turn("y" * 95, io.StringIO())
    assert contents(conversation) == before and len(answers.calls) == 1
    assert "not sent" in capsys.readouterr().err
    conversation.turn("again", io.StringIO())
    assert contents(conversation) == [*before, "again", "a2"]


def test_ctrl_c_stops_the_answer_and_the_conversation_goes_on() -> None:
    def answer(tokens: list[int], turn: int) -> Iterator[str]:
        for i in range(1000):
            if turn == 1 and i == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, between two steps
            yield f"{i} "

    conversation = Conversation(CharModel(1000), answer, 10, [])
    out = io.StringIO()
    converse(conversation, "count", io.StringIO("again\n"), out)
    first, second = out.getvalue().splitlines()
    assert first == "0 1 2 " and second.startswith("0 1 2 3 4 5") and second.endswith("999 ")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_line_that_is_not_utf8_is_not_sent(capsys) -> None:
    answers = Answers()
    conversation = Conversation(CharModel(1000), answers, 10, [])
    converse(conversation, "", io.StringIO("caf\udce9\nok\n"), io.StringIO())
    assert contents(conversation) == ["ok", "a1"]
    assert "not UTF-8" in capsys.readouterr().err


def test_single_turn_and_prepared_messages() -> None:
    """-st ends after the first answer; -e's escapes (prepare) apply to the messages read, not to -p's (processed
    already), and never to a line that is not UTF-8 (said, not sent)."""
    answers = Answers()
    conversation = Conversation(CharModel(1000), answers, 10, [])
    assert converse(conversation, "", io.StringIO("one\ntwo\n"), io.StringIO(), single_turn=True) is False
    assert contents(conversation) == ["one", "a1"]
    conversation = Conversation(CharModel(1000), Answers(), 10, [])
    converse(conversation, "a\\n", io.StringIO("b\\n\ncaf\udce9\n"), io.StringIO(), prepare=lambda t: t.upper())
    assert contents(conversation) == ["a\\n", "a1", "B\\N", "a2"]


def test_ctrl_c_at_the_prompt_ends_the_conversation_as_interrupted() -> None:
    """run -cnv then exits with 130, as a program SIGINT ends (and llama-cli); the end of input is a plain end."""

    class Interrupting(io.StringIO):
        def readline(self, *args: object) -> str:
            raise KeyboardInterrupt

    conversation = Conversation(CharModel(1000), Answers(), 10, [])
    assert converse(conversation, "hi", Interrupting(), io.StringIO()) is True
    assert converse(conversation, "", io.StringIO(""), io.StringIO()) is False
    assert contents(conversation) == ["hi", "a1"]

"""Token log-probabilities as OpenAI's APIs return them (`logprobs`): each generated token's log-probability under the
model's raw logits (before penalties, temperature and truncation, as llama-cpp-python reports them) and the most
likely alternatives at its position; in the text completion shape (tokens, text_offset, token_logprobs,
top_logprobs) and in the chat shape (content: token, logprob, bytes, top_logprobs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from turbosparse.errors import InvalidArgumentError
from turbosparse.tokenizer import Tokenizer

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs; the server applies it to completions' logprobs too


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a text: its id, the text it added (empty for the first bytes of a character split across
    tokens), its log-probability (None where nothing precedes it) and the top alternatives (id, log-probability),
    most likely first."""

    token: int
    text: str
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def check_top_count(n_top: int | None, name: str = "logprobs") -> None:
    if n_top is not None and (isinstance(n_top, bool) or not isinstance(n_top, int) or n_top < 0):
        raise InvalidArgumentError(f"{name} must be an integer >= 0, got {n_top!r}")


def log_softmax(logits: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """log(softmax(logits)) along the last axis, stable for large logits; in float32 as llama-cpp-python reports
    log-probabilities, float64 where sums over many tokens follow (perplexity)."""
    x = np.asarray(logits, dtype=dtype)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def scored(logits: np.ndarray, token: int, text: str, n_top: int) -> TokenLogprob:
    """token (which added text) scored against the logits of its position, with its n_top best alternatives."""
    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if n_top > 0:
        k = min(n_top, lp.size)
        best = np.argpartition(-lp, k - 1)[:k]
        best = best[np.lexsort((best, -lp[best]))]  # most likely first, ties by id
        top = tuple((int(i), float(lp[i])) for i in best)
    return TokenLogprob(token, text, float(lp[token]), top)


def prompt_logprobs(tokenizer: Tokenizer, tokens: Sequence[int], logits: np.ndarray, n_top: int) -> list[TokenLogprob]:
    """The prompt's tokens scored teacher-forced: logits [len(tokens), n_vocab], row i the logits after tokens[:i+1].
    The first token has nothing before it (logprob None); a leading BOS adds no text and is left out, the token
    after it scored given it."""
    detok = tokenizer.detokenizer()
    out: list[TokenLogprob] = []
    for i, token in enumerate(tokens):
        text = detok.push(token)
        if i == 0:
            if token != tokenizer.bos or text:
                out.append(TokenLogprob(token, text, None))
            continue
        out.append(scored(logits[i - 1], token, text, n_top))
    return out


class ReleasedLogprobs:
    """Hands out a generation's token log-probabilities (entries, a list the generation appends to) as its text is
    released: a token goes out with the text it starts in, or, adding no text, once the text reaches it. Tokens a stop
    string cut off never go out. One object per reader (a whole answer, or a stream's chunks)."""

    def __init__(self, entries: Sequence[TokenLogprob]) -> None:
        self._entries = entries
        self._sent = 0
        self._offset = 0  # where entries[_sent]'s text starts
        self._chars = 0  # characters released so far

    def take(self, text: str) -> list[TokenLogprob]:
        """The entries that go out with text, the next piece of released text."""
        self._chars += len(text)
        start = self._sent
        while self._sent < len(self._entries):
            e = self._entries[self._sent]
            if not (self._offset < self._chars or (self._offset == self._chars and not e.text)):
                break
            self._offset += len(e.text)
            self._sent += 1
        return list(self._entries[start : self._sent])


def completion_logprobs(tokenizer: Tokenizer, entries: Sequence[TokenLogprob], text_offset: int) -> dict:
    """The text completion shape; text_offset: where the first entry's text starts in the returned text (after
    the prompt, as llama-cpp-python counts it, when the prompt is not echoed)."""
    offsets, tops = [], []
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.text)
        if e.logprob is None:
            tops.append(None)
            continue
        top = {_piece_text(tokenizer, i): lp for i, lp in e.top}
        top[e.text] = e.logprob  # the chosen token is always among them (llama-cpp-python's rule)
        tops.append(top)
    return {
        "tokens": [e.text for e in entries],
        "text_offset": offsets,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
    }


def chat_logprobs(tokenizer: Tokenizer, entries: Sequence[TokenLogprob]) -> dict:
    """The chat completion shape: per token its text, log-probability, UTF-8 bytes and alternatives."""
    return {
        "content": [
            {
                "token": e.text,
                "logprob": e.logprob,
                "bytes": list(tokenizer.piece(e.token)),
                "top_logprobs": [
                    {"token": _piece_text(tokenizer, i), "logprob": lp, "bytes": list(tokenizer.piece(i))}
                    for i, lp in e.top
                ],
            }
            for e in entries
        ]
    }


def _piece_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.piece(token).decode("utf-8", errors="replace")

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
    Texts as prompt_text gives them (special tokens as their text); the first token has nothing before it (logprob
    None), except after a BOS the vocabulary adds, which is left out as prompt_text leaves it out."""
    detok = tokenizer.detokenizer(special=True)
    out: list[TokenLogprob] = []
    for i, token in enumerate(tokens):
        text = detok.push(token)
        if i == 0:
            if not _added_bos(tokenizer, tokens):
                out.append(TokenLogprob(token, text, None))
            continue
        out.append(scored(logits[i - 1], token, text, n_top))
    return out


def prompt_text(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    """The text of a prompt given as token ids, as an echo returns it: special tokens as their text, a BOS the
    vocabulary adds left out (a text prompt's echo is the text itself)."""
    return tokenizer.detokenize(tokens[1:] if _added_bos(tokenizer, tokens) else tokens, special=True)


def _added_bos(tokenizer: Tokenizer, tokens: Sequence[int]) -> bool:
    return bool(tokens) and tokenizer.adds_bos and tokens[0] == tokenizer.bos


class ReleasedLogprobs:
    """Hands out a generation's token log-probabilities (entries, a list the generation appends to) as its text is
    released: a token goes out with the text it starts in; one that adds no text (the first bytes of a character
    split across tokens) with the next token that goes out, or at the end of a generation no stop string cut. Tokens
    a stop string cut off never go out. One object per reader (a whole answer, or a stream's chunks)."""

    def __init__(self, entries: Sequence[TokenLogprob]) -> None:
        self._entries = entries
        self._sent = 0
        self._offset = 0  # where entries[_sent]'s text starts
        self._chars = 0  # characters released so far

    def take(self, text: str, *, uncut_end: bool = False) -> list[TokenLogprob]:
        """The entries that go out with text, the next piece of released text; uncut_end: it is the last piece of
        a generation that no stop string cut (every entry left goes out)."""
        self._chars += len(text)
        start, j, offset = self._sent, self._sent, self._offset
        while j < len(self._entries):
            e = self._entries[j]
            j += 1
            if not e.text:
                continue  # waits for the next token with text
            if offset >= self._chars:
                break
            offset += len(e.text)
            self._sent, self._offset = j, offset
        if uncut_end:
            self._sent = len(self._entries)
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
        top: dict[str, float] = {}
        for i, lp in e.top:  # tokens with the same text (byte pieces) keep the best value
            top.setdefault(e.text if i == e.token else _piece_text(tokenizer, i), lp)
        top[e.text] = e.logprob  # the chosen token is always among them (llama-cpp-python's rule)
        tops.append(top)
    return {
        "tokens": [e.text for e in entries],
        "text_offset": offsets,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
    }


def chat_logprobs(tokenizer: Tokenizer, entries: Sequence[TokenLogprob]) -> dict:
    """The chat completion shape: per token its text, log-probability, UTF-8 bytes and alternatives (refusal: null,
    as OpenAI's and llama_cpp's)."""
    return {
        "refusal": None,
        "content": [
            {
                "token": e.text,
                "logprob": e.logprob,
                "bytes": list(tokenizer.piece(e.token) or e.text.encode("utf-8")),  # a shown special token's text
                "top_logprobs": [
                    {
                        "token": e.text if i == e.token else _piece_text(tokenizer, i),
                        "logprob": lp,
                        "bytes": list(tokenizer.piece(i)),
                    }
                    for i, lp in e.top
                ],
            }
            for e in entries
        ],
    }


def _piece_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.piece(token).decode("utf-8", errors="replace")

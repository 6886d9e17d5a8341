"""Perplexity of a Model on a text, and agreement of its sparse decoding with dense decoding.

Protocol: the text is tokenized once; windows of n_ctx tokens (the model's BOS first when its vocabulary
adds one) are evaluated from an empty context, teacher-forced; every token of a window except its first
is scored. Windows do not overlap.

llama-perplexity's protocol (second_half=True), for figures comparable with llama.cpp's: the text tokenized with the
model's BOS, cut into chunks of n_ctx tokens whose first is made the BOS (when the vocabulary adds one), and only the
tokens of each chunk's second half scored (each with at least n_ctx / 2 tokens before it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from turbosparse.errors import InvalidArgumentError
from turbosparse.logprobs import log_softmax
from turbosparse.model import Model
from turbosparse.tokenizer import Tokenizer


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    n_tokens: int  # scored tokens
    n_windows: int
    top1_agreement: float | None = None  # share of positions where the compared model's argmax is the same
    mean_kl: float | None = None  # mean KL(reference || model) per position, nats
    # llama-perplexity's +/-: the perplexity times the standard error of the mean negative log-likelihood
    perplexity_error: float = 0.0
    reference_perplexity: float | None = None  # the compared model's own, over the same tokens


# rows of a window's logits turned into float64 log-probabilities at once: a 262k-token vocabulary's 512 rows would
# take 1 GB per copy
ROWS_PER_BLOCK = 64


@dataclass
class _Sums:
    """Running sums over the scored positions."""

    nll: float = 0.0
    nll_squared: float = 0.0
    n: int = 0
    agree: int = 0
    kl: float = 0.0
    reference_nll: float = 0.0

    def add(self, logits: np.ndarray, targets: np.ndarray, reference: np.ndarray | None) -> None:
        """The positions of logits [n, n_vocab] (and the reference's) scored against targets [n]."""
        for at in range(0, len(targets), ROWS_PER_BLOCK):
            rows = slice(at, at + ROWS_PER_BLOCK)
            logp = log_softmax(logits[rows], np.float64)
            picked = np.arange(len(logp))
            nll = -logp[picked, targets[rows]]
            self.nll += float(nll.sum())
            self.nll_squared += float((nll * nll).sum())
            self.n += len(nll)
            if reference is not None:
                ref = log_softmax(reference[rows], np.float64)
                self.agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
                self.kl += float((np.exp(ref) * (ref - logp)).sum())
                self.reference_nll -= float(ref[picked, targets[rows]].sum())

    def perplexity(self) -> float:
        return float(np.exp(self.nll / self.n))

    def error(self) -> float:
        """llama-perplexity's uncertainty of the perplexity (0 for a single scored token)."""
        if self.n < 2:
            return 0.0
        mean = self.nll / self.n
        variance = max(self.nll_squared / self.n - mean * mean, 0.0)
        return self.perplexity() * float(np.sqrt(variance / (self.n - 1)))


def window_nll(logits: np.ndarray, window: list[int]) -> float:
    """Summed negative log-likelihood of window[1:] under logits [len(window), n_vocab] (its last row unused)."""
    sums = _Sums()
    sums.add(logits[:-1], np.asarray(window[1:]), None)
    return sums.nll


def bos_prefix(tokenizer: Tokenizer) -> list[int]:
    """[BOS] when the vocabulary adds one, else []."""
    return [tokenizer.bos] if tokenizer.adds_bos and tokenizer.bos >= 0 else []


def windows(model: Model, tokens: list[int], n_ctx: int, max_windows: int | None = None) -> Iterator[list[int]]:
    return token_windows(tokens, n_ctx, bos_prefix(model.tokenizer), max_windows)


def token_windows(tokens: list[int], n_ctx: int, bos: list[int], max_windows: int | None = None) -> Iterator[list[int]]:
    """Non-overlapping windows of n_ctx tokens, each bos + the next n_ctx - len(bos) tokens of the text."""
    if n_ctx < 2:
        raise InvalidArgumentError(f"windows need at least 2 tokens, got n_ctx = {n_ctx}")
    step = n_ctx - len(bos)
    count = 0
    for start in range(0, len(tokens) - step + 1, step):
        if max_windows is not None and count == max_windows:
            return
        yield bos + tokens[start : start + step]
        count += 1


def llama_perplexity_chunks(
    tokens: list[int], n_ctx: int, bos: list[int], max_windows: int | None = None
) -> Iterator[list[int]]:
    """llama-perplexity's chunks of tokens (the text's, BOS first where the vocabulary adds one): n_ctx tokens each,
    the first made the BOS."""
    if n_ctx < 4:
        raise InvalidArgumentError(f"chunks need at least 4 tokens, got n_ctx = {n_ctx}")
    n_chunks = len(tokens) // n_ctx if max_windows is None else min(len(tokens) // n_ctx, max_windows)
    for i in range(n_chunks):
        yield bos + tokens[i * n_ctx + len(bos) : (i + 1) * n_ctx]


def perplexity(
    model: Model,
    text: str,
    n_ctx: int,
    *,
    reference: Model | None = None,
    max_windows: int | None = None,
    second_half: bool = False,
    on_window: Callable[[int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity of model on text; with a reference model (e.g. the same file, dense), also the top-1
    agreement and mean KL(reference || model) over the scored positions, and the reference's own perplexity;
    second_half: llama-perplexity's protocol; on_window(windows so far, perplexity so far) after each window (its
    running figures)."""
    tokens = model.tokenize(text, add_bos=second_half)
    if second_half:
        chunks = llama_perplexity_chunks(tokens, n_ctx, bos_prefix(model.tokenizer), max_windows)
    else:
        chunks = windows(model, tokens, n_ctx, max_windows)
    first = n_ctx // 2 if second_half else 0  # the first scored position's index in a window
    sums, n_windows = _Sums(), 0
    for window in chunks:
        targets = np.asarray(window[first + 1 :])
        ref = reference.eval_logits(window)[first:-1] if reference is not None else None
        sums.add(model.eval_logits(window)[first:-1], targets, ref)
        n_windows += 1
        if on_window is not None:
            on_window(n_windows, sums.perplexity())
    if sums.n == 0:
        raise InvalidArgumentError(f"the text has {len(tokens)} tokens: fewer than one window of {n_ctx}")
    return PerplexityResult(
        perplexity=sums.perplexity(),
        n_tokens=sums.n,
        n_windows=n_windows,
        top1_agreement=sums.agree / sums.n if reference is not None else None,
        mean_kl=sums.kl / sums.n if reference is not None else None,
        perplexity_error=sums.error(),
        reference_perplexity=float(np.exp(sums.reference_nll / sums.n)) if reference is not None else None,
    )

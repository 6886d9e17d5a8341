"""Perplexity of a Model on a text, and agreement of its sparse decoding with dense decoding.

Protocol: the text is tokenized once; windows of n_ctx tokens (the model's BOS first when its vocabulary
adds one) are evaluated from an empty context, teacher-forced; every token of a window except its first
is scored. Windows do not overlap.

llama-perplexity's protocol (second_half=True), for figures comparable with llama.cpp's: the text tokenized with the
model's BOS, cut into chunks of n_ctx tokens whose first is made the BOS (when the vocabulary adds one), and only the
tokens of each chunk's second half scored (each with at least n_ctx / 2 tokens before it).
"""

from __future__ import annotations

from collections.abc import Iterator
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


def window_nll(logp: np.ndarray, window: list[int]) -> float:
    """Summed negative log-likelihood of window[1:] under logp [len(window) - 1, n_vocab] (log-probabilities)."""
    targets = np.asarray(window[1:])
    return -float(logp[np.arange(len(targets)), targets].sum())


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
) -> PerplexityResult:
    """Perplexity of model on text; with a reference model (e.g. the same file, dense), also the top-1
    agreement and mean KL(reference || model) over the scored positions; second_half: llama-perplexity's protocol."""
    tokens = model.tokenize(text, add_bos=second_half)
    if second_half:
        chunks = llama_perplexity_chunks(tokens, n_ctx, bos_prefix(model.tokenizer), max_windows)
    else:
        chunks = windows(model, tokens, n_ctx, max_windows)
    first = n_ctx // 2 if second_half else 0  # the first scored position's index in a window
    nll, n, n_windows = 0.0, 0, 0
    agree, kl = 0, 0.0
    for window in chunks:
        logp = log_softmax(model.eval_logits(window), np.float64)[first:-1]
        nll += window_nll(logp, window[first:])
        n += len(window) - 1 - first
        n_windows += 1
        if reference is not None:
            ref = log_softmax(reference.eval_logits(window), np.float64)[first:-1]
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
            kl += float((np.exp(ref) * (ref - logp)).sum())
    if n == 0:
        raise InvalidArgumentError(f"the text has {len(tokens)} tokens: fewer than one window of {n_ctx}")
    return PerplexityResult(
        perplexity=float(np.exp(nll / n)),
        n_tokens=n,
        n_windows=n_windows,
        top1_agreement=agree / n if reference is not None else None,
        mean_kl=kl / n if reference is not None else None,
    )

"""One generation's decoding state: the next token from logits, its text, stop strings, and why it finished."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from turbosparse.errors import ContextOverflowError, InvalidArgumentError
from turbosparse.grammar import Grammar
from turbosparse.grammar_engine import GrammarDeadEnd
from turbosparse.logprobs import TokenLogprob, check_top_count, prompt_logprobs, scored
from turbosparse.sampling import Sampler, SamplingParams
from turbosparse.tokenizer import Tokenizer

FinishReason = Literal["stop", "length"]
# (the evaluated token ids, the logits after them) -> the logits to sample from: llama_cpp's logits processors
LogitsHook = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (the evaluated token ids, the logits after them) -> whether to end there: llama_cpp's stopping criteria
StopHook = Callable[[np.ndarray, np.ndarray], bool]

logger = logging.getLogger(__name__)


def _read_only(logits: np.ndarray) -> np.ndarray:
    """What a hook gets of a step's logits: a view it cannot write (they are the model's buffer, read again for the
    log-probabilities)."""
    view = logits.view()
    view.flags.writeable = False
    return view


@dataclass
class StopScanner:
    """Finds stop strings in generated text and holds back a tail that may still become one."""

    stops: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    stopping_word: str = ""  # the stop string that ended the text (the first given of those found earliest)

    def feed(self, piece: str) -> str:
        if not self.stops:
            self.text += piece
            return self._release(len(self.text))
        # only the new piece and the held-back tail can hold a stop string that was not there before
        start = max(0, self.emitted - max(len(s) for s in self.stops))
        self.text += piece
        found = [(i, s) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if found:
            cut, self.stopping_word = min(found, key=lambda f: f[0])
            self.stopped = True
            self.text = self.text[:cut]
            return self._release(len(self.text))
        # the longest end of the text that begins a stop string, within what is not released yet (an earlier step held
        # back all of one that began before): the work stays that tail's, not a long stop string's (a 10 MB one took
        # the server's engine thread for minutes per token)
        tail = len(self.text) - self.emitted
        hold = max(
            (k for s in self.stops for k in range(1, min(len(s), tail + 1)) if self.text.endswith(s[:k])), default=0
        )
        return self._release(len(self.text) - hold)

    def finish(self) -> str:
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return out


@dataclass(frozen=True)
class StepLogits:
    """What one step computed for a generation: the logits after its tokens, and with score_prompt, on its first
    step, every prompt position's (Generation.scored_prompt)."""

    next: np.ndarray
    prompt: np.ndarray | None = None

    def detached(self) -> StepLogits:
        """next copied out of the buffer the model's next evaluation overwrites (prompt is allocated per step)."""
        return StepLogits(self.next.copy(), self.prompt)


class Generation:
    """Samples tokens after a prompt until an end-of-generation token or a stop string ("stop"), max_tokens or a
    full context ("length"). The engine evaluates `tokens` and hands the logits of the last one to advance().

    max_tokens None: until the context is full. The prompt and max_tokens must fit in n_ctx. logprobs (the number of
    alternatives, 0 or more; None: off): each generated token's log-probability is kept in token_logprobs; with
    score_prompt, the prompt's tokens are scored too (prompt_logprobs), from the logits of every prompt position
    computed as decoding would compute them (scored_prompt), also when max_tokens is 0. grammar: the generated text
    follows it (llama.cpp's GBNF engine); the generation ends where it is complete, or where it allows no token of the
    vocabulary or takes llama.cpp over grammar_engine.STEP_TIMEOUT_S to match a token (a warning says so).
    logits_processor: each step samples from what it makes of (the evaluated token ids, the logits, read-only); the
    penalties, logit_bias and grammar apply after it, the log-probabilities are the model's.
    stopping_criteria: checked with the same two after each sampling, as llama_cpp's completions: where true the
    generation ends ("stop") without the token just sampled."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_tokens: Sequence[int],
        *,
        n_ctx: int,
        sampling: SamplingParams,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        logprobs: int | None = None,
        score_prompt: bool = False,
        grammar: Grammar | None = None,
        cache_prompt: bool = False,
        shown_tokens: frozenset[int] = frozenset(),
        logits_processor: LogitsHook | None = None,
        stopping_criteria: StopHook | None = None,
        preferred_sequence: int | None = None,
    ) -> None:
        prompt = list(prompt_tokens)
        if not prompt:
            raise InvalidArgumentError("the prompt is empty")
        if len(prompt) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt)} tokens; n_ctx = {n_ctx} leaves no room to generate"
            )
        if max_tokens is not None and max_tokens < 0:
            raise InvalidArgumentError(f"max_tokens must be >= 0, got {max_tokens}")
        if max_tokens is not None and len(prompt) + max_tokens > n_ctx:
            raise ContextOverflowError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceed n_ctx = {n_ctx}"
            )
        check_top_count(logprobs)
        too_large = [t for t in (sampling.logit_bias or {}) if t >= tokenizer.n_vocab]
        if too_large:
            raise InvalidArgumentError(
                f"logit_bias: token {too_large[0]} is out of the vocabulary (0..{tokenizer.n_vocab - 1})"
            )
        if score_prompt and logprobs is None:
            raise InvalidArgumentError("score_prompt needs logprobs (the number of alternatives)")
        self.n_prompt = len(prompt)
        self.tokens: list[int] = prompt  # the prompt, then every generated token
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        self.finish_reason: FinishReason | None = None
        self.cancelled = False
        # ended on a token it took (max_tokens, a full context, a stop string): that token was never evaluated
        self.ended_on_new_token = False
        self.cache_prompt = cache_prompt  # its prompt keeps all its sequence holds of it (Model.start)
        self.n_cached = 0  # prompt tokens its sequence held already (not evaluated), once the prompt is in
        self.preferred_sequence = preferred_sequence  # taken where free (llama-server's id_slot); None: any
        self.sequence = -1  # the sequence (a server's slot) it last evaluated in
        self._tokenizer = tokenizer
        self._grammar = Grammar.of(grammar).start(tokenizer) if grammar is not None else None
        self._sampler = Sampler(sampling, self._grammar)
        self._logits_processor = logits_processor
        self._stopping_criteria = stopping_criteria
        self._detokenizer = tokenizer.detokenizer(shown=shown_tokens)
        self._scanner = StopScanner(tuple(s for s in stop if s))
        self.logprobs = logprobs
        self.token_logprobs: list[TokenLogprob] = []  # one per generated token, when logprobs is not None
        self.prompt_logprobs: list[TokenLogprob] | None = None  # with score_prompt, after the first step
        self._score_prompt = score_prompt
        if max_tokens == 0 and not score_prompt and not cache_prompt:
            self.finish_reason = "length"  # with cache_prompt the prompt still goes into its sequence (take)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt :]

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def text(self) -> str:
        """The text released so far (stop strings and what follows them cut)."""
        return self._scanner.text[: self._scanner.emitted]

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    @property
    def wants_prompt_logits(self) -> bool:
        """Whether the next step must give scored_prompt the logits of every prompt position."""
        return self._score_prompt and self.prompt_logprobs is None and not self.done

    @property
    def constrained(self) -> bool:
        """Whether a grammar constrains it (its steps ask llama.cpp's grammar engine, which may take a while)."""
        return self._grammar is not None

    @property
    def stopped_by_string(self) -> bool:
        """Whether a stop string ended the generation (and cut its text)."""
        return self._scanner.stopped

    @property
    def stopping_word(self) -> str:
        """The stop string that ended the generation ("" for none)."""
        return self._scanner.stopping_word

    def scored_prompt(self, prompt_logits: np.ndarray, next_logits: np.ndarray) -> str:
        """The first step of a generation that scores its prompt: prompt_logits [n_prompt, n_vocab], row i the
        logits after the prompt's first i + 1 tokens; next_logits those a plain prompt evaluation gives after the
        whole prompt, which the first token is sampled from (unless max_tokens is 0), so that scoring never changes
        what is generated. Returns the text released."""
        n_top = self.logprobs if self.logprobs is not None else 0
        self.prompt_logprobs = prompt_logprobs(self._tokenizer, self.tokens[: self.n_prompt], prompt_logits, n_top)
        if self.max_tokens == 0:
            self.finish_reason = "length"
            return ""
        return self.advance(next_logits)

    def take(self, step: StepLogits) -> str:
        """Samples the next token from what a step computed (scored_prompt or advance); returns the text released."""
        if step.prompt is not None:
            return self.scored_prompt(step.prompt, step.next)
        if self.max_tokens == 0:  # a cache_prompt generation of no tokens: its prompt is now in its sequence
            self.finish_reason = "length"
            return ""
        return self.advance(step.next)

    def cancel(self) -> None:
        """Ends the generation early (a client went away): the engine stops evaluating it."""
        self.cancelled = True

    def advance(self, logits: np.ndarray) -> str:
        """Samples the next token from the logits after `tokens`; returns the text it releases (may be empty).
        (A generation cancelled while the engine evaluated it still takes its step.)"""
        if self.finish_reason is not None:
            raise RuntimeError("the generation has finished")
        try:
            history = self.tokens if self._sampler.params.penalize_prompt else self.tokens[self.n_prompt :]
            chosen = logits
            if self._logits_processor is not None:
                chosen = self._logits_processor(self._evaluated_ids(), _read_only(logits))
            token = self._sampler.sample(chosen, history)
            if self._stopping_criteria is not None and self._stopping_criteria(
                self._evaluated_ids(), _read_only(logits)
            ):
                self.finish_reason = "stop"
                return self._flush()
            end = self._tokenizer.is_end_of_generation(token)
            if self._grammar is not None and not end:
                self._grammar.accept(token)
        except GrammarDeadEnd as exc:
            logger.warning("a generation ends early: %s", exc)
            self.finish_reason = "stop"
            return self._flush()
        if end:
            self.finish_reason = "stop"
            return self._flush()
        self.tokens.append(token)
        piece = self._detokenizer.push(token)
        if self.logprobs is not None:
            self.token_logprobs.append(scored(logits, token, piece, self.logprobs))
        text = self._scanner.feed(piece)
        if self._scanner.stopped:
            self.finish_reason = "stop"
            self.ended_on_new_token = True
            return text
        full = len(self.tokens) >= self.n_ctx  # the context holds n_ctx tokens, as llama.cpp's and llama-server's
        if full or (self.max_tokens is not None and self.n_generated >= self.max_tokens):
            self.finish_reason = "length"
            self.ended_on_new_token = True
            return text + self._flush()
        return text

    def _evaluated_ids(self) -> np.ndarray:
        """The tokens a step's logits follow (every one of self.tokens), as llama_cpp's hooks get them."""
        return np.asarray(self.tokens, dtype=np.intc)

    def _flush(self) -> str:
        return self._scanner.feed(self._detokenizer.flush()) + self._scanner.finish()

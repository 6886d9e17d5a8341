"""`Model`: the llama-cpp-python-like face of the engine (tokenize, eval_logits, generate, stats)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._library import set_llama_log_verbosity
from .binding import FfnActivation, ModelInfo, NativeContext, NativeModel, SparseMode
from .errors import ContextOverflowError
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SparseName = Literal["off", "predictor", "exact", "auto"]
_MODE_NAMES: dict[SparseMode, str] = {
    SparseMode.OFF: "off",
    SparseMode.PREDICTOR: "predictor",
    SparseMode.EXACT: "exact",
}


def default_threads() -> int:
    """All cores this process may use, capped at 8 (decoding is memory bound beyond that)."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def resolve_sparse_mode(sparse: str, info: ModelInfo, path: str) -> SparseMode:
    """The mode a `sparse=` argument means for this file; refuses modes the file cannot run."""
    relu_gated = info.ffn_act in (FfnActivation.REGLU, FfnActivation.DRELU)
    exact_capable = relu_gated or info.has_ffn_thresholds  # SwiGLU needs thresholds from `turbosparse calibrate`
    if sparse == "auto":
        if info.has_predictors:
            return SparseMode.PREDICTOR
        return SparseMode.EXACT if exact_capable else SparseMode.OFF
    if sparse == "off":
        return SparseMode.OFF
    if sparse == "predictor":
        if not info.has_predictors:
            raise ValueError(
                f"{path}: sparse='predictor' needs activation predictors in every layer; this file has none"
            )
        return SparseMode.PREDICTOR
    if sparse == "exact":
        if not exact_capable:
            raise ValueError(
                f"{path}: sparse='exact' needs a ReLU-gated FFN (reglu or drelu) or FFN thresholds; this file's FFN "
                f"is {info.ffn_act.name.lower()} without thresholds: run `turbosparse calibrate` on it first"
            )
        return SparseMode.EXACT
    raise ValueError(f"sparse must be one of 'off', 'predictor', 'exact', 'auto'; got {sparse!r}")


@dataclass
class _Timings:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_seconds": self.prompt_seconds,
            "prompt_tok_s": self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0,
            "decode_tokens": self.decode_tokens,
            "decode_seconds": self.decode_seconds,
            "decode_tok_s": self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0,
        }


@dataclass
class _StopScanner:
    """Finds stop strings in generated text and holds back a tail that may still become one."""

    stops: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    stopped: bool = field(default=False)

    def feed(self, piece: str) -> str:
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut]
            return self._release(len(self.text))
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def finish(self) -> str:
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return out


class Model:
    """A GGUF model on the turbosparse engine.

    sparse: "off" (dense), "predictor", "exact", or "auto" (predictor if the file has predictors, exact for
    ReLU-gated FFNs without them, dense otherwise).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int = 4096,
        n_batch: int = 512,
        sparse: SparseName = "auto",
        threshold: float | None = None,
        measure_recall: bool = False,
        verbose: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        set_llama_log_verbosity(verbose)
        probe = NativeModel(self.path, repack=False, sparse_rows=True)
        self.sparse_mode = resolve_sparse_mode(sparse, probe.info, self.path)
        del probe
        # dense decoding may use ggml's repacked matrices; sparse decoding reads FFN rows in place
        self._native = NativeModel(self.path, repack=True, sparse_rows=self.sparse_mode != SparseMode.OFF)
        self.info: ModelInfo = self._native.info
        n_ctx = self.info.n_ctx_train if n_ctx <= 0 else min(n_ctx, self.info.n_ctx_train)
        self.n_threads = n_threads if n_threads is not None else default_threads()
        self._ctx = NativeContext(
            self._native,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_batch=n_batch,
            sparse_mode=self.sparse_mode,
            threshold=threshold,
        )
        self._ctx.set_measure_recall(measure_recall)
        self._tokenizer = Tokenizer(self.path, verbose=verbose)
        if self._tokenizer.n_vocab != self.info.n_vocab:
            logger.warning(
                "%s: the vocabulary has %d tokens but token_embd has %d rows",
                self.path,
                self._tokenizer.n_vocab,
                self.info.n_vocab,
            )
        self._cached: list[int] = []  # tokens whose keys and values are in the context, in order
        self._timings = _Timings()

    # ---- properties -------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._ctx.n_ctx

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    # ---- tokens -----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return self._tokenizer.detokenize(tokens, special=special)

    # ---- evaluation -------------------------------------------------------------------------------
    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits [len(tokens), n_vocab] from an empty context, every position computed
        with the FFN as decoding computes it in this model's sparse mode."""
        if len(tokens) == 0:
            raise ValueError("eval_logits needs at least one token")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed n_ctx = {self.n_ctx}")
        self._reset()
        logits = self._ctx.eval(tokens, dense_ffn=self.sparse_mode == SparseMode.OFF, logits_all=True)
        self._cached = list(tokens)
        return logits

    def _reset(self) -> None:
        self._ctx.truncate(0)
        self._cached = []

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        """Logits after `tokens`, reusing the cached prefix they share with the previous call."""
        common = 0
        for a, b in zip(self._cached, tokens, strict=False):
            if a != b:
                break
            common += 1
        keep = min(common, len(tokens) - 1)  # the last prompt token is always evaluated, for its logits
        self._ctx.truncate(keep)
        self._cached = self._cached[:keep]
        start = time.perf_counter()
        logits = self._ctx.eval(tokens[keep:], dense_ffn=True, logits_all=False)
        self._timings.prompt_seconds += time.perf_counter() - start
        self._timings.prompt_tokens += len(tokens) - keep
        self._cached = list(tokens)
        return logits

    def _decode_one(self, token: int) -> np.ndarray:
        start = time.perf_counter()
        logits = self._ctx.eval([token], dense_ffn=False, logits_all=False)
        self._timings.decode_seconds += time.perf_counter() - start
        self._timings.decode_tokens += 1
        self._cached.append(token)
        return logits

    # ---- generation -------------------------------------------------------------------------------
    def generate_tokens(
        self, prompt_tokens: Sequence[int], *, max_tokens: int | None, sampling: SamplingParams
    ) -> Iterator[int]:
        """Sampled token ids after the prompt, until an end-of-generation token, max_tokens or a full context."""
        tokens = list(prompt_tokens)
        if not tokens:
            raise ValueError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens; n_ctx = {self.n_ctx} leaves no room to generate"
            )
        if max_tokens is not None and len(tokens) + max_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceed n_ctx = {self.n_ctx}"
            )
        sampler = Sampler(sampling)
        logits = self._prefill(tokens)
        history = list(tokens)
        n = 0
        while max_tokens is None or n < max_tokens:
            token = sampler.sample(logits, history)
            if self._tokenizer.is_end_of_generation(token):
                return
            yield token
            n += 1
            history.append(token)
            if len(self._cached) >= self.n_ctx or (max_tokens is not None and n >= max_tokens):
                return
            logits = self._decode_one(token)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
        add_bos: bool = True,
    ) -> str | Iterator[str]:
        """Generated text (an iterator of text pieces when stream=True). A str prompt is tokenized with special
        tokens parsed, as chat prompts need; temperature <= 0 is greedy decoding."""
        sampling = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            seed=seed,
        )
        tokens = self.tokenize(prompt, add_bos=add_bos, special=True) if isinstance(prompt, str) else list(prompt)
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        pieces = self._text_pieces(tokens, max_tokens, sampling, tuple(s for s in stops if s))
        return pieces if stream else "".join(pieces)

    def _text_pieces(
        self, tokens: list[int], max_tokens: int | None, sampling: SamplingParams, stops: tuple[str, ...]
    ) -> Iterator[str]:
        detok = self._tokenizer.detokenizer()
        scanner = _StopScanner(stops)
        for token in self.generate_tokens(tokens, max_tokens=max_tokens, sampling=sampling):
            piece = scanner.feed(detok.push(token))
            if piece:
                yield piece
            if scanner.stopped:
                return
        tail = scanner.feed(detok.flush()) + scanner.finish()
        if tail:
            yield tail

    def chat_prompt(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text the file's chat template makes of messages ([{"role": ..., "content": ...}])."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._tokenizer.chat_template
        if template is None:
            raise ValueError(f"{self.path}: the file has no chat template (tokenizer.chat_template)")
        tok = self._tokenizer
        formatter = Jinja2ChatFormatter(
            template,
            eos_token=tok.piece(tok.eos, special=True).decode("utf-8", errors="replace") if tok.eos >= 0 else "",
            bos_token=tok.piece(tok.bos, special=True).decode("utf-8", errors="replace") if tok.bos >= 0 else "",
            add_generation_prompt=add_generation_prompt,
        )
        return formatter(messages=list(messages)).prompt

    # ---- statistics -------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The predictor logit threshold in use (neuron j computed when logit_j >= threshold)."""
        return self._ctx.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._ctx.threshold = value

    def set_measure_recall(self, on: bool) -> None:
        """Predictor mode: also compute every neuron, so stats() can report the predictor's recall."""
        self._ctx.set_measure_recall(on)

    def stats(self) -> dict[str, object]:
        """Measured over the tokens decoded (and teacher-forced) since the last reset_stats():

        active_fraction[l]: share of layer l's FFN neurons whose rows were computed (1.0 for a dense FFN);
        nonzero_fraction[l]: share with a non-zero activation (None where the dense path does not count);
        kept_fraction[l]: share of layer l's up and down rows read, (computed + non-zero) / 2 (1.0 for a layer that
        ran dense), and mean_kept_fraction: its mean over the layers (a calibrated file's target is 1 - sparsity);
        predictor_recall[l]: share of truly active neurons the predictor selected (None unless measured);
        plus prompt / decode token counts and speeds."""
        layers = self._ctx.layer_stats()
        n_ff = self.info.n_ff

        def share(count: int, total: int) -> float | None:
            return count / total if total else None

        counted = any(s.n_tokens for s in layers)
        active = [share(s.n_computed, s.n_tokens * n_ff) if counted else 1.0 for s in layers]
        kept = [(s.n_computed + s.n_nonzero) / (2 * s.n_tokens * n_ff) if s.n_tokens else 1.0 for s in layers]
        measured = any(s.n_true_active for s in layers)
        return {
            "sparse_mode": _MODE_NAMES[self.sparse_mode],
            "threshold": self.threshold,
            "n_layer": self.info.n_layer,
            "active_fraction": active,
            "nonzero_fraction": [share(s.n_nonzero, s.n_tokens * n_ff) for s in layers],
            "kept_fraction": kept,
            "mean_kept_fraction": sum(kept) / len(kept),
            "predictor_recall": [share(s.n_true_found, s.n_true_active) for s in layers] if measured else None,
            **self._timings.as_dict(),
        }

    def reset_stats(self) -> None:
        self._timings = _Timings()
        self._ctx.reset_stats()

"""Token sampling over logits, in llama-cpp-python's order: logit bias, penalties, grammar, top-k, top-p, min-p,
temperature."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from turbosparse.errors import EvalError, InvalidArgumentError
from turbosparse.grammar_engine import GrammarDeadEnd, GrammarState

# top-p without top-k first looks among this many best tokens, then 16 times as many; only a flat distribution
# needs them all
_NUCLEUS_CANDIDATES = 256
_SAMPLE = 2048  # logits in the strided sample that bounds a top-k search (_best)
# a grammar first judges about this many best tokens (then 8 and 64 times as many, then all): asking llama.cpp about
# the whole vocabulary takes 3-4 ms a token, about as long as the default model takes to compute it
_GRAMMAR_CANDIDATES = 256
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def llama_seed(seed: int | None) -> int | None:
    """A seed as llama.cpp reads it, a uint32 (-5 is 2**32 - 5), whose LLAMA_DEFAULT_SEED 0xFFFFFFFF (-1) asks for a
    fresh random one: None."""
    if seed is None:
        return None
    seed %= 2**32
    return None if seed == 0xFFFFFFFF else seed


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how many recent tokens the penalties look at (-1: all of them, llama.cpp's context size)
    frequency_penalty: float = 0.0  # subtracted once per occurrence in the recent tokens (OpenAI's)
    presence_penalty: float = 0.0  # subtracted once from every token present in them (OpenAI's)
    # whether the recent tokens include the prompt's (llama.cpp, llama-server) or only generated ones
    # (llama-cpp-python's Llama, whose sampler sees only what it sampled)
    penalize_prompt: bool = True
    seed: int | None = None  # None: a fresh random seed; others as llama.cpp reads them (llama_seed: -1 is None too)
    logit_bias: Mapping[int, float] | None = None  # token id -> added to its logit, first (-inf: never sampled)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
                raise InvalidArgumentError(f"{f.name} must be a finite number, got {value}")
        for name in ("top_k", "repeat_last_n", "seed"):  # 40.0 from a JSON or YAML setting is 40
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and value.is_integer():
                object.__setattr__(self, name, int(value))
            elif not (isinstance(value, numbers.Integral) or (name == "seed" and value is None)):
                raise InvalidArgumentError(f"{name} must be a whole number, got {value!r}")
        object.__setattr__(self, "seed", llama_seed(self.seed))
        if self.top_p < 0.0:  # 0: the best token alone, as llama.cpp's top-p keeps one at least
            raise InvalidArgumentError(f"top_p must be >= 0 (>= 1 turns it off), got {self.top_p}")
        if self.min_p > 1.0:
            raise InvalidArgumentError(f"min_p must be <= 1, got {self.min_p}")
        if self.repeat_penalty <= 0.0:
            raise InvalidArgumentError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise InvalidArgumentError(f"repeat_last_n must be >= 0, or -1 for every token, got {self.repeat_last_n}")
        for token, bias in (self.logit_bias or {}).items():
            if not isinstance(token, numbers.Integral) or token < 0:
                raise InvalidArgumentError(f"logit_bias: token ids are integers >= 0, got {token!r}")
            if not isinstance(bias, numbers.Real) or not (math.isfinite(bias) or bias == -math.inf):
                raise InvalidArgumentError(f"logit_bias: token {token}'s bias must be a number or -inf, got {bias!r}")

    @property
    def penalizes(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _best_first(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids ordered by descending logit, ties by ascending id (what a stable sort of the whole vector gives)."""
    return ids[np.lexsort((ids, -logits[ids]))]


def _strided_sample(logits: np.ndarray) -> tuple[int, np.ndarray]:
    """(step, every step-th logit sorted ascending): about rank * step of all the logits reach sample[-rank]."""
    step = max(1, logits.size // _SAMPLE)
    return step, np.sort(logits[::step])


def _best(logits: np.ndarray, k: int) -> np.ndarray:
    """The k best ids, best first (ties by ascending id). Only the values at or above a bound read off a strided
    sample of the logits are sorted: numpy's argpartition over a 49152-token vocabulary took ~0.5 ms a token. Exact:
    where at least k values reach the bound, the k best are among them; else (rare) every id is sorted."""
    step, sample = _strided_sample(logits)
    rank = min(sample.size, 2 * (k // step) + 8)
    above = np.flatnonzero(logits >= sample[-rank])
    return _best_first(logits, above if above.size >= k else np.arange(logits.size))[:k]


def check_logits(logits: np.ndarray) -> None:
    """Raises EvalError where a model's logits hold a value that is not finite."""
    bad = np.flatnonzero(~np.isfinite(logits))
    if bad.size:
        raise EvalError(
            f"the logits hold {logits[bad[0]]} (token {int(bad[0])} first): the model's weights or its computation "
            "overflowed or produced values that are not numbers"
        )


class Sampler:
    """Picks the next token from a logits vector; holds the random generator of one generation, and the state of its
    grammar (which the caller moves on with each token taken)."""

    def __init__(self, params: SamplingParams, grammar: GrammarState | None = None) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)
        self._grammar = grammar
        bias = params.logit_bias or {}
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float64, count=len(bias))
        self._banned = self._bias_ids[np.isneginf(self._bias_values)]  # -inf: never sampled, also under a grammar

    @property
    def grammar(self) -> GrammarState | None:
        """The grammar's state, which the caller moves on with each token taken (None: no grammar)."""
        return self._grammar

    def _biased(self, logits: np.ndarray) -> np.ndarray:
        if not self._bias_ids.size:
            return logits
        out = logits.copy()
        out[self._bias_ids] = np.clip(logits[self._bias_ids] + self._bias_values, -_FLOAT32_MAX, _FLOAT32_MAX)
        return out

    def _penalize(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        p = self.params
        if not p.penalizes or not history:
            return logits
        window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n :]
        recent, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
        out = logits.copy()
        vals = out[recent].astype(np.float64)
        # extreme penalties (a repeat_penalty of 1e-30) take logits past float32's range: its ends, not infinities,
        # after each step (inf - inf would be NaN)
        with np.errstate(over="ignore"):
            vals = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
            vals = np.clip(vals, -_FLOAT32_MAX, _FLOAT32_MAX) - counts * p.frequency_penalty - p.presence_penalty
        out[recent] = np.clip(vals, -_FLOAT32_MAX, _FLOAT32_MAX)
        return out

    def _allowed(self, logits: np.ndarray) -> np.ndarray:
        """The ids, ascending, that the grammar allows among those sampling could pick. The grammar judges the tokens
        in bands of falling logits (the best ~256 or ~top-k, then down to 8 and 64 times as many, then all) and stops
        once top-k (greedy: one) allowed tokens are found: every token not judged is worse than all of them, so top-k
        never reaches it. Only top-p / min-p over the whole vocabulary (no top-k) need every token judged."""
        assert self._grammar is not None
        self._grammar.begin_step()
        p, n = self.params, logits.size
        need = 1 if p.temperature <= 0.0 else p.top_k if 0 < p.top_k < n else n
        step, sample = _strided_sample(logits)
        allowed: list[np.ndarray] = []
        found, upper = 0, np.inf
        first = max(_GRAMMAR_CANDIDATES, need)
        for rank in (first, 8 * first, 64 * first, n):
            bound = sample[-(rank // step)] if rank // step < sample.size else -np.inf
            band = np.flatnonzero((logits >= bound) & (logits < upper))
            allowed.append(band[self._grammar.allowed(band)])
            if self._banned.size:
                allowed[-1] = allowed[-1][~np.isin(allowed[-1], self._banned)]
            found += allowed[-1].size
            upper = bound
            if found >= need or bound == -np.inf:
                break
        if not found:
            raise GrammarDeadEnd("the grammar allows no token of the vocabulary after the text so far")
        return np.sort(np.concatenate(allowed))  # ascending: ties between equal logits go to the lower id, as without

    def _candidates(self, logits: np.ndarray) -> np.ndarray:
        """The ids top-k and then top-p keep, best first."""
        p = self.params
        ids: np.ndarray | None = None  # None: the whole vocabulary, not sorted yet
        pool = logits  # the logits top-p normalises over
        if p.top_k > 0:  # also when it keeps every token: a grammar's allowed tokens are summed as top-k sums them
            ids = _best(logits, min(p.top_k, logits.size))
            pool = logits[ids]
        elif p.top_p >= 1.0 and p.min_p > 0.0:
            # min-p alone keeps the tokens within log(min_p) of the best: sort only those
            top = float(logits.max())
            return _best_first(logits, np.flatnonzero(logits >= top + np.log(p.min_p)))
        if p.top_p >= 1.0:
            return ids if ids is not None else np.argsort(-logits, kind="stable")
        top = float(pool.max())
        total = np.exp(pool.astype(np.float64) - top).sum()  # what top-p normalises by: once, for every try below
        if ids is None:
            # the nucleus is usually among the few best tokens; only a flat distribution needs the full sort
            for k in (_NUCLEUS_CANDIDATES, 16 * _NUCLEUS_CANDIDATES):
                kept = self._nucleus(logits, _best(logits, k), top, total) if k < logits.size else None
                if kept is not None:
                    return kept
            ids = np.argsort(-logits, kind="stable")
        kept = self._nucleus(logits, ids, top, total)
        return ids if kept is None else kept

    def _nucleus(self, logits: np.ndarray, ids: np.ndarray, top: float, total: float) -> np.ndarray | None:
        """The shortest prefix of ids (best first) whose probability, exp(logit - top) / total, reaches top_p; None
        when all of ids together do not reach it."""
        cum = np.cumsum(np.exp(logits[ids].astype(np.float64) - top)) / total
        keep = int(np.searchsorted(cum, self.params.top_p)) + 1
        return ids[:keep] if keep <= len(ids) else None

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        logits = np.asarray(logits, dtype=np.float32)
        check_logits(logits)
        logits = self._penalize(self._biased(logits), history)
        if self._grammar is None:
            return self._pick(logits)
        allowed = self._allowed(logits)
        return int(allowed[self._pick(logits[allowed])])

    def _pick(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature <= 0.0:
            return int(np.argmax(logits))
        ids = self._candidates(logits)
        vals = logits[ids].astype(np.float64)
        if p.min_p > 0.0:
            probs = _softmax(vals)
            mask = probs >= p.min_p * probs[0]
            ids, vals = ids[mask], vals[mask]
        # less the best (ids[0]) before dividing: a tiny temperature then gives 0 and -inf, never inf - inf
        with np.errstate(over="ignore"):
            probs = _softmax((vals - vals[0]) / p.temperature)
        return int(ids[self._rng.choice(len(ids), p=probs)])

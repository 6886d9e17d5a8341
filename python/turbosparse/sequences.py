"""Which of a context's sequences (KV caches) each user decodes in, and which tokens each one holds.

Plain bookkeeping, no evaluation: the Model asks claim() before it evaluates for a user (a generation, a
Llama object), and evaluates only the tokens the claimed sequence does not hold yet."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)  # sequences compare by identity
class CachedSequence:
    """One sequence of a context: the tokens whose keys and values it holds, in order, and its user."""

    index: int
    tokens: list[int] = field(default_factory=list)
    n_prompted: int = 0  # tokens at the front whose keys and values a (dense) prompt evaluation computed
    prompt_logits: np.ndarray | None = None  # that evaluation's logits after its last token
    owner: weakref.ref[object] | None = None
    last_used: int = 0

    def continues(self, tokens: Sequence[int]) -> bool:
        """Whether the sequence holds all of tokens but the newest (the next step decodes that one)."""
        n = len(tokens)
        return len(self.tokens) == n - 1 and (n < 2 or self.tokens[-1] == tokens[-2])

    def user(self) -> object | None:
        return self.owner() if self.owner is not None else None

    def is_free(self) -> bool:
        """No user, or one that is gone or finished: its tokens stay for prefix reuse, its place is free."""
        user = self.user()
        return user is None or bool(getattr(user, "done", False))


class SequencePool:
    """n sequences handed to users: a user keeps its sequence while it holds the user's tokens; another one
    takes a free sequence (the one sharing the longest prefix with its tokens), or, when none is free, the
    least recently used one (whose user re-evaluates its tokens when it comes back)."""

    def __init__(self, n: int) -> None:
        self.sequences = [CachedSequence(i) for i in range(n)]
        self._clock = 0

    def owned_by(self, user: object) -> CachedSequence | None:
        for seq in self.sequences:
            if seq.user() is user:
                return seq
        return None

    def claim(
        self, user: object, tokens: Sequence[int], exclude: Sequence[CachedSequence] = ()
    ) -> tuple[CachedSequence, bool]:
        """The sequence user evaluates tokens in, and whether it is the one user had already: its own when it
        still has one, else the best other one, never one in exclude. The caller keeps what the sequence holds of
        tokens and evaluates the rest."""
        self._clock += 1
        seq = self.owned_by(user)
        kept = seq is not None and seq not in exclude
        if not kept:
            candidates = [s for s in self.sequences if s not in exclude]
            if not candidates:
                raise RuntimeError("no sequence left to claim")
            free = [s for s in candidates if s.is_free()]
            if free:
                seq = max(free, key=lambda s: (common_prefix(s.tokens, tokens), -s.last_used))
            else:
                seq = min(candidates, key=lambda s: s.last_used)
            seq.owner = weakref.ref(user)
        assert seq is not None
        seq.last_used = self._clock
        return seq, kept

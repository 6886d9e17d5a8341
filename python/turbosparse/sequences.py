"""Which of a context's sequences (KV caches) each user decodes in, and which tokens each one holds.

Plain bookkeeping, no evaluation: the Model asks claim() before it evaluates for a user (a generation, a
Llama object), and evaluates only the tokens the claimed sequence does not hold yet."""

from __future__ import annotations

import os
import secrets
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from turbosparse.errors import InvalidArgumentError


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

    def running(self) -> bool:
        """An unfinished generation decodes in it (a user without `done`, e.g. a Llama between its calls, is not one:
        it is not free either, but what it holds may be taken from it, to be evaluated again when it comes back)."""
        return getattr(self.user(), "done", True) is False


@dataclass(frozen=True, eq=False)
class SequenceState:
    """What a user's sequence held when Model.save_state saved it: its tokens, how many of them a prompt evaluation
    computed (and that evaluation's logits), and their keys and values as the C library writes them (kv)."""

    tokens: tuple[int, ...]
    n_prompted: int
    prompt_logits: np.ndarray | None
    kv: bytes

    _HEADER = struct.Struct("<4sIqqq")  # magic, version, tokens, n_prompted, logits' length (-1: none)
    MAGIC = b"TSSQ"  # a file's first bytes

    def to_bytes(self) -> bytes:
        logits = b"" if self.prompt_logits is None else np.ascontiguousarray(self.prompt_logits, "<f4").tobytes()
        n_logits = -1 if self.prompt_logits is None else len(self.prompt_logits)
        head = self._HEADER.pack(self.MAGIC, 1, len(self.tokens), self.n_prompted, n_logits)
        return head + np.asarray(self.tokens, "<i4").tobytes() + logits + self.kv

    @classmethod
    def from_bytes(cls, data: bytes) -> SequenceState:
        if len(data) < cls._HEADER.size or data[:4] != cls.MAGIC:
            raise InvalidArgumentError(
                f"not a turbosparse sequence state ({len(data)} bytes without the 'TSSQ' header)"
            )
        _, version, n_tokens, n_prompted, n_logits = cls._HEADER.unpack_from(data)
        if version != 1:
            raise InvalidArgumentError(f"sequence state version {version}, this turbosparse reads 1")
        at = cls._HEADER.size
        end_tokens = at + 4 * n_tokens
        end_logits = end_tokens + 4 * max(n_logits, 0)
        if n_tokens < 0 or not 0 <= n_prompted <= n_tokens or end_logits > len(data):
            raise InvalidArgumentError(f"corrupt sequence state: {n_tokens} tokens, {n_prompted} prompted, "
                                       f"{n_logits} logits in {len(data)} bytes")  # fmt: skip
        tokens = tuple(np.frombuffer(data[at:end_tokens], "<i4").tolist())
        logits = None if n_logits < 0 else np.frombuffer(data[end_tokens:end_logits], "<f4").astype(np.float32)
        return cls(tokens, int(n_prompted), logits, bytes(data[end_logits:]))

    def save(self, path: str | os.PathLike[str]) -> int:
        """Writes the state to path, whole or not at all (a temporary file beside it, renamed at the end); returns the
        bytes written."""
        path = Path(path)
        data = self.to_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{secrets.token_hex(6)}.tmp")  # short: path's name may be as long as names go
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return len(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SequenceState:
        """A state save() wrote (FileNotFoundError; InvalidArgumentError for a file that is not one)."""
        data = Path(path).read_bytes()
        try:
            return cls.from_bytes(data)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{path}: {exc}") from None


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

    def touch(self, seq: CachedSequence) -> None:
        """seq was just used (least recently used sequences are taken first)."""
        self._clock += 1
        seq.last_used = self._clock

    def best_free(self, tokens: Sequence[int], candidates: Sequence[CachedSequence]) -> CachedSequence | None:
        """The free one of candidates sharing the longest prefix with tokens (the least recently used of equals)."""
        free = [s for s in candidates if s.is_free()]
        return max(free, key=lambda s: (common_prefix(s.tokens, tokens), -s.last_used)) if free else None

    def holding(self, user: object, tokens: Sequence[int]) -> CachedSequence | None:
        """The sequence user would evaluate tokens in, as far as that is known without claiming one: its own, else
        the free one claim() would take; None when every sequence serves another user."""
        own = self.owned_by(user)
        return own if own is not None else self.best_free(tokens, self.sequences)

    def claim(
        self,
        user: object,
        tokens: Sequence[int],
        exclude: Sequence[CachedSequence] = (),
        prefer: int | None = None,
    ) -> tuple[CachedSequence, bool]:
        """The sequence user evaluates tokens in, and whether it is the one user had already: its own when it
        still has one, else sequence prefer where it is free, else the best other one, never one in exclude. The
        caller keeps what the sequence holds of tokens and evaluates the rest."""
        self._clock += 1
        seq = self.owned_by(user)
        kept = seq is not None and seq not in exclude
        if not kept:
            candidates = [s for s in self.sequences if s not in exclude]
            if not candidates:
                raise RuntimeError("no sequence left to claim")
            preferred = next((s for s in candidates if s.index == prefer and s.is_free()), None)
            seq = preferred or self.best_free(tokens, candidates) or min(candidates, key=lambda s: s.last_used)
            seq.owner = weakref.ref(user)
        assert seq is not None
        seq.last_used = self._clock
        return seq, kept

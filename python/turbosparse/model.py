"""`Model`: the llama-cpp-python-like face of the engine (tokenize, eval_logits, generate, stats)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from turbosparse._library import set_llama_log_verbosity
from turbosparse.binding import (
    DeviceInfo,
    ExpertStats,
    ModelInfo,
    NativeContext,
    NativeModel,
    SparseMode,
    find_device,
    sparse_mode_named,
)
from turbosparse.chat_template import BuiltinChatTemplate, ChatTemplate
from turbosparse.embeddings import Pooling, file_pooling, normalized, pooled, pooling_named
from turbosparse.errors import (
    ChatTemplateError,
    ContextOverflowError,
    InvalidArgumentError,
    ModelClosedError,
    ModelLoadError,
    SequenceBusyError,
)
from turbosparse.generation import Generation, LogitsHook, StepLogits, StopHook
from turbosparse.grammar import Grammar
from turbosparse.grammar_engine import close_engine
from turbosparse.sampling import SamplingParams
from turbosparse.sequences import CachedSequence, SequencePool, SequenceState, common_prefix
from turbosparse.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SparseName = Literal["off", "predictor", "exact", "groups", "auto"]


def default_threads() -> int:
    """The cores this process may use, capped at 8 (decoding is memory bound beyond that): on Linux those of its
    affinity; on macOS the performance cores, as llama.cpp counts them (a thread on an efficiency core holds up
    the others at every barrier of a graph); elsewhere every core."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        usable = len(os.sched_getaffinity(0))
    else:
        usable = _performance_cores() or os.cpu_count() or 1
    return max(1, min(usable, 8))


def _performance_cores() -> int | None:
    """macOS's count of performance cores (`sysctl hw.perflevel0.physicalcpu`, Apple Silicon), else None."""
    try:
        out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    count = out.stdout.strip()
    return int(count) if out.returncode == 0 and count.isdigit() and int(count) > 0 else None


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


class _Closed:
    """What a closed Model holds instead of its engine: every use raises ModelClosedError."""

    def __init__(self, path: str) -> None:
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> object:
        raise ModelClosedError(f"{self._path}: the model is closed")

    def __setattr__(self, name: str, value: object) -> None:  # a setting (Model.threshold) is a use too
        raise ModelClosedError(f"{self._path}: the model is closed")


class _Teacher:
    """The user of a sequence during eval_logits (the pool tracks users by weak reference)."""


class Model:
    """A GGUF model on the turbosparse engine.

    sparse: "off" (dense), "predictor", "exact", "groups" (the top-k neuron groups of a file converted with
    --groups, in standard ggml ops), or "auto" (predictor if the file has predictors, exact for ReLU-gated FFNs
    without them, dense otherwise).

    device: "cpu" (the file stays memory-mapped), "gpu" (the first GPU ggml has) or a ggml device name
    (turbosparse.devices()): weights, KV cache and graph go there, ops the device lacks fall back to the CPU. A GPU
    runs dense and the grouped route: "predictor" means "groups" there, "exact" is refused.

    n_seq sequences, each with its own KV cache of n_ctx tokens: generations running at the same time (threads,
    open streams, a server's requests) each decode in their own one, and step() advances several of them in one
    forward pass. A Model is safe to share between threads: evaluations run one at a time; a generation whose
    sequence another one took (more generations than sequences) re-evaluates its tokens in another.

    swa_full: a model's sliding-window layers (Gemma 2 and 3) cache every position as its other layers do; by
    default, on the CPU, they cache a window's worth (as llama-server: Gemma 3's KV cache at 32k tokens is a fifth of
    what it would be) and a checkpoint of the window at a prompt's last whole n_batch block, and a prompt then reuses a
    sequence's tokens only where those hold the window of the first new position (a chat's next turn does; a prompt
    branching off further back is evaluated again whole).

    flash_attn: attention through ggml's flash-attention op, as llama.cpp's `-fa on` (faster at long contexts; off by
    default, as in llama_cpp.Llama). type_k / type_v: the KV cache's types by llama.cpp's names (binding.CACHE_TYPES:
    "f16", "q8_0", "q4_0", ...; llama.cpp's -ctk / -ctv); a quantized V cache needs flash_attn.
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
        n_seq: int = 1,
        device: str = "cpu",
        swa_full: bool = False,
        flash_attn: bool = False,
        type_k: str = "f16",
        type_v: str = "f16",
    ) -> None:
        self.path = os.fspath(path)
        for name, value, least in (("n_seq", n_seq, 1), ("n_ctx", n_ctx, 0), ("n_batch", n_batch, 1),
                                   ("n_threads", 1 if n_threads is None else n_threads, 1)):  # fmt: skip
            if value < least:
                raise InvalidArgumentError(f"{name} must be >= {least}, got {value}")
        set_llama_log_verbosity(verbose)
        target = find_device(device)
        probe = NativeModel(self.path, metadata_only=True)
        self.sparse_mode = probe.sparse_mode(sparse_mode_named(sparse), on_cpu=target.is_cpu)  # decided in C
        del probe
        if threshold is not None and self.sparse_mode not in (SparseMode.PREDICTOR, SparseMode.GROUPS):
            logger.warning("%s: the predictor threshold %s has no effect in %s mode (it decides which neurons the "
                           "predictor flags)", self.path, threshold, self.sparse_mode.label)  # fmt: skip
        self._native = NativeModel.for_mode(self.path, self.sparse_mode, device=target.name)
        self.device: DeviceInfo = self._native.device
        self.info: ModelInfo = self._native.info
        if n_ctx > self.info.n_ctx_train:  # taken, as llama.cpp takes it
            logger.warning(
                "%s: n_ctx = %d is past the %d tokens the model was trained on (context_length): text past them may "
                "degrade",
                self.path,
                n_ctx,
                self.info.n_ctx_train,
            )
        n_ctx = self.info.n_ctx_train if n_ctx <= 0 else n_ctx
        self.n_threads = n_threads if n_threads is not None else default_threads()
        self._ctx = NativeContext(
            self._native,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_batch=n_batch,
            sparse_mode=self.sparse_mode,
            threshold=threshold,
            n_seq=n_seq,
            swa_full=swa_full,
            flash_attn=flash_attn,
            type_k=type_k,
            type_v=type_v,
        )
        self._ctx.set_measure_recall(measure_recall)
        self._tokenizer = Tokenizer(self.path, verbose=verbose)
        if self._tokenizer.n_vocab != self.info.n_vocab:  # llama.cpp refuses such a file too
            n_tokens = self._tokenizer.n_vocab
            self._tokenizer.close()
            raise ModelLoadError(
                f"{self.path}: the vocabulary (tokenizer.ggml.tokens) has {n_tokens} tokens but token_embd has "
                f"{self.info.n_vocab} rows: they must match"
            )
        self._n_batch = n_batch
        self._lock = threading.RLock()  # one evaluation at a time; held by a whole non-streaming generation
        self._pool = SequencePool(n_seq)
        # logits buffers reused by every evaluation (read before the lock is released)
        self._prompt_logits = np.empty((n_seq, self.info.n_vocab), dtype=np.float32)
        self._batch_logits = np.empty((n_seq, self.info.n_vocab), dtype=np.float32)
        self._timings = _Timings()
        self._chat_template: ChatTemplate | BuiltinChatTemplate | None = None
        # variables every chat prompt's template is given (llama-server's --chat-template-kwargs)
        self.chat_template_kwargs: dict[str, object] = {}

    def close(self) -> None:
        """Frees the engine and the tokenizer now (waiting for a running evaluation, and for a whole non-streamed
        generation: generate() and finish() hold the model); any later use of the model raises ModelClosedError. Also
        what leaving a `with Model(...) as model:` block does."""
        with self._lock:
            if isinstance(self._tokenizer, _Closed):
                return
            close_engine(self._tokenizer)  # its grammar worker process
            self._tokenizer.close()
            self._ctx = self._native = self._tokenizer = self._pool = _Closed(self.path)  # type: ignore[assignment]

    def __reduce__(self) -> object:
        # copy.copy would share the engine (closing one closes both), pickling cannot carry it
        raise TypeError(f"{self.path}: a Model cannot be copied or pickled: open the file again (Model(path, ...))")

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- properties -------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Tokens each sequence holds."""
        return self._ctx.n_ctx

    @property
    def n_seq(self) -> int:
        return self._ctx.n_seq

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the KV caches of every sequence."""
        return self._ctx.kv_bytes

    @property
    def n_vocab(self) -> int:
        return self.info.n_vocab

    @property
    def sparse_name(self) -> str:
        """The sparse mode in use: "off", "predictor", "exact" or "groups"."""
        return self.sparse_mode.label

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
            raise InvalidArgumentError("eval_logits needs at least one token")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed n_ctx = {self.n_ctx}")
        with self._lock:
            seq, _ = self._pool.claim(_Teacher(), ())
            return self._evaluate(seq, list(tokens), 0, dense_ffn=self.sparse_mode == SparseMode.OFF, logits_all=True)

    @property
    def pooling(self) -> Pooling:
        """The pooling the file asks for its embeddings ({arch}.pooling_type; "none" where it says none)."""
        return file_pooling(self._tokenizer.all_metadata())

    def embed(
        self,
        tokens: Sequence[int],
        *,
        pooling: Pooling | None = None,
        normalize: bool = False,
        user: object | None = None,
    ) -> np.ndarray:
        """llama.cpp's embeddings of tokens evaluated from an empty sequence as a prompt (dense FFN): the final
        norm's output, [len(tokens), n_embd] with pooling "none", else pooled to [n_embd] (embeddings.py; None: the
        file's pooling); normalize: each vector of unit length. user (as evaluate's): its sequence is used, and what
        it held is forgotten; without one, a sequence no running generation holds (SequenceBusyError: none is free)."""
        pooling = self.pooling if pooling is None else pooling_named(pooling)
        if len(tokens) == 0:
            raise InvalidArgumentError("embed needs at least one token")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed n_ctx = {self.n_ctx}")
        with self._lock:
            busy = [] if user is not None else [s for s in self._pool.sequences if s.running()]
            if len(busy) == len(self._pool.sequences):
                raise SequenceBusyError("every sequence holds a running generation: none is free to embed with")
            seq, _ = self._pool.claim(_Teacher() if user is None else user, (), exclude=busy)
            self._empty(seq)
            try:
                rows = self._ctx.embed(list(tokens), all_tokens=pooling != "last", seq=seq.index)
            finally:
                self._ctx.truncate(0, seq.index)  # holds nothing a prompt could take for its own
        vectors = pooled(rows, pooling) if pooling != "last" else rows
        return normalized(vectors) if normalize else vectors

    def evaluate(self, user: object, tokens: Sequence[int], *, logits_from: int | None = None) -> np.ndarray:
        """Logits after tokens, evaluated in user's sequence (any object that can be weakly referenced, e.g. a
        Llama). When the sequence holds all of them but the last, that one decodes (sparse FFN); otherwise they are
        a prompt (dense FFN, keeping what the sequence may reuse: whole n_batch blocks of a prompt evaluation, so that
        a prompt's logits never depend on what ran before). Returns the last token's logits [n_vocab]; with
        logits_from, the rows of tokens[logits_from:] [len(tokens) - logits_from, n_vocab], computed as decoding
        computes them over whatever the sequence holds before them (as llama.cpp's eval: a token loop evaluates only
        its new tokens)."""
        tokens = list(tokens)
        if not tokens:
            raise InvalidArgumentError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed n_ctx = {self.n_ctx}")
        if logits_from is not None and not 0 <= logits_from < len(tokens):
            raise InvalidArgumentError(f"logits_from = {logits_from} is not in [0, {len(tokens)})")
        with self._lock:
            seq, kept = self._pool.claim(user, tokens)
            if logits_from is None and kept and seq.continues(tokens):  # one more token: decode it
                return self._evaluate(seq, tokens, len(tokens) - 1, dense_ffn=False, logits_all=False).copy()
            if logits_from is None:
                return self._prompt(seq, tokens)[0].copy()
            keep = self._ctx.keepable(min(self._reusable(seq, tokens, any_prefix=True), logits_from), seq.index)
            dense = self.sparse_mode == SparseMode.OFF  # every row as decoding computes it
            logits = self._evaluate(seq, tokens, keep, dense_ffn=dense, logits_all=True)
            return logits[logits_from - keep :]

    def save_state(self, user: object, tokens: Sequence[int] = ()) -> SequenceState:
        """What the sequence user evaluates in holds now (as evaluate() picks it: user's own, else the free one sharing
        the longest prefix with tokens), for load_state: its tokens and their keys and values, as llama.cpp's
        llama_state_seq_get_data saves them. Nothing changes hands; SequenceBusyError where every sequence is another
        user's."""
        with self._lock:
            seq = self._pool.holding(user, tokens)
            if seq is None:
                raise SequenceBusyError("no sequence to save: every one is another user's (a running generation, or a "
                                        "Llama or evaluate() user between its calls)")  # fmt: skip
            return self._saved(seq)

    def load_state(self, user: object, state: SequenceState) -> None:
        """Makes the sequence user evaluates in hold what state saved (in this Model, or another of the same file and
        KV cache settings): evaluating tokens that start with state's then computes only the rest. A state that does
        not fit (another cache layout or vocabulary: a model of another shape; more tokens than n_ctx) is refused
        with nothing changed; another model of the very same shape is not told apart (as llama.cpp's states)."""
        self._check_state(state)
        with self._lock:
            seq, _ = self._pool.claim(user, state.tokens)
            self._load(seq, state)

    def save_sequence(self, index: int) -> SequenceState:
        """What sequence index holds (a server's slot), as save_state saves it."""
        with self._lock:
            return self._saved(self._sequence(index))

    def load_sequence(self, index: int, state: SequenceState) -> None:
        """Makes sequence index hold state (as load_state), where no unfinished generation decodes in it
        (SequenceBusyError otherwise); a prompt that starts with state's tokens may then take it."""
        self._check_state(state)
        with self._lock:
            seq = self._free_sequence(index)
            self._load(seq, state)
            seq.owner = None
            self._pool.touch(seq)  # what was just restored is the last a request for other tokens takes

    def clear_sequence(self, index: int) -> int:
        """Drops what sequence index holds, where no unfinished generation decodes in it; returns the tokens dropped."""
        with self._lock:
            seq = self._free_sequence(index)
            n = len(seq.tokens)
            self._empty(seq)
            seq.owner = None
            return n

    def sequence_status(self) -> list[tuple[int, bool]]:
        """Per sequence (a server's slot): the tokens it holds, and whether an unfinished generation decodes in it."""
        with self._lock:
            return [(len(seq.tokens), seq.running()) for seq in self._pool.sequences]

    def _sequence(self, index: int) -> CachedSequence:
        if not 0 <= index < self.n_seq:
            raise InvalidArgumentError(f"sequence {index} out of [0, {self.n_seq})")
        return self._pool.sequences[index]

    def _free_sequence(self, index: int) -> CachedSequence:
        seq = self._sequence(index)
        if seq.running():
            raise SequenceBusyError(f"sequence {index} is in use: an unfinished generation decodes in it")
        return seq

    def _empty(self, seq: CachedSequence) -> None:
        """seq holds nothing (the lock is held)."""
        self._ctx.truncate(0, seq.index)
        seq.tokens, seq.n_prompted, seq.prompt_logits = [], 0, None

    def _saved(self, seq: CachedSequence) -> SequenceState:
        kv = self._ctx.save_seq(seq.index)
        logits = None if seq.prompt_logits is None else seq.prompt_logits.copy()
        return SequenceState(tuple(seq.tokens), seq.n_prompted, logits, kv)

    def _check_state(self, state: SequenceState) -> None:
        if state.prompt_logits is not None and state.prompt_logits.shape != (self.info.n_vocab,):
            raise InvalidArgumentError(
                f"the state's logits have shape {state.prompt_logits.shape}, this model's vocabulary "
                f"{self.info.n_vocab} tokens"
            )

    def _load(self, seq: CachedSequence, state: SequenceState) -> None:
        """state into seq (the lock is held): the C library checks the bytes and refuses with nothing changed."""
        self._ctx.load_seq(state.kv, seq.index, n_tokens=len(state.tokens))
        seq.tokens = list(state.tokens)
        seq.n_prompted = state.n_prompted
        seq.prompt_logits = None if state.prompt_logits is None else state.prompt_logits.copy()

    def _prompt(self, seq: CachedSequence, tokens: list[int], *, any_prefix: bool = False) -> tuple[np.ndarray, int]:
        """The logits after a prompt evaluated in seq (the lock is held), and how many of its tokens seq already held
        (kept, not evaluated). The very prompt seq last evaluated keeps its keys, values and logits (nothing is
        computed); another one keeps what _reusable allows."""
        n = len(tokens)
        if (
            seq.prompt_logits is not None
            and seq.n_prompted == n
            and common_prefix(seq.tokens, tokens) == n
            and self._ctx.keepable(n, seq.index) == n
        ):
            self._ctx.truncate(n, seq.index)
            del seq.tokens[n:]
            return seq.prompt_logits, n
        keep = self._reusable(seq, tokens, any_prefix=any_prefix)
        return self._evaluate(seq, tokens, keep, dense_ffn=True, logits_all=False), keep

    def _reusable(self, seq: CachedSequence, tokens: Sequence[int], *, any_prefix: bool = False) -> int:
        """How many of tokens a prompt evaluation keeps from what seq holds: their common prefix, as far as a
        prompt evaluation computed it, in whole n_batch blocks, never the last token. A prompt is evaluated in
        blocks that start at multiples of n_batch, so the tokens evaluated again are computed exactly as on an empty
        sequence (decoding and other block sizes use kernels that round differently): the same request gives the
        same answer whatever ran before it. any_prefix: the whole common prefix but the last token, however it was
        computed (decoded tokens too). Sliding-window layers caching a window's worth (swa_full off) keep a prefix
        only where their cells or their checkpoint still hold the window of its next position, else nothing."""
        common = min(common_prefix(seq.tokens, tokens), len(tokens) - 1)
        if not any_prefix:
            common = min(common, seq.n_prompted) // self._n_batch * self._n_batch
        return self._ctx.keepable(common, seq.index)

    def _evaluate(
        self,
        seq: CachedSequence,
        tokens: list[int],
        keep: int,
        *,
        dense_ffn: bool,
        logits_all: bool,
    ) -> np.ndarray:
        """Evaluates tokens[keep:] after the first keep tokens seq holds (the lock is held). One token without
        dense_ffn decodes; anything else is a prompt evaluation."""
        # computed as on an empty sequence: what it keeps (blocks of a prompt evaluation) and what it adds
        clean = keep <= seq.n_prompted and keep % self._n_batch == 0
        self._keep_only(seq, keep)
        new = tokens[keep:]
        if len(new) == 1 and not dense_ffn:
            start = time.perf_counter()
            logits = self._ctx.eval(new, dense_ffn=False, logits_all=logits_all, seq=seq.index,
                                    out=None if logits_all else self._prompt_logits[seq.index])  # fmt: skip
            self._timings.decode_seconds += time.perf_counter() - start
            self._timings.decode_tokens += 1
        else:
            try:
                logits = self._eval_blocks(seq, new, dense_ffn=dense_ffn, logits_all=logits_all)
            except BaseException:  # cut short (Ctrl-C between blocks, a failure): seq holds what it kept (nothing
                # where the blocks' sliding-window checkpoints replaced the one the kept tokens needed)
                self._keep_only(seq, self._ctx.keepable(keep, seq.index))
                raise
        seq.tokens = list(tokens)
        if dense_ffn and not logits_all and clean:
            seq.n_prompted, seq.prompt_logits = len(tokens), logits.copy()
        elif dense_ffn and not logits_all:  # after keep, blocks of another start: later prompts keep less
            seq.n_prompted, seq.prompt_logits = min(seq.n_prompted, keep) // self._n_batch * self._n_batch, None
        return logits

    def _keep_only(self, seq: CachedSequence, n: int) -> None:
        """seq holds its first n tokens only (the lock is held; n as truncate() can keep them)."""
        self._ctx.truncate(n, seq.index)
        del seq.tokens[n:]
        if n < seq.n_prompted:
            seq.n_prompted, seq.prompt_logits = n, None

    def _eval_blocks(self, seq: CachedSequence, new: list[int], *, dense_ffn: bool, logits_all: bool) -> np.ndarray:
        """A prompt's tokens appended to seq (the lock is held), one C call per n_batch block, the blocks the C
        library evaluates a longer call in: the same arithmetic, and between the calls Python's signal handlers run,
        so that Ctrl-C stops a long prompt within a block (one call held it off for the whole prompt: half a minute
        for 4000 tokens of the default model), as llama_cpp's blocks do. The last call takes the last two blocks:
        the sliding-window layers' checkpoint goes at the prompt's last whole block, which the library finds in a
        call of more than one token, as in one call for the whole prompt."""
        step = self._n_batch
        rows = np.empty((len(new), self.info.n_vocab), dtype=np.float32) if logits_all else None
        last = self._prompt_logits[seq.index]
        later_blocks = list(range(step, len(new), step))  # where the blocks after the first start
        cuts = [0, *later_blocks[:-1], len(new)]
        for first, end in itertools.pairwise(cuts):
            block = new[first:end]
            start = time.perf_counter()
            out = last if rows is None else rows[first:end]
            self._ctx.eval(block, dense_ffn=dense_ffn, logits_all=logits_all, seq=seq.index, out=out)
            self._timings.prompt_seconds += time.perf_counter() - start
            self._timings.prompt_tokens += len(block)
        return last if rows is None else rows

    # ---- generation -------------------------------------------------------------------------------
    def bounded(self, max_tokens: int | None, prompt_tokens: Sequence[int]) -> int | None:
        """max_tokens as llama-cli's -n and llama-server's max_tokens are taken: a bound, the text also ending where
        the context is full after the prompt (start() itself refuses a max_tokens past that room)."""
        return None if max_tokens is None else min(max_tokens, max(0, self.n_ctx - len(prompt_tokens)))

    def start(
        self,
        prompt_tokens: Sequence[int],
        *,
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
        sequence: int | None = None,
    ) -> Generation:
        """A generation after prompt_tokens, to advance with step(); raises ContextOverflowError when the prompt
        and max_tokens do not fit in a sequence. logprobs: keep each token's log-probability and that many
        alternatives (Generation.token_logprobs); score_prompt: the prompt's too (Generation.prompt_logprobs),
        every position computed as decoding computes it, as eval_logits does (in a sparse mode the prompt is then
        evaluated again as usual, so the generated text stays that of a generation that does not score). grammar: the
        text follows it (Grammar: GBNF, a JSON schema, any JSON). cache_prompt: keep every token of the prompt its
        sequence already holds, generated ones too (llama-server's cache_prompt; a chat's next turn evaluates only
        what is new), where by default only what a prompt evaluation computed is kept, in whole n_batch blocks, so
        that a request's answer never depends on what ran before it (with cache_prompt it can: the kept tokens'
        keys and values may come from decoding, whose kernels round otherwise and, in a sparse mode, skip FFN
        rows). shown_tokens: special tokens whose text the generated text writes (a tool call's markers).
        logits_processor / stopping_criteria: llama_cpp's hooks, called with the evaluated token ids and each step's
        logits (Generation). sequence: the sequence to evaluate in where it is free (llama-server's id_slot), else the
        usual choice; Generation.sequence says which one it took."""
        return Generation(
            self._tokenizer,
            prompt_tokens,
            n_ctx=self.n_ctx,
            sampling=sampling,
            max_tokens=max_tokens,
            stop=stop,
            logprobs=logprobs,
            score_prompt=score_prompt,
            grammar=grammar,
            cache_prompt=cache_prompt,
            shown_tokens=shown_tokens,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            preferred_sequence=sequence,
        )

    def step(self, generations: Sequence[Generation]) -> list[str]:
        """Advances every unfinished generation by one token; returns the text each released ("" for the
        finished ones). Generations whose sequence holds all their tokens but the newest decode together in one
        forward pass; the others first evaluate their prompt (dense FFN). At most n_seq unfinished generations."""
        with self._lock:
            steps = self._forward(generations)
            return [g.take(s) if s is not None else "" for g, s in zip(generations, steps, strict=True)]

    def forward(self, generations: Sequence[Generation]) -> list[StepLogits | None]:
        """step()'s evaluation without its sampling: what each unfinished generation takes next (Generation.take,
        which may then run on another thread, beside the next forward pass; until it has, that generation must not
        be stepped); None for the finished ones."""
        with self._lock:
            return [s if s is None else s.detached() for s in self._forward(generations)]

    def _forward(self, generations: Sequence[Generation]) -> list[StepLogits | None]:
        """Evaluates every unfinished generation's new tokens (the lock is held); the logits are views of buffers
        the next evaluation overwrites."""
        live = [g for g in generations if not g.done]
        if len(live) > self.n_seq:
            raise InvalidArgumentError(
                f"{len(live)} generations at once; this model has {self.n_seq} sequences (n_seq)"
            )
        steps: dict[int, StepLogits] = {}
        decoding: list[tuple[Generation, CachedSequence]] = []
        claimed: list[CachedSequence] = []
        for g in live:
            seq, kept = self._pool.claim(g, g.tokens, exclude=claimed, prefer=g.preferred_sequence)
            claimed.append(seq)
            g.sequence = seq.index
            if g.wants_prompt_logits:
                # scored as eval_logits scores (every position as decoding computes it); then, in a sparse mode,
                # evaluated again as a plain prompt (dense FFN), which the generation goes on from
                dense = self.sparse_mode == SparseMode.OFF
                scored = self._evaluate(seq, g.tokens, 0, dense_ffn=dense, logits_all=True)
                steps[id(g)] = StepLogits(scored[-1] if dense else self._prompt(seq, g.tokens)[0], scored)
            elif kept and seq.continues(g.tokens):
                decoding.append((g, seq))
            else:
                logits, kept = self._prompt(seq, g.tokens, any_prefix=g.cache_prompt)
                g.n_cached = min(kept, g.n_prompt)  # (a displaced generation's own tokens count as its prompt's)
                steps[id(g)] = StepLogits(logits)
        if decoding:
            start = time.perf_counter()
            rows = self._ctx.decode_batch(
                [seq.index for _, seq in decoding],
                [g.tokens[-1] for g, _ in decoding],
                out=self._batch_logits[: len(decoding)],
            )
            self._timings.decode_seconds += time.perf_counter() - start
            self._timings.decode_tokens += len(decoding)
            for i, (g, seq) in enumerate(decoding):
                seq.tokens.append(g.tokens[-1])
                steps[id(g)] = StepLogits(rows[i])
        return [steps.get(id(g)) for g in generations]

    def generate_tokens(
        self, prompt_tokens: Sequence[int], *, max_tokens: int | None, sampling: SamplingParams
    ) -> Iterator[int]:
        """Sampled token ids after the prompt, until an end-of-generation token, max_tokens or a full context."""
        gen = self.start(prompt_tokens, sampling=sampling, max_tokens=max_tokens)
        n = gen.n_prompt
        for _ in self.run(gen, with_empty=True):
            yield from gen.tokens[n:]
            n = len(gen.tokens)

    def run(self, gen: Generation, *, with_empty: bool = False) -> Iterator[str]:
        """Steps gen to its end, yielding the text of each step (steps that release none only when with_empty).
        Closing the iterator early cancels gen, which frees its sequence."""
        try:
            while not gen.done:
                text = self.step([gen])[0]
                if text or with_empty:
                    yield text
        finally:
            if not gen.done:
                gen.cancel()

    def finish(self, gen: Generation) -> str:
        """run(gen)'s whole text, the model held meanwhile: the generations of other threads wait, so that they do not
        take gen's sequence (gen would then evaluate its tokens again as a prompt, dense in a sparse mode, and its
        text would depend on theirs)."""
        with self._lock:
            return "".join(self.run(gen))

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
        grammar: Grammar | str | dict | None = None,
        logit_bias: dict[int, float] | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
    ) -> str | Iterator[str]:
        """Generated text (an iterator of text pieces when stream=True), at most max_tokens tokens and no further than
        the context holds (None: until the context is full or the text ends). A str prompt is tokenized with special
        tokens parsed, as chat prompts need (the model's BOS is added unless the text starts with it: a chat template
        may write it); temperature <= 0 is greedy decoding. grammar: the text follows it
        (e.g. Grammar.json(), Grammar.from_json_schema(schema), Grammar(gbnf); GBNF text or a JSON schema dict as
        they are); logit_bias: token id -> added to its logit."""
        sampling = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            seed=seed,
            logit_bias=logit_bias,
        )
        tokens = self._prompt_tokens(prompt, add_bos) if isinstance(prompt, str) else list(prompt)
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        # a bound, as run's -n: the text also ends where the context is full after the prompt
        gen = self.start(tokens, sampling=sampling, max_tokens=self.bounded(max_tokens, tokens), stop=stops,
                         grammar=grammar)  # fmt: skip
        return self.run(gen) if stream else self.finish(gen)

    @property
    def chat_template(self) -> ChatTemplate | BuiltinChatTemplate:
        """The file's chat template (tokenizer.chat_template); ValueError when it has none."""
        if self._chat_template is None:
            text = self._tokenizer.chat_template
            if text is None:
                raise ChatTemplateError(
                    f"{self.path}: the file has no chat template (tokenizer.chat_template); give one: "
                    "Model.chat_template = ChatTemplate(...), Llama(chat_format='chatml'), --chat-template(-file)"
                )
            self._chat_template = ChatTemplate.for_tokenizer(text, self._tokenizer)
        return self._chat_template

    @chat_template.setter
    def chat_template(self, template: ChatTemplate | BuiltinChatTemplate) -> None:
        self._chat_template = template

    def chat_prompt(
        self,
        messages: Sequence[dict[str, object]],
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, object] | None = None,
        tools: Sequence[Mapping[str, object]] | None = None,
    ) -> str:
        """The prompt text the file's chat template makes of messages ([{"role": ..., "content": ...}]), given
        chat_template_kwargs and over them template_kwargs as variables ({"enable_thinking": False}: Qwen3's), and
        tools (OpenAI's function list), which a built-in template cannot write."""
        template = self.chat_template
        if isinstance(template, BuiltinChatTemplate):  # it has no variables (llama-server without --jinja ignores them)
            if tools:
                raise ChatTemplateError(f"llama.cpp's built-in {template.name} template cannot write tools")
            return template.render(messages, add_generation_prompt=add_generation_prompt)
        variables = self.template_variables(template_kwargs)
        return template.render(messages, add_generation_prompt=add_generation_prompt, variables=variables, tools=tools)

    def template_variables(self, template_kwargs: Mapping[str, object] | None = None) -> dict[str, object]:
        """The variables a chat prompt's template is given: chat_template_kwargs, template_kwargs over them."""
        return {**self.chat_template_kwargs, **(template_kwargs or {})}

    def chat_tokens(
        self,
        messages: Sequence[dict[str, object]],
        *,
        prefill_assistant: bool = False,
        template_kwargs: Mapping[str, object] | None = None,
        tools: Sequence[Mapping[str, object]] | None = None,
    ) -> list[int]:
        """The chat prompt's tokens, ready to generate the assistant's answer: special tokens parsed, and the
        model's BOS added when its vocabulary wants one and the template did not write it. prefill_assistant: a final
        assistant message is continued, not closed (llama-server's prefill): the messages before it are rendered for
        an answer and its text follows. template_kwargs, tools: as chat_prompt's."""
        if prefill_assistant and messages and messages[-1].get("role") == "assistant":
            if len(messages) > 1 and messages[-2].get("role") == "assistant":
                raise InvalidArgumentError("two assistant messages end the conversation: only one is continued")
            if messages[-1].get("tool_calls"):  # llama-server's rule: what follows calls is their results
                raise InvalidArgumentError(
                    "the last message is an assistant's with tool calls, which cannot be continued: add their results"
                )
            prefix = self.chat_prompt(messages[:-1], template_kwargs=template_kwargs, tools=tools)
            text = prefix + str(messages[-1].get("content") or "")
        else:
            text = self.chat_prompt(messages, template_kwargs=template_kwargs, tools=tools)
        return self._prompt_tokens(text, add_bos=True)

    def _prompt_tokens(self, text: str, add_bos: bool) -> list[int]:
        """text's tokens, special tokens parsed, the vocabulary's BOS first when add_bos, and one BOS only where the
        text writes that BOS itself (as a chat template may): llama.cpp's rule, never two."""
        tokens = self.tokenize(text, add_bos=add_bos, special=True)
        if add_bos and self._tokenizer.adds_bos and len(tokens) > 1 and tokens[0] == tokens[1] == self._tokenizer.bos:
            return tokens[1:]
        return tokens

    # ---- statistics -------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The predictor logit threshold in use (neuron j computed when logit_j >= threshold)."""
        return self._ctx.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        with self._lock:
            self._ctx.threshold = value

    @property
    def group_top_k(self) -> list[int]:
        """Groups mode: the neuron groups read per token in each layer (a file converted with --groups sets them)."""
        return self._ctx.group_top_k

    @group_top_k.setter
    def group_top_k(self, value: Sequence[int]) -> None:
        with self._lock:
            self._ctx.group_top_k = value

    def set_measure_recall(self, on: bool) -> None:
        """Predictor mode: also compute every neuron, so stats() can report the predictor's recall."""
        with self._lock:
            self._ctx.set_measure_recall(on)

    def stats(self) -> dict[str, object]:
        """Measured over the tokens decoded (and teacher-forced) since the last reset_stats():

        active_fraction[l]: share of layer l's FFN neurons whose rows were computed (1.0 for a dense FFN);
        nonzero_fraction[l]: share with a non-zero activation (None where the dense path does not count);
        kept_fraction[l]: share of layer l's up and down rows read, (computed + non-zero) / 2 (1.0 for a layer that
        ran dense), and mean_kept_fraction: its mean over the layers (a calibrated file's target is 1 - sparsity);
        predictor_recall[l]: share of truly active neurons the predictor selected (None unless measured);
        rows_read_fraction[l]: share of layer l's gate/up rows a forward pass read, the union over the tokens
        decoded together (equals active_fraction when every step decodes one token);
        plus prompt / decode token counts and speeds.

        Mixture-of-experts models: the shares above are taken within the experts each token was routed to (a token
        reads nothing of the others), rows_read_fraction and predictor_recall are None, and
        expert_histogram[l][e] counts the tokens layer l routed to expert e (every evaluation, prompts too),
        expert_active_fraction[l][e] the share of expert e's neurons computed when decoding (None if never chosen)."""
        with self._lock:
            layers = self._ctx.layer_stats()
            experts = self._ctx.expert_stats()
            timings = self._timings.as_dict()
        if experts:
            return {**self._expert_stats(experts), **timings}
        n_ff = self.info.n_ff

        def share(count: int, total: int) -> float | None:
            return count / total if total else None

        counted = any(s.n_tokens for s in layers)
        active = [share(s.n_computed, s.n_tokens * n_ff) if counted else 1.0 for s in layers]
        kept = [(s.n_computed + s.n_nonzero) / (2 * s.n_tokens * n_ff) if s.n_tokens else 1.0 for s in layers]
        measured = any(s.n_true_active for s in layers)
        return {
            "sparse_mode": self.sparse_name,
            "threshold": self.threshold,
            "n_layer": self.info.n_layer,
            "active_fraction": active,
            "nonzero_fraction": [share(s.n_nonzero, s.n_tokens * n_ff) for s in layers],
            "kept_fraction": kept,
            "mean_kept_fraction": sum(kept) / len(kept),
            "predictor_recall": [share(s.n_true_found, s.n_true_active) for s in layers] if measured else None,
            "rows_read_fraction": [share(s.n_union, s.n_evals * n_ff) if counted else 1.0 for s in layers],
            **timings,
        }

    def _expert_stats(self, experts: list[list[ExpertStats]]) -> dict[str, object]:
        n_ff, n_layer = self.info.n_ff, self.info.n_layer

        def share(count: int, total: int) -> float | None:
            return count / total if total else None

        decoded = [sum(e.n_decoded for e in layer) for layer in experts]
        computed = [sum(e.n_computed for e in layer) for layer in experts]
        nonzero = [sum(e.n_nonzero for e in layer) for layer in experts]
        counted = any(decoded)
        active = [share(c, d * n_ff) if counted else 1.0 for c, d in zip(computed, decoded, strict=True)]
        kept = [(c + z) / (2 * d * n_ff) if d else 1.0 for c, z, d in zip(computed, nonzero, decoded, strict=True)]
        return {
            "sparse_mode": self.sparse_name,
            "threshold": self.threshold,
            "n_layer": n_layer,
            "n_expert": self.info.n_expert,
            "n_expert_used": self.info.n_expert_used,
            "active_fraction": active,
            "nonzero_fraction": [share(z, d * n_ff) for z, d in zip(nonzero, decoded, strict=True)],
            "kept_fraction": kept,
            "mean_kept_fraction": sum(kept) / len(kept),
            "predictor_recall": None,
            "rows_read_fraction": [None] * n_layer,
            "expert_histogram": [[e.n_routed for e in layer] for layer in experts],
            "expert_active_fraction": [[share(e.n_computed, e.n_decoded * n_ff) for e in layer] for layer in experts],
        }

    def reset_stats(self) -> None:
        with self._lock:
            self._timings = _Timings()
            self._ctx.reset_stats()

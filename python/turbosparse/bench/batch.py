"""Batched decoding: tokens/s and FFN rows read when B sequences decode together in one forward pass
(NativeContext.decode_batch), B = 1, 2, 4 ...: what a server with B busy slots gets per step."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from turbosparse._library import set_llama_log_verbosity
from turbosparse.bench.engines import bench_mode
from turbosparse.binding import NativeContext, NativeModel


@dataclass(frozen=True)
class BatchResult:
    batch: int
    tok_s: float  # tokens decoded per second, all sequences together (median over rounds)
    step_ms: float  # one forward pass
    rows_read: float  # share of FFN gate/up rows a forward pass reads (union over the batch), mean over layers
    rows_per_token: float  # share of neurons computed per token, mean over layers


def bench_batch(
    path: Path, *, mode: str, n_threads: int, batches: list[int], steps: int, rounds: int, prompt_tokens: int = 32
) -> list[BatchResult]:
    sparse = bench_mode(mode)
    set_llama_log_verbosity(False)  # ggml's per-tensor repack messages
    model = NativeModel.for_mode(str(path), sparse)
    n_seq = max(batches)
    n_ctx = prompt_tokens + steps * rounds + 8
    ctx = NativeContext(
        model, n_ctx=n_ctx, n_threads=n_threads, n_batch=512, sparse_mode=sparse, threshold=None, n_seq=n_seq
    )
    rng = np.random.default_rng(0)
    n_vocab, n_ff = model.info.n_vocab, model.info.n_ff
    times: dict[int, list[float]] = {b: [] for b in batches}
    rows: dict[int, list[float]] = {b: [] for b in batches}
    per_token: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(rounds):
        for b in batches if r % 2 == 0 else batches[::-1]:
            seqs = list(range(b))
            for s in seqs:  # fresh prompts: every sequence at its own text
                ctx.truncate(0, seq=s)
                ctx.eval(rng.integers(0, n_vocab, prompt_tokens).tolist(), dense_ffn=True, logits_all=False, seq=s)
            logits = ctx.decode_batch(seqs, rng.integers(0, n_vocab, b).tolist())  # warm: the graph is built
            ctx.reset_stats()
            start = time.perf_counter()
            for _ in range(steps):
                logits = ctx.decode_batch(seqs, [int(t) for t in logits.argmax(-1)])
            times[b].append(time.perf_counter() - start)
            stats = ctx.layer_stats()
            if any(s.n_evals for s in stats):
                rows[b].append(float(np.mean([s.n_union / (s.n_evals * n_ff) for s in stats])))
                per_token[b].append(float(np.mean([s.n_computed / (s.n_tokens * n_ff) for s in stats])))
            else:  # a dense FFN reads every row (and counts nothing)
                rows[b].append(1.0)
                per_token[b].append(1.0)
    return [
        BatchResult(
            batch=b,
            tok_s=b * steps / statistics.median(times[b]),
            step_ms=statistics.median(times[b]) / steps * 1000,
            rows_read=statistics.median(rows[b]),
            rows_per_token=statistics.median(per_token[b]),
        )
        for b in batches
    ]

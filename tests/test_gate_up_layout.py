"""A predictor layer's gate and up rows laid side by side in the huge-page copy (model.c: pair_gate_up): the same
logits, prompts and decoded tokens, and the same FFN traces (calibration's view), as the file's own layout read from
the mapping (repack off: no copy). Repack off also leaves ggml's attention matrices in the plain layout, whose kernels
round differently from the repacked ones: the two agree to float rounding, not bit for bit; rows taken from the
wrong place would move the logits by their whole scale."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import FfnTrace, NativeContext, NativeModel, SparseMode

from tinymodel import TinyConfig, random_weights, write_gguf

Q = gguf.GGMLQuantizationType
RANK = 16
DENSE = TinyConfig(n_vocab=384, n_embd=128, n_ff=256, act="drelu")
MOE = TinyConfig(n_vocab=384, n_embd=128, n_ff=256, n_expert=4, n_expert_used=2, act="drelu")


def huge_pages_enabled() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def tiny_file(tmp_path: Path, cfg: TinyConfig, qtype: Q) -> Path:
    path = tmp_path / f"m-{cfg.n_expert}-{qtype.name}.gguf"
    weights = random_weights(cfg, seed=3, predictor_rank=RANK)
    write_gguf(path, cfg, weights, qtype, down_layout="transposed", predictor_qtype=Q.F16)
    return path


def prompt_then_decode(model: NativeModel, toks: list[int], n_threads: int) -> np.ndarray:
    """Logits of every prompt position (the prompt node), then of 6 tokens decoded one at a time (the act node)."""
    ctx = NativeContext(model, n_ctx=128, n_threads=n_threads, n_batch=64, sparse_mode=SparseMode.PREDICTOR,
                        threshold=None, kv_f32=True)  # fmt: skip
    rows = [ctx.eval(toks[:-6], dense_ffn=False, logits_all=True)]
    rows += [ctx.eval([t], dense_ffn=False, logits_all=False)[None] for t in toks[-6:]]
    return np.concatenate(rows)


@pytest.mark.parametrize("cfg", [DENSE, MOE], ids=["dense-ffn", "experts"])
@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q8_0, Q.F16], ids=lambda q: q.name)  # Q8_0, F16: no prompt kernel
def test_side_by_side_gives_the_file_layouts_logits(tmp_path: Path, cfg: TinyConfig, qtype: Q) -> None:
    if not huge_pages_enabled():
        pytest.skip("transparent huge pages are off here: the rows stay in the mapping, nothing is laid side by side")
    path = tiny_file(tmp_path, cfg, qtype)
    paired, mapped = NativeModel(str(path)), NativeModel(str(path), repack=False)
    assert paired.n_gate_up_side_by_side == cfg.n_layer
    assert mapped.n_gate_up_side_by_side == 0
    assert NativeModel(str(path), dense_gate=True).n_gate_up_side_by_side == 0  # exact mode: the gate is dense
    toks = [int(t) for t in np.random.default_rng(5).integers(0, cfg.n_vocab, 20)]
    for n_threads in (1, 3):
        got, want = prompt_then_decode(paired, toks, n_threads), prompt_then_decode(mapped, toks, n_threads)
        assert close(got, want), n_threads
    if cfg.n_expert == 0:  # traces of mixture-of-experts models are refused
        traces = [trace(m, toks) for m in (paired, mapped)]
        assert close(traces[0].gate, traces[1].gate) and close(traces[0].up, traces[1].up)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return float(np.abs(got - want).max()) <= 1e-5 * float(np.abs(want).max())


def trace(model: NativeModel, toks: list[int]) -> FfnTrace:
    ctx = NativeContext(model, n_ctx=128, n_threads=2, n_batch=64, sparse_mode=SparseMode.OFF, threshold=None)
    return ctx.eval_trace(toks)

"""The mixture-of-experts engine against a float64 numpy forward on tiny TurboSparse-Mixtral GGUFs: dense, exact and
predictor modes, quant types, threads, and the loader's errors (no torch: this file also runs under the sanitizers).

Error measure: max |ours - reference| / max |reference| over every position and the whole vocabulary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.errors import ModelLoadError

from tinymodel import TinyConfig, random_weights, reference_logits, write_gguf

Q = gguf.GGMLQuantizationType
REL = 1e-3
CFG = TinyConfig(n_vocab=384, n_embd=64, n_ff=128, n_expert=4, n_expert_used=2, act="drelu")
RANK = 16


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def moe_file(tmp_path: Path, qtype: Q = Q.F32, cfg: TinyConfig = CFG, down_layout: str = "both") -> tuple[Path, dict]:
    path = tmp_path / f"moe-{qtype.name}.gguf"
    weights = random_weights(cfg, seed=1, predictor_rank=RANK)
    pred = Q.F16 if qtype != Q.F32 else None  # rank-16 rows fit no 32-wide block
    return path, write_gguf(path, cfg, weights, qtype, down_layout=down_layout, predictor_qtype=pred)


def decode(
    path: Path, toks: list[int], mode: SparseMode, n_threads: int = 2, dense_gate: bool = False
) -> tuple[np.ndarray, NativeContext]:
    """Logits of toks decoded one at a time (the sparse nodes run for every token)."""
    model = NativeModel(str(path), dense_gate=dense_gate)
    ctx = NativeContext(model, n_ctx=128, n_threads=n_threads, n_batch=64, sparse_mode=mode, threshold=None, kv_f32=1)
    return np.stack([ctx.eval([t], dense_ffn=False, logits_all=False) for t in toks]), ctx


@pytest.mark.parametrize("k", [1, 2, 4], ids=lambda k: f"top{k}")  # 4: every expert chosen
def test_dense_exact_and_predictor_modes_match_reference(tmp_path: Path, k: int) -> None:
    cfg = dataclasses.replace(CFG, n_expert_used=k)
    path, stored = moe_file(tmp_path, cfg=cfg)
    toks = [int(t) for t in np.random.default_rng(3).integers(0, CFG.n_vocab, 24)]
    dense_ref = reference_logits(cfg, stored, toks)
    dense, _ = decode(path, toks, SparseMode.OFF)
    assert rel_error(dense, dense_ref) <= REL
    exact, ctx = decode(path, toks, SparseMode.EXACT)
    assert rel_error(exact, reference_logits(cfg, stored, toks, use_down_t=True)) <= REL
    computed = sum(e.n_computed for layer in ctx.expert_stats() for e in layer)
    assert 0 < computed < len(toks) * cfg.n_layer * k * cfg.n_ff  # rows were skipped
    predicted, ctx = decode(path, toks, SparseMode.PREDICTOR)
    masked_ref = reference_logits(cfg, stored, toks, use_down_t=True, predictor_threshold=0.0)
    assert rel_error(predicted, masked_ref) <= REL
    assert rel_error(predicted, dense_ref) > 10 * REL  # the masks matter
    stats = ctx.expert_stats()
    for layer in stats:
        assert sum(e.n_routed for e in layer) == sum(e.n_decoded for e in layer) == len(toks) * k


def test_sparse_moe_is_deterministic_and_thread_count_agnostic(tmp_path: Path) -> None:
    path, _ = moe_file(tmp_path)
    toks = [int(t) for t in np.random.default_rng(5).integers(0, CFG.n_vocab, 12)]
    first, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=2)
    again, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=2)
    np.testing.assert_array_equal(first, again)
    one, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=1)
    three, _ = decode(path, toks, SparseMode.PREDICTOR, n_threads=3)
    assert rel_error(one, first) <= 1e-5 and rel_error(three, first) <= 1e-5


@pytest.mark.parametrize("mode", [SparseMode.PREDICTOR, SparseMode.EXACT], ids=lambda m: m.name)
def test_a_batch_through_the_sparse_experts_equals_decoding_tokens_one_by_one(tmp_path: Path, mode: SparseMode) -> None:
    """A batch runs the sparse nodes once per expert over the tokens that chose it; one token runs its k chosen
    experts in one node per phase. Both give each token the same logits and count the same rows per expert."""
    path, _ = moe_file(tmp_path, Q.Q4_0, dataclasses.replace(CFG, n_embd=128, n_ff=256))
    toks = [int(t) for t in np.random.default_rng(8).integers(0, CFG.n_vocab, 16)]
    one_by_one, single = decode(path, toks, mode)
    batch = NativeContext(NativeModel(str(path)), n_ctx=128, n_threads=2, n_batch=64, sparse_mode=mode, threshold=None,
                          kv_f32=1)  # fmt: skip
    batched = batch.eval(toks[:1], dense_ffn=False, logits_all=True)  # the first token alone, as decode() runs it
    batched = np.concatenate([batched, batch.eval(toks[1:], dense_ffn=False, logits_all=True)])
    assert rel_error(batched, one_by_one) <= 1e-5
    computed = [[e.n_computed for e in layer] for layer in single.expert_stats()]
    assert computed == [[e.n_computed for e in layer] for layer in batch.expert_stats()]
    assert sum(map(sum, computed)) > 0


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_quant_types_exact_mode_equals_dense(tmp_path: Path, qtype: Q) -> None:
    """Exact mode is the dense result: every quant type, the same weights read through the sparse kernels (only
    transposed downs: the dense path adds the chosen experts' down rows too)."""
    cfg = dataclasses.replace(CFG, n_embd=256, n_ff=512)
    path, _ = moe_file(tmp_path, qtype, cfg, down_layout="transposed")
    toks = [int(t) for t in np.random.default_rng(9).integers(0, cfg.n_vocab, 8)]
    dense, _ = decode(path, toks, SparseMode.OFF)
    exact, _ = decode(path, toks, SparseMode.EXACT)
    assert rel_error(exact, dense) <= 2e-2
    # the experts' gate placed as a dense matrix (repacked where ggml can), as Model loads a file for exact mode
    exact_dense_gate, _ = decode(path, toks, SparseMode.EXACT, dense_gate=True)
    assert rel_error(exact_dense_gate, dense) <= 2e-2


def test_a_prompt_with_only_transposed_downs_matches_reference(tmp_path: Path) -> None:
    """A prompt's experts where the file stores only transposed downs: each expert's rows summed once for all the
    tokens that chose it (row_sums_batch.c), every position against the float64 reference."""
    path, stored = moe_file(tmp_path, down_layout="transposed")
    toks = [int(t) for t in np.random.default_rng(6).integers(0, CFG.n_vocab, 29)]
    ctx = NativeContext(NativeModel(str(path)), n_ctx=64, n_threads=2, n_batch=64, sparse_mode=SparseMode.OFF,
                        threshold=None, kv_f32=1)  # fmt: skip
    logits = ctx.eval(toks, dense_ffn=True, logits_all=True)
    assert rel_error(logits, reference_logits(CFG, stored, toks, use_down_t=True)) <= REL


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)  # the types with prompt kernels
def test_prompts_through_the_experts_prompt_kernel_equal_ggml(tmp_path: Path, qtype: Q) -> None:
    """A prompt's experts: where sparse decoding keeps their gate/up in ggml's plain layout, each chosen expert's rows
    run against the tokens that chose it through the prompt kernel (rows_matmul.c; ggml's mul_mat_id where no kernel
    takes the type); loaded without row-read matrices they are ggml's mul_mat_id. The same quantized tokens: float
    rounding apart the same logits, except where a rounding tips a near-tie of the router or a ReLU (random weights).
    Rows of 3 blocks: quantized token rows of an odd number of 2-byte halves (the scratch's parts stay aligned)."""
    cfg = dataclasses.replace(CFG, n_embd=96, n_ff=512)
    path, _ = moe_file(tmp_path, qtype, cfg)
    toks = [int(t) for t in np.random.default_rng(4).integers(0, cfg.n_vocab, 37)]
    logits = []
    for sparse_rows in (True, False):
        model = NativeModel(str(path), sparse_rows=sparse_rows)
        ctx = NativeContext(model, n_ctx=64, n_threads=3, n_batch=64, sparse_mode=SparseMode.OFF, threshold=None)
        logits.append(ctx.eval(toks, dense_ffn=True, logits_all=True))
    per_position = np.array([rel_error(a, b) for a, b in zip(logits[0], logits[1], strict=True)])
    assert per_position.max() <= 2e-2
    assert np.mean(per_position <= 1e-5) >= 0.8


def load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        NativeModel(str(path))
    return str(info.value)


def test_model_load_errors_name_the_key_or_tensor(tmp_path: Path) -> None:
    weights = random_weights(CFG, seed=1, predictor_rank=RANK)
    no_used = tmp_path / "no-used.gguf"
    write_gguf(no_used, dataclasses.replace(CFG, n_expert=0), weights, extra_kv={"llama.expert_count": 4})
    assert "llama.expert_used_count" in load_error(no_used)
    too_many = tmp_path / "too-many.gguf"
    write_gguf(too_many, dataclasses.replace(CFG, n_expert_used=5), weights)
    assert "llama.expert_used_count = 5" in load_error(too_many)
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, CFG, weights, skip=("blk.1.ffn_up_exps.weight",))
    assert "blk.1.ffn_up_exps.weight" in load_error(missing)
    fewer = tmp_path / "fewer.gguf"
    write_gguf(fewer, dataclasses.replace(CFG, n_expert=3), weights)
    assert "ffn_gate_inp.weight" in load_error(fewer)
    no_fc1 = tmp_path / "no-fc1.gguf"
    ranks = {"turbosparse.predictor_ranks": [RANK] * CFG.n_layer}  # as convert writes them
    write_gguf(no_fc1, CFG, weights, extra_kv=ranks, skip=("blk.1.ffn_pred_fc1_exps.weight",))
    assert "missing tensor 'blk.1.ffn_pred_fc1_exps.weight' (turbosparse.predictor_ranks[1] = 16)" in load_error(no_fc1)
    bad_rank = dict(weights)
    bad_rank["blk.0.ffn_pred_fc2_exps.weight"] = weights["blk.0.ffn_pred_fc2_exps.weight"][:, :, :8].copy()
    write_gguf(tmp_path / "rank.gguf", CFG, bad_rank)
    assert "blk.0.ffn_pred_fc2_exps.weight" in load_error(tmp_path / "rank.gguf")

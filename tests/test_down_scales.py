"""The transposed down's like-scaled output dimensions (convert/down_scales.py): the stored matrix times the stored
per-dimension factor is the original exactly, and a dimension of outsized weights no longer sets its block-mates'
quantization scale."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import NativeContext, NativeModel, SparseMode, quantize
from turbosparse.calibrate.collect import down_column_norms
from turbosparse.constants import TENSOR_FFN_DOWN_T, TENSOR_FFN_DOWN_T_SCALE
from turbosparse.convert.arch.base import ROLE_MATRIX, TensorSpec
from turbosparse.convert.down_scales import scale_down_t_outputs

from tinymodel import TinyConfig, random_weights, write_gguf

Q = gguf.GGMLQuantizationType


def q4_0(x: np.ndarray) -> np.ndarray:
    return gguf.quants.dequantize(quantize(np.ascontiguousarray(x, dtype=np.float32), int(Q.Q4_0)), Q.Q4_0)


def test_outsized_output_dimensions_stop_setting_their_blocks_scale() -> None:
    rng = np.random.default_rng(0)
    down_t = rng.standard_normal((96, 128)).astype(np.float32)  # [n_ff, n_embd]
    down_t[:, ::32] *= 40.0  # one outsized output dimension in every block of 32
    spec = TensorSpec(TENSOR_FFN_DOWN_T.format(0), down_t.shape, ROLE_MATRIX, lambda: down_t.copy(), "test")
    other = TensorSpec("blk.0.ffn_up.weight", (96, 128), ROLE_MATRIX, lambda: down_t.T.copy(), "test")
    specs = scale_down_t_outputs([other, spec], n_layer=1)
    assert [s.name for s in specs] == [other.name, spec.name, TENSOR_FFN_DOWN_T_SCALE.format(0)]
    stored, inverse = specs[1].load(), specs[2].load()
    assert inverse.shape == (128,) and inverse.dtype == np.float32
    assert np.array_equal(np.exp2(np.round(np.log2(inverse))), inverse) and np.ptp(inverse) > 0
    np.testing.assert_array_equal(stored * inverse, down_t)  # powers of two: exact
    plain = np.ones(128, bool)
    plain[::32] = False
    scaled_error = np.linalg.norm((q4_0(stored) * inverse - down_t)[:, plain])
    unscaled_error = np.linalg.norm((q4_0(down_t) - down_t)[:, plain])
    assert scaled_error < 0.3 * unscaled_error, (scaled_error, unscaled_error)


@pytest.mark.parametrize("n_expert", [0, 4])
def test_the_engine_multiplies_the_transposed_downs_products_by_the_stored_factor(
    tmp_path: Path, n_expert: int
) -> None:
    """A file whose transposed down (or experts' transposed downs, one factor per layer) has its output dimensions
    times c and holds 1 / c computes the FFN of the file without them: dense and sparse, one token and a batch."""
    cfg = TinyConfig(act="drelu", n_expert=n_expert, n_expert_used=2 if n_expert else 0)
    weights = random_weights(cfg, seed=6, predictor_rank=8)
    c = np.exp2(np.random.default_rng(1).integers(-4, 5, cfg.n_embd)).astype(np.float32)
    scaled = dict(weights)
    for i in range(cfg.n_layer):
        if n_expert:  # [n_expert, n_embd, n_ff]: down_t's columns are the middle axis
            name = f"blk.{i}.ffn_down_exps.weight"
            scaled[name] = weights[name] * c[None, :, None]
        else:
            name = f"blk.{i}.ffn_down.weight"
            scaled[name] = weights[name] * c[:, None]
        scaled[TENSOR_FFN_DOWN_T_SCALE.format(i)] = 1.0 / c
    plain_path, scaled_path = tmp_path / "plain.gguf", tmp_path / "scaled.gguf"
    write_gguf(plain_path, cfg, weights, down_layout="transposed")
    write_gguf(scaled_path, cfg, scaled, down_layout="transposed")
    rng = np.random.default_rng(2)
    for n_tokens in (1, 3):
        h = rng.standard_normal((n_tokens, cfg.n_embd)).astype(np.float32)
        for mode, dense in ((SparseMode.OFF, True), (SparseMode.EXACT, False), (SparseMode.PREDICTOR, False)):
            out = {}
            for name, path in (("plain", plain_path), ("scaled", scaled_path)):
                ctx = NativeContext(NativeModel(path), n_ctx=64, n_threads=2, n_batch=64, sparse_mode=mode,
                                    threshold=None, kv_f32=True)  # fmt: skip
                out[name] = ctx.eval_ffn(0, h, dense_ffn=dense)
            assert np.abs(out["scaled"] - out["plain"]).max() <= 1e-5 * np.abs(out["plain"]).max(), (mode, n_tokens)
    if not n_expert:  # calibration's |down_j| (thresholds, score scales) reads the products, not the stored rows
        np.testing.assert_allclose(down_column_norms(NativeModel(scaled_path)),
                                   down_column_norms(NativeModel(plain_path)), rtol=1e-6)  # fmt: skip

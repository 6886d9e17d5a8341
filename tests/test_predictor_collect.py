"""Collection: residuals and active masks streamed to disk equal an independent layer-by-layer forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from turbosparse.predictor_train.collect import CollectConfig, Collection, collect
from turbosparse.predictor_train.layers import attention_half, causal_mask, embed, position_embeddings

from tinytorch import tiny_drelu


def reference(model, seqs: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer (residual, active mask, ffn input, ffn output), computed without hooks."""
    out = []
    with torch.no_grad():
        ids = torch.as_tensor(seqs)
        x = embed(model, ids)
        rope, mask = position_embeddings(model, x), causal_mask(x)
        for layer in model.model.layers:
            h = attention_half(layer, x, rope, mask)
            z = layer.post_attention_layernorm(h)
            act = layer.mlp.activation(z)
            y = layer.mlp.down_proj(act)
            out.append((h.flatten(0, 1), (act != 0).flatten(0, 1), z.flatten(0, 1), y.flatten(0, 1)))
            x = h + y
    return out


def test_collection_matches_the_ffn(tmp_path: Path) -> None:
    model = tiny_drelu()
    seqs = np.random.default_rng(0).integers(0, 64, size=(6, 16))
    coll = collect(model, seqs, tmp_path, CollectConfig(batch_size=6, ffn_io=True))
    assert coll.manifest.n_tokens == 96
    for i, (h, active, z, y) in enumerate(reference(model, seqs)):
        np.testing.assert_array_equal(coll.mask(i), active.numpy())
        assert 0.05 < active.float().mean() < 0.95  # a real mix of active and inactive neurons
        np.testing.assert_allclose(coll.residual(i).astype(np.float32), h.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(coll.array(i, "ffn_in").astype(np.float32), z.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(coll.array(i, "ffn_out").astype(np.float32), y.numpy(), rtol=2e-3, atol=2e-3)


def test_batches_stream_in_order_and_a_complete_collection_is_reused(tmp_path: Path) -> None:
    model = tiny_drelu()
    seqs = np.random.default_rng(1).integers(0, 64, size=(5, 8))
    one = collect(model, seqs, tmp_path / "a", CollectConfig(batch_size=5))
    two = collect(model, seqs, tmp_path / "b", CollectConfig(batch_size=2))  # 3 batches, last one short
    for i in range(2):
        np.testing.assert_array_equal(one.mask(i), two.mask(i))
    stamp = (tmp_path / "b" / "layer000.mask.bin").stat().st_mtime_ns
    collect(model, seqs, tmp_path / "b", CollectConfig(batch_size=2))
    assert (tmp_path / "b" / "layer000.mask.bin").stat().st_mtime_ns == stamp
    # another model, or other tokens of the same shape, into the same folder: collected again, not reused
    other = tiny_drelu(seed=1)
    again = collect(other, seqs, tmp_path / "b", CollectConfig(batch_size=2))
    np.testing.assert_array_equal(again.mask(0), reference(other, seqs)[0][1].numpy())
    shifted = (seqs + 1) % 64
    again = collect(other, shifted, tmp_path / "b", CollectConfig(batch_size=2))
    np.testing.assert_array_equal(again.mask(0), reference(other, shifted)[0][1].numpy())


def test_bad_collections_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no collection here"):
        Collection(tmp_path)
    collect(tiny_drelu(), np.zeros((2, 4), dtype=np.int64), tmp_path)
    (tmp_path / "layer001.residual.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"layer001\.residual\.bin: 10 bytes"):
        Collection(tmp_path)
    (tmp_path / "layer001.residual.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing from the collection"):
        Collection(tmp_path)
    with pytest.raises(ValueError, match=r"\[n_seq, seq_len\]"):
        collect(tiny_drelu(), np.zeros(4, dtype=np.int64), tmp_path / "x")

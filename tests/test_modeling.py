"""The torch models of our HF layouts: a dReLU (bamboo) checkpoint round-trips and computes dReLU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from turbosparse.errors import ConvertError
from turbosparse.predictor_train.export import save_bamboo
from turbosparse.predictor_train.modeling import DReluMLP, load_causal_lm, to_drelu


def tiny_llama(tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_bamboo_round_trip(tmp_path: Path, tied: bool) -> None:
    model = to_drelu(tiny_llama(tied), ranks=[8, 16])
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits
        mlp = model.model.layers[0].mlp
        x = torch.randn(3, 64)
        manual = mlp.down_proj(torch.relu(mlp.gate_proj(x)) * torch.relu(mlp.up_proj(x)))
        assert torch.allclose(mlp(x), manual)
    save_bamboo(model, None, tmp_path)
    loaded = load_causal_lm(tmp_path)
    assert isinstance(loaded.model.layers[1].mlp, DReluMLP)
    assert loaded.model.layers[1].mlp.predictor.fc1.weight.shape == (16, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"no config\.json"):
        load_causal_lm(tmp_path)

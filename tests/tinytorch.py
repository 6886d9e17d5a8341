"""Tiny random torch models and a word-level tokenizer for the predictor_train tests (the `train` extra)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from turbosparse.predictor_train.modeling import to_drelu

WORDS = "the a king queen lord lady sword crown night day blood sleep dagger ghost witch castle".split()


def tiny_swiglu(seed: int = 0, layers: int = 2, vocab: int = 64, init: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=init,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def tiny_drelu(seed: int = 0, layers: int = 2, vocab: int = 64, init: float = 0.02) -> LlamaForCausalLM:
    model = to_drelu(tiny_swiglu(seed, layers, vocab, init))
    model.config.hidden_act = "relu"
    return model


def save_word_tokenizer(out_dir: Path) -> None:
    """A word-level tokenizer over WORDS (ids 1..) saved as tokenizer.json in out_dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out_dir)


def word_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
    return " ".join(WORDS[i] for i in idx)

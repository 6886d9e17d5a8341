"""The vocabulary, written as llama.cpp's own HF converter writes it, so llama.cpp's tokenizer reads it unchanged.

- SentencePiece (tokenizer.model, preferred when present): tokenizer model "llama", pre "default"; one entry per
  id up to config vocab_size: the piece's UTF-8 bytes, its score and its type (UNKNOWN / CONTROL / UNUSED / BYTE /
  NORMAL); ids past the model padded as `[PADi]` (score -10000, UNUSED); added_tokens.json entries become
  USER_DEFINED (score -1000); tokenizer_config.json's added_tokens_decoder entries become CONTROL when special or
  special-looking (`<|...|>` and the like), USER_DEFINED otherwise with "▁" turned back into spaces (score -1000).
- SentencePiece saved by transformers (tokenizer.json only, BPE with byte_fallback: Llama 2 and Mistral fine-tunes):
  as its tokenizer.model would be written, scores from the merges' ranks, add_space_prefix as the file prepends "▁".
- Byte-level BPE (tokenizer.json, model BPE over ByteLevel): tokenizer model "gpt2"; the vocabulary's strings by id
  (ids missing from it padded `[PADi]`, UNUSED); added tokens CONTROL when special or special-looking, else
  USER_DEFINED; merges. The pre-tokenizer name is read off tokenizer.json's pre_tokenizer structure (see
  PRE_TOKENIZERS); an unrecognised one is an error naming the structure, unless `pre` names one explicitly.
- Special token ids, add_bos / add_eos and the chat template: gguf-py's SpecialVocab (tokenizer.json,
  tokenizer_config.json, chat_template.jinja, config.json), as llama.cpp's converter does.

llama.cpp's converter obtains the BPE vocabulary through transformers' AutoTokenizer and names the pre-tokenizer
by hashing the tokenization of a probe text; this module reads tokenizer.json directly (no transformers at
conversion time), which gives the same strings for byte-level vocabularies. A tokenizer.json that transformers
rebuilt from a GGUF file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) carries a bare ByteLevel
pre-tokenizer and is named `gpt-2`: for SmolLM2 that drops the digit split of `smollm`, yet llama.cpp tokenizes
identically either way on our 327 probe strings (its vocabulary has no multi-digit tokens); pass `smollm` to
--vocab-pre to keep the original name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from turbosparse.errors import ConvertError

TokenType = gguf.TokenType

_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = _WORDS + r"\p{N}{1,3}" + _REST  # Llama 3: numbers in groups of up to three digits
QWEN2_SPLIT = _WORDS + r"\p{N}" + _REST  # Qwen2: single digits

# tokenizer.json pre_tokenizer, flattened (see _describe) -> llama.cpp's tokenizer.ggml.pre
PRE_TOKENIZERS: dict[tuple[tuple[Any, ...], ...], str] = {
    (("ByteLevel", True),): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",  # SmolLM / SmolLM2 (llama.cpp: the StarCoder regex)
    (("Split", LLAMA3_SPLIT, "Isolated"), ("ByteLevel", False)): "llama-bpe",  # Llama 3
    (("Split", QWEN2_SPLIT, "Isolated"), ("ByteLevel", False)): "qwen2",
}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None  # SentencePiece only
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None  # SentencePiece: written where a tokenizer.json says (llama.cpp: True)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def looks_special(token: str) -> bool:
    """Added tokens some models forget to flag special: <|...|>, <｜...｜>, <pad>, <mask>, <unused...>."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def load_vocab(model_dir: Path, vocab_size: int, pre: str | None = None) -> Vocab:
    """The vocabulary of an HF checkpoint directory, padded to vocab_size (config.json's)."""
    if (model_dir / "tokenizer.model").is_file():
        return _sentencepiece_vocab(model_dir, vocab_size)
    if (model_dir / "tokenizer.json").is_file():
        return _bpe_vocab(model_dir, vocab_size, pre)
    raise ConvertError(f"{model_dir}: no tokenizer.model or tokenizer.json (the vocabulary is needed)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def _sentencepiece_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: not a readable SentencePiece model: {exc}") from None
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    if sp.vocab_size() > vocab_size:
        raise ConvertError(f"{path}: {sp.vocab_size()} pieces but config.json's vocab_size is {vocab_size}")
    for i in range(sp.vocab_size()):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        try:
            piece = sp.IdToPiece(i)
        except UnicodeDecodeError as exc:
            raise ConvertError(f"{path}: piece {i} is not UTF-8: {exc}") from None
        tokens[i], scores[i], types[i] = piece.encode("utf-8"), sp.GetScore(i), int(kind)
    n_bytes = types.count(int(TokenType.BYTE))
    if n_bytes != 256:
        raise ConvertError(
            f"{path}: {n_bytes} of the 256 byte pieces <0x00>..<0xFF> (a model trained without byte_fallback): "
            "llama.cpp's tokenizer falls back to them for text outside the vocabulary, and aborts without them"
        )
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for text, tid in _read_json(added_file).items():
            if isinstance(tid, int) and 0 <= tid < vocab_size:
                tokens[tid], scores[tid], types[tid] = text.encode("utf-8"), -1000.0, int(TokenType.USER_DEFINED)
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        decoder = _read_json(config_file).get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise ConvertError(f"{config_file}: added_tokens_decoder is not an object of id -> token")
        for key, entry in decoder.items():
            tid, text = _added_token(key, entry, config_file)
            if not 0 <= tid < vocab_size:
                continue
            if entry.get("special") or looks_special(text):
                types[tid] = int(TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalized
                types[tid] = int(TokenType.USER_DEFINED)
            tokens[tid], scores[tid] = text.encode("utf-8"), -1000.0
    special = _special_vocab(model_dir, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, scores, special)


def _added_token(tid: object, entry: object, where: Path) -> tuple[int, str]:
    """(id, text) of an added token entry: tokenizer_config.json's added_tokens_decoder (id the key) or
    tokenizer.json's added_tokens (id inside)."""
    content = entry.get("content") if isinstance(entry, dict) else None
    try:
        tid = int(tid)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        tid = None
    if tid is None or not isinstance(content, str):
        raise ConvertError(f"{where}: added token {entry!r}: expected an integer id and a string 'content'")
    return tid, content


def _token_ids(vocab: dict[str, Any], where: Path) -> dict[int, str]:
    """A tokenizer.json model's vocabulary (text -> id) by id."""
    bad = next(((t, i) for t, i in vocab.items() if not isinstance(i, int) or isinstance(i, bool)), None)
    if bad is not None:
        raise ConvertError(f"{where}: vocabulary entry {bad[0]!r} has id {bad[1]!r}, not an integer")
    return {i: t for t, i in vocab.items()}


def _special_vocab(model_dir: Path, **options: Any) -> gguf.SpecialVocab:
    """gguf-py's SpecialVocab; its JSON reads (tokenizer.json, tokenizer_config.json, config.json) raise plain
    ValueErrors on broken files."""
    try:
        return gguf.SpecialVocab(model_dir, **options)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{model_dir}: unreadable tokenizer files: {exc}") from None


def _describe(pre: dict[str, Any] | None) -> tuple[tuple[Any, ...], ...]:
    """A pre_tokenizer as a flat tuple of the facts that decide how it splits text."""
    if not pre:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        return tuple(step for p in pre.get("pretokenizers", []) for step in _describe(p))
    if kind == "ByteLevel":
        return (("ByteLevel", bool(pre.get("use_regex", True))),)
    if kind == "Digits":
        return (("Digits", bool(pre.get("individual_digits", False))),)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (("Split", pattern.get("Regex", pattern.get("String")), pre.get("behavior")),)
    return ((kind, json.dumps(pre, sort_keys=True)),)


def pre_tokenizer_name(tokenizer: dict[str, Any], where: Path) -> str:
    described = _describe(tokenizer.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(described)
    if name is None:
        raise ConvertError(
            f"{where}: pre_tokenizer {described!r} is not one turbosparse recognises "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); name llama.cpp's with --vocab-pre"
        )
    return name


def _bpe_vocab(model_dir: Path, vocab_size: int, pre: str | None) -> Vocab:
    path = model_dir / "tokenizer.json"
    tokenizer = _read_json(path)
    model = tokenizer.get("model")
    if not isinstance(model, dict):
        raise ConvertError(f"{path}: 'model' is not an object (a tokenizer.json's vocabulary)")
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConvertError(f"{path}: model type {model.get('type')!r} is not a BPE vocabulary")
    if model.get("byte_fallback"):
        return _sentencepiece_bpe_vocab(model_dir, vocab_size, tokenizer)
    if pre is None:
        pre = pre_tokenizer_name(tokenizer, path)
    by_id = _token_ids(model["vocab"], path)
    added: dict[int, dict[str, Any]] = {}
    for entry in tokenizer.get("added_tokens") or []:
        tid, by_id[tid] = _added_token(entry.get("id") if isinstance(entry, dict) else None, entry, path)
        added[tid] = entry
    if by_id and max(by_id) >= vocab_size:
        raise ConvertError(f"{path}: token id {max(by_id)} is out of config.json's vocab_size {vocab_size}")
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(TokenType.UNUSED))
            continue
        kind = TokenType.NORMAL
        if i in added:
            if added[i].get("special") or looks_special(text):
                kind = TokenType.CONTROL
            else:
                text = text.replace("\u2581", " ")
                kind = TokenType.USER_DEFINED
        tokens.append(text.encode("utf-8"))
        types.append(int(kind))
    special = _special_vocab(model_dir, load_merges=True)
    if not special.merges:
        raise ConvertError(f"{path}: a BPE vocabulary without merges")
    return Vocab("gpt2", pre, tokens, types, None, special)


def _prepends_space(tokenizer: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts "▁" before the text: a Prepend normalizer (Llama 2's) or a
    Metaspace pre-tokenizer that prepends (Mistral's)."""

    def steps(node: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(node, dict):
            return []
        if node.get("type") != "Sequence":
            return [node]
        inner = node.get(key)
        return [s for s in inner if isinstance(s, dict)] if isinstance(inner, list) else []

    if any(n.get("type") == "Prepend" for n in steps(tokenizer.get("normalizer"), "normalizers")):
        return True
    for step in steps(tokenizer.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            return scheme != "never"
    return False


def _sentencepiece_bpe_vocab(model_dir: Path, vocab_size: int, tokenizer: dict[str, Any]) -> Vocab:
    """A SentencePiece model as transformers saves it, tokenizer.json only (BPE with byte_fallback: Llama 2 and
    Mistral fine-tunes): written as its tokenizer.model would be, tokenizer model "llama". llama.cpp's SentencePiece
    tokenizer merges the adjacent pair whose joined piece scores highest; transformers' conversion listed the merges
    in that order, so a piece scores minus the rank of the merge that makes it (pieces no merge makes: below all)."""
    path = model_dir / "tokenizer.json"
    model = tokenizer["model"]
    by_id = _token_ids(model["vocab"], path)
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise ConvertError(f"{path}: a BPE vocabulary without merges")
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ConvertError(f"{path}: merge {i} ({merge!r}) is not a pair of pieces")
        rank.setdefault(pair[0] + pair[1], i)
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for tid, text in by_id.items():
        if not 0 <= tid < vocab_size:
            raise ConvertError(f"{path}: token id {tid} is out of config.json's vocab_size {vocab_size}")
        kind = TokenType.NORMAL
        if text == model.get("unk_token"):
            kind = TokenType.UNKNOWN
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind = TokenType.BYTE
        tokens[tid], scores[tid], types[tid] = text.encode("utf-8"), -float(rank.get(text, len(merges))), int(kind)
    for entry in tokenizer.get("added_tokens") or []:
        tid, text = _added_token(entry.get("id") if isinstance(entry, dict) else None, entry, path)
        if not 0 <= tid < vocab_size:
            raise ConvertError(f"{path}: added token id {tid} is out of config.json's vocab_size {vocab_size}")
        if entry.get("special") or looks_special(text):
            kind, score = (TokenType.UNKNOWN if text == model.get("unk_token") else TokenType.CONTROL), 0.0
        else:
            kind, score, text = TokenType.USER_DEFINED, -1000.0, text.replace("\u2581", " ")
        tokens[tid], scores[tid], types[tid] = text.encode("utf-8"), score, int(kind)
    special = _special_vocab(model_dir, n_vocab=vocab_size)
    return Vocab("llama", "default", tokens, types, scores, special, add_space_prefix=_prepends_space(tokenizer))

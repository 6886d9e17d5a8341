"""Fill-in-the-middle prompts (llama-server's /infill, for code editors' completions): the code before and after the
cursor around the vocabulary's FIM tokens, with other files' text as context before them.

    [BOS] [REPO]myproject\\n [SEP]file0\\n text0 ... [SEP]filename\\n  [PRE] prefix prompt [SUF] suffix [MID]

The other files are written as the repo-level pattern of Qwen2.5-Coder (arXiv 2409.12186) where the vocabulary has
its repository and file separator tokens, else each after a "--- snippet ---" line. As llama-server sizes them: the
prefix keeps its last tokens up to 3/4 of a batch, the suffix its first up to the quarter left beside the prompt, the
other files' text the context left beside a batch and twice the answer's tokens (their last tokens). Unlike
llama-server: the answer's tokens are the request's n_predict (llama-server's are the server's -n), the whole prompt
is kept within the slot (llama-server's can overflow it), and the BOS comes first, where a model saw it in training
(llama-server puts the other files before it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from turbosparse.errors import InfillNotSupportedError
from turbosparse.tokenizer import Tokenizer

PROJECT = "myproject\n"  # llama-server's repository name, and the current file's name below
CURRENT_FILE = "filename\n"
SNIPPET = "\n\n--- snippet ---\n\n"


@dataclass(frozen=True)
class ExtraFile:
    """Another file's text given as context (llama-server's input_extra chunk)."""

    text: str
    filename: str = "tmp"


def has_fim(tokenizer: Tokenizer) -> bool:
    """Whether the vocabulary has the prefix, suffix and middle tokens."""
    fim = tokenizer.fim
    return fim.prefix is not None and fim.suffix is not None and fim.middle is not None


def fim_tokens(
    tokenizer: Tokenizer,
    prefix: Sequence[int],
    suffix: Sequence[int],
    *,
    context: Sequence[int] = (),
    suffix_first: bool = False,
) -> list[int]:
    """[BOS] context [PRE] prefix [SUF] suffix [MID] (suffix_first: the suffix's part first, as SPM-trained models
    take it); InfillNotSupportedError naming the FIM tokens the vocabulary lacks."""
    fim = tokenizer.fim
    if fim.prefix is None or fim.suffix is None or fim.middle is None:
        missing = [name for name in ("prefix", "suffix", "middle") if getattr(fim, name) is None]
        raise InfillNotSupportedError(
            f"infill is not supported by this model: its vocabulary has no fill-in-the-middle {' / '.join(missing)} "
            "token"
        )
    before, after = [fim.prefix, *prefix], [fim.suffix, *suffix]
    first, second = (after, before) if suffix_first else (before, after)
    return [*([tokenizer.bos] if tokenizer.adds_bos else []), *context, *first, *second, fim.middle]


def infill_tokens(
    tokenizer: Tokenizer,
    prefix: Sequence[int],
    suffix: Sequence[int],
    extra: Sequence[ExtraFile],
    prompt: Sequence[int],
    *,
    n_batch: int,
    n_ctx: int,
    n_predict: int,
    suffix_first: bool = False,
) -> list[int]:
    """The prompt filling the middle between prefix and suffix (token ids; BOS first where the vocabulary adds one),
    prompt written after the prefix, other files' text before them (fim_tokens' errors; suffix_first as there). It
    fits the slot with room for one token at least: a batch wider than the slot counts as the slot, the other files'
    text takes what the prefix, suffix and prompt leave, and where they alone overflow, the prefix's start and then
    the suffix's end are cut."""
    if not has_fim(tokenizer):
        return fim_tokens(tokenizer, prefix, suffix)  # the error naming what is missing
    fim = tokenizer.fim

    def text(value: str) -> list[int]:
        return tokenizer.tokenize(value, add_bos=False, special=False)

    context: list[int] = [fim.repository, *text(PROJECT)] if fim.repository is not None else []
    for file in extra:
        context += [fim.separator, *text(file.filename + "\n")] if fim.separator is not None else text(SNIPPET)
        context += text(file.text)
    if fim.separator is not None:
        context += [fim.separator, *text(CURRENT_FILE)]
    n_batch = min(n_batch, n_ctx)
    n_prefix = min(len(prefix), 3 * (n_batch // 4))
    n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(prompt))))
    fixed = len(prompt) + 3 + int(tokenizer.adds_bos)  # with the three FIM tokens and the BOS
    overflow = fixed + n_prefix + n_suffix + 1 - n_ctx  # one token of room at least
    cut = min(max(overflow, 0), n_prefix)
    n_prefix, n_suffix = n_prefix - cut, max(0, n_suffix - max(overflow - cut, 0))
    room = n_ctx - 1 - (fixed + n_prefix + n_suffix)
    n_context = min(len(context), max(0, min(n_ctx - n_batch - 2 * max(n_predict, 0), room)))
    return fim_tokens(
        tokenizer,
        [*prefix[len(prefix) - n_prefix :], *prompt],
        suffix[:n_suffix],
        context=context[len(context) - n_context :],
        suffix_first=suffix_first,
    )

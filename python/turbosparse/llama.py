"""`turbosparse.Llama`: llama-cpp-python's `llama_cpp.Llama` face over the turbosparse engine, so code written for
llama-cpp-python runs with one import changed. Same constructor names, methods and returned dicts; plus `sparse=`.

Grammars (llama_cpp.LlamaGrammar, turbosparse.Grammar or GBNF text), JSON response formats (json_object, with or
without a schema, and OpenAI's json_schema) and logit_bias work as there; tools as the server's (tool_calls.py: calls
read in the template's own syntax, also for tool_choice "auto"); with embedding=True, embed and create_embedding
(embeddings.py's pooling); token by token, generate and sample (grammars too); logits processors and stopping
criteria there and in the completion methods; tokenizer(); save_state / load_state and set_cache (llama_cpp's
LlamaRAMCache and LlamaDiskCache work as they are); from_pretrained (huggingface-hub); pickling;
create_chat_completion_openai_v1; a completion's suffix fills the middle between the prompt and it where the
vocabulary has FIM tokens (infill.py; llama_cpp 0.3.36 writes token 0 where each FIM token belongs), else is appended
to a whole answer's text (llama_cpp's documented meaning; streamed, it is left out, as llama_cpp's code leaves it).
Not supported (a ValueError says so when asked for): typical_p, tfs_z, mirostat, chat formats other than the file's
template and "chatml", GPU offload (n_gpu_layers is accepted and ignored: the engine runs on the CPU)."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

import numpy as np

from turbosparse.binding import CACHE_TYPES
from turbosparse.chat_template import ChatTemplate
from turbosparse.completions import (
    ChatCompletionChunks,
    CompletionMeta,
    TextCompletionChunks,
    chat_completion,
    text_completion,
    usage,
)
from turbosparse.embeddings import LLAMA_POOLING_TYPES, Pooling, pooling_named
from turbosparse.generation import Generation, LogitsHook, StopHook
from turbosparse.grammar import Grammar
from turbosparse.infill import fim_tokens, has_fim
from turbosparse.logprobs import check_top_count
from turbosparse.logprobs import prompt_text as prompt_text_of
from turbosparse.model import Model, SparseName
from turbosparse.sampling import Sampler, SamplingParams, check_logits
from turbosparse.sequences import SequenceState, common_prefix
from turbosparse.tokenizer import Tokenizer
from turbosparse.tool_calls import ToolUse, functions_as_tools

logger = logging.getLogger(__name__)

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama_cpp's "pick a random seed"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# llama_cpp's logits processor: (input_ids, scores) -> scores; a LogitsProcessorList or a plain list chains them
LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
LLAMA_POOLING_TYPE_UNSPECIFIED = -1  # llama_cpp's "the file's pooling"

# llama_cpp's chat_format="chatml": a system block first (empty without a system message; the first system message
# otherwise), then the user and assistant messages (an empty one as its header alone); stops at <|im_end|> as text
CHATML_TEMPLATE = (
    "{% set system = namespace(content='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set system.content = message['content'] %}{% break %}{% endif %}{% endfor %}"
    "<|im_start|>system\n{{ system.content }}<|im_end|>\n"
    "{% for message in messages %}{% if message['role'] in ['user', 'assistant'] %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] %}{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_STOP = "<|im_end|>"


def _refuse(**options: tuple[Any, Any]) -> None:
    """Raises for options given a value other than their (unsupported-feature) default."""
    for name, (value, default) in options.items():
        if value != default:
            raise ValueError(f"{name}={value!r} is not supported by turbosparse.Llama")


# llama_cpp.Llama's other constructor keywords (and older ones wrappers still pass, as LangChain's n_parts and f16_kv)
# with their defaults there: taken at those; a placement or speed setting (_PLACEMENT) at any value, unused
_LLAMA_CPP_DEFAULTS: dict[str, Any] = {
    "split_mode": 1, "tensor_split": None, "rpc_servers": None, "op_offload": None, "no_perf": False, "numa": False,
    "vocab_only": False, "kv_overrides": None, "rope_scaling_type": -1, "attention_type": -1, "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0, "yarn_ext_factor": -1.0, "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0,
    "yarn_beta_slow": 1.0, "yarn_orig_ctx": 0, "lora_base": None, "lora_scale": 1.0, "lora_path": None,
    "chat_handler": None, "draft_model": None, "tokenizer": None, "n_parts": -1, "f16_kv": True,
}  # fmt: skip
_PLACEMENT = ("split_mode", "tensor_split", "rpc_servers", "op_offload", "no_perf", "numa", "n_parts", "f16_kv")
# rope overrides wrappers pass whatever the model (LangChain: 10000 and 1.0): the file's rope is used, with a warning
_ROPE_OVERRIDES = ("rope_freq_base", "rope_freq_scale")


def _take_llama_cpp_options(options: dict[str, Any]) -> None:
    """llama_cpp.Llama's keywords this class has no use for: a TypeError for a name it does not know either (a typo),
    a ValueError for one that would change the answers (LoRA, vocab_only, ...), unless at its default."""
    unknown = sorted(set(options) - set(_LLAMA_CPP_DEFAULTS))
    if unknown:
        raise TypeError(f"turbosparse.Llama() got an unexpected keyword argument {unknown[0]!r}")
    for name, value in options.items():
        if name in _PLACEMENT or value == _LLAMA_CPP_DEFAULTS[name]:
            continue
        if name in _ROPE_OVERRIDES:
            logger.warning("turbosparse.Llama: %s=%r is ignored: the file's rope parameters are used", name, value)
            continue
        raise ValueError(f"{name}={value!r} is not supported by turbosparse.Llama")


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """messages as chat templates take them: OpenAI's content parts joined into one string by newlines, no content as
    "" (as the server does; llama_cpp.Llama hands both to the template as they are, where they fail)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            kinds = [part.get("type") if isinstance(part, dict) else part for part in content]
            other = [kind for kind in kinds if kind != "text"]
            if other:
                raise ValueError(f"content parts of type {other[0]!r} are not supported (text only)")
            content = "\n".join(str(part.get("text", "")) for part in content)
        out.append({**message, "content": content or ""})
    return out


def _grammar(grammar: Any, response_format: dict[str, Any] | None = None) -> Grammar | None:
    """The grammar a completion follows: its JSON response_format's (which wins, as in llama_cpp), else grammar's (a
    llama_cpp.LlamaGrammar, a turbosparse.Grammar or GBNF text)."""
    from_format = Grammar.from_response_format(response_format)
    if from_format is not None or grammar is None:
        return from_format
    if isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    text, root = getattr(grammar, "_grammar", None), getattr(grammar, "_root", "root")  # llama_cpp.LlamaGrammar's
    if not isinstance(text, str) or not isinstance(root, str):
        raise ValueError(f"grammar must be a llama_cpp.LlamaGrammar, turbosparse.Grammar or GBNF text, not {grammar!r}")
    return Grammar(text, root)


def _processor_chain(
    logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None, n_vocab: int
) -> LogitsHook | None:
    """llama_cpp's logits processors as one hook (None for none): each gets the evaluated ids and the scores and
    returns new scores, in turn (a list, e.g. a LogitsProcessorList, runs its processors in order); -inf bans a token.
    The model's logits are checked first (a processor's bans are not an error) and copied, so that a processor
    changing its input in place leaves them as they are."""
    if logits_processor is None:
        return None
    chain = [logits_processor] if not isinstance(logits_processor, Sequence) else list(logits_processor)
    _check_callables(chain, "logits_processor")

    def processed(input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        check_logits(logits)
        scores = np.array(logits, dtype=np.float32)
        for processor in chain:
            scores = np.asarray(processor(input_ids, scores), dtype=np.float32)
            if scores.shape != (n_vocab,) or np.isnan(scores).any() or np.isposinf(scores).any():
                shape = scores.shape
                raise ValueError(f"logits_processor must return {n_vocab} scores without NaN or +inf, not {shape}")
        return np.maximum(scores, -_FLOAT32_MAX)  # a ban's -inf: a probability of exactly 0

    return processed


def _check_callables(hooks: Sequence[object], name: str) -> None:
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"{name} must be a callable or a list of callables, not {type(hook).__name__}")


def _any_criterion(stopping_criteria: StopHook | Sequence[StopHook] | None) -> StopHook | None:
    """llama_cpp's stopping criteria as one (None for none): a list, e.g. a StoppingCriteriaList, stops where any
    of its criteria says so (each of them asked every time, as there)."""
    if stopping_criteria is None:
        return None
    if not isinstance(stopping_criteria, Sequence):
        _check_callables([stopping_criteria], "stopping_criteria")
        return stopping_criteria
    criteria = list(stopping_criteria)
    _check_callables(criteria, "stopping_criteria")
    return lambda input_ids, logits: any([bool(c(input_ids, logits)) for c in criteria])


def _logit_bias(bias: dict[Any, Any] | None) -> dict[int, float] | None:
    """llama_cpp's reading of logit_bias: keys as ints (JSON gives strings), values as floats."""
    return None if bias is None else {int(token): float(value) for token, value in bias.items()}


def _cache_type_named(type_id: int | None, what: str) -> str:
    """The CACHE_TYPES name of a KV cache's ggml type id (None: F16, llama.cpp's default)."""
    if type_id is None:
        return "f16"
    names = {value: name for name, value in CACHE_TYPES.items()}
    if type_id not in names:
        raise ValueError(f"{what}={type_id} is no KV cache type turbosparse takes ({', '.join(map(str, names))})")
    return names[type_id]


def _detokenize(
    tok: Tokenizer, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
) -> bytes:
    """The bytes of tokens; with prev_tokens, the bytes tokens add after them. As llama_cpp's, a text that starts
    with the BOS token loses one leading space (the space SentencePiece vocabularies put before the first word)."""

    def text_of(ids: list[int]) -> bytes:
        text = b"".join(tok.piece(t, special=special) for t in ids)
        return text[1:] if ids and ids[0] == tok.bos and text.startswith(b" ") else text

    ids = [int(t) for t in tokens]  # a list, or a numpy array such as input_ids[:n_tokens]
    before = [int(t) for t in prev_tokens] if prev_tokens is not None else []
    if before:
        return text_of([*before, *ids])[len(text_of(before)) :]
    return text_of(ids)


@dataclass(eq=False)
class LlamaState:
    """llama_cpp.LlamaState: what Llama.save_state saved. input_ids, n_tokens and seed as the Llama's; scores: with
    logits_all the evaluated positions' rows (scored: which of them eval() filled), else the last evaluated logits
    (one row, or none); llama_state: the sequence's tokens, keys and values (SequenceState's bytes) and
    llama_state_size their length, which llama_cpp's caches count their capacity in."""

    input_ids: np.ndarray
    scores: np.ndarray
    n_tokens: int
    llama_state: bytes
    llama_state_size: int
    seed: int
    scored: np.ndarray | None = None


class LlamaCacheLike(Protocol):
    """What set_cache takes: llama_cpp's BaseLlamaCache (LlamaRAMCache, LlamaDiskCache), states keyed by their tokens,
    the one sharing the longest prefix with a key returned for it (KeyError where none shares a token)."""

    def __getitem__(self, key: Sequence[int]) -> Any: ...

    def __setitem__(self, key: Sequence[int], value: Any) -> None: ...


class LlamaTokenizer:
    """llama_cpp's LlamaTokenizer (what Llama.tokenizer() returns): the Llama's tokenize and detokenize, and str
    forms of them; as there, tokenize and encode parse special tokens by default. It holds the model's tokenizer,
    not the Llama (which holds it: no reference cycle keeping a dropped Llama's model alive)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = True) -> list[int]:
        return self._tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        return _detokenize(self._tokenizer, tokens, prev_tokens, special)

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenize(text.encode("utf-8", errors="ignore"), add_bos=add_bos, special=special)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.detokenize(tokens).decode("utf-8", errors="ignore")


class Llama:
    """A GGUF model with llama_cpp.Llama's methods.

    model_path, n_ctx (0 = the model's), n_batch, n_threads, seed, verbose, chat_format (None: the file's
    template; "chatml"), logits_all, last_n_tokens_size, swa_full, flash_attn, type_k and type_v (ggml type ids, None:
    F16) as llama_cpp.Llama (n_ubatch, offload_kqv, main_gpu taken and unused; n_gpu_layers warned about); sparse and
    threshold as turbosparse.Model. Penalties
    count generated tokens only and each call without a seed draws the next seed from the last, as in llama_cpp."""

    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        logits_all: bool = False,
        chat_format: str | None = None,
        verbose: bool = True,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        use_mlock: bool = False,
        last_n_tokens_size: int = 64,
        embedding: bool = False,
        pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
        n_ubatch: int = 512,
        flash_attn: bool = False,
        offload_kqv: bool = True,
        main_gpu: int = 0,
        type_k: int | None = None,
        type_v: int | None = None,
        swa_full: bool | None = None,
        spm_infill: bool = False,
        sparse: SparseName = "auto",
        threshold: float | None = None,
        **llama_cpp_options: Any,
    ) -> None:
        # the constructor's arguments, which a pickled Llama is made again from (__getstate__): here locals() holds them
        self._arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__", "llama_cpp_options")}
        self._arguments |= llama_cpp_options
        # n_ubatch, offload_kqv and main_gpu change how llama.cpp computes, not what: taken, unused
        _refuse(use_mmap=(use_mmap, True), use_mlock=(use_mlock, False))
        _take_llama_cpp_options(llama_cpp_options)
        if last_n_tokens_size < 0:
            raise ValueError(f"last_n_tokens_size must be >= 0, got {last_n_tokens_size}")
        if n_gpu_layers:
            logger.warning("turbosparse.Llama runs on the CPU: n_gpu_layers=%d is ignored", n_gpu_layers)
        if n_threads_batch is not None and n_threads is not None and n_threads_batch != n_threads:
            logger.warning("turbosparse uses one thread count: n_threads_batch=%d is ignored", n_threads_batch)
        self.model_path = model_path
        self.verbose = verbose
        self._seed = seed
        self.last_n_tokens_size = last_n_tokens_size  # the penalties' window, as llama_cpp's
        self._logits_all = logits_all
        self.spm_infill = spm_infill  # a suffix's fill-in-the-middle prompt puts the suffix first (llama_cpp's name)
        self._model = Model(
            model_path,
            n_threads=n_threads if n_threads is not None else n_threads_batch,
            n_ctx=n_ctx,
            n_batch=n_batch,
            sparse=sparse,
            threshold=threshold,
            verbose=verbose,
            swa_full=True if swa_full is None else swa_full,  # None: llama.cpp's context default, as llama_cpp's
            flash_attn=flash_attn,
            type_k=_cache_type_named(type_k, "type_k"),
            type_v=_cache_type_named(type_v, "type_v"),
        )
        # the text a chat answer stops at besides the user's stops, as llama_cpp's: the format's end of turn, or for
        # the file's template the EOS token's text (a model that writes it out as plain text ends there too)
        if chat_format == "chatml":
            self._model.chat_template = ChatTemplate(CHATML_TEMPLATE)
            self._chat_stops = [CHATML_STOP]
        elif chat_format is None:
            eos = self._model.tokenizer.eos
            eos_text = self._model.tokenizer.piece(eos, special=True).decode("utf-8", "replace") if eos >= 0 else ""
            self._chat_stops = [eos_text] if eos_text else []
        else:
            raise ValueError(f"chat_format={chat_format!r} is not supported: None (the file's template) or 'chatml'")
        self.chat_format = chat_format
        self.metadata: dict[str, str] = self._model.tokenizer.all_metadata()  # as llama_cpp's: the file's keys
        self.tokenizer_ = LlamaTokenizer(self._model.tokenizer)  # llama_cpp's attribute, which some libraries read
        # embed()'s pooling (None: embed() refused): the file's, or as pooling_type says (llama.cpp's numbers)
        self._pooling: Pooling | None = None
        if embedding:
            unspecified = pooling_type == LLAMA_POOLING_TYPE_UNSPECIFIED
            self._pooling = self._model.pooling if unspecified else pooling_named(pooling_type)
        self.n_batch = min(n_batch, self._model.n_ctx)  # as llama_cpp's: a batch never exceeds the context
        self.n_tokens = 0
        self.input_ids = np.zeros(self._model.n_ctx, dtype=np.intc)
        self.scores = np.zeros(
            (self._model.n_ctx if logits_all else self.n_batch, self._model.n_vocab), dtype=np.single
        )
        self._last_logits: np.ndarray | None = None
        self._scored = np.zeros(self._model.n_ctx, dtype=bool)  # which rows of scores hold eval()'s logits
        self.cache: LlamaCacheLike | None = None  # set_cache's

    @property
    def model(self) -> Model:
        """The turbosparse Model underneath."""
        return self._model

    @property
    def n_threads(self) -> int:
        return self._model.n_threads

    def set_seed(self, seed: int) -> None:
        """The seed of the next sampled call (later calls draw theirs from it, as llama_cpp's do)."""
        self._seed = seed

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: str,
        additional_files: Sequence[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        local_dir_use_symlinks: bool | str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Llama:
        """llama_cpp's: the one GGUF file of a Hugging Face repository whose path matches filename (a glob pattern,
        e.g. "*q4_0.gguf"), and of each additional_files pattern (a split model's other parts), downloaded into
        local_dir or the Hugging Face cache (huggingface-hub's hf_hub_download), then opened with kwargs.
        local_dir_use_symlinks is taken for llama_cpp's signature (huggingface-hub no longer reads it)."""
        try:
            from huggingface_hub import HfFileSystem, hf_hub_download
            from huggingface_hub.utils import validate_repo_id
        except ImportError:
            raise ImportError("Llama.from_pretrained needs huggingface-hub: pip install huggingface-hub") from None
        validate_repo_id(repo_id)
        files = [str(PurePosixPath(f["name"] if isinstance(f, dict) else f).relative_to(repo_id))
                 for f in HfFileSystem().ls(repo_id, recursive=True)]  # fmt: skip

        def download(pattern: str) -> str:
            found = [f for f in files if fnmatch.fnmatch(f, pattern)]
            if len(found) != 1:
                which = "No file" if not found else f"{len(found)} files"
                raise ValueError(f"{which} in {repo_id} match {pattern!r}; its files: {json.dumps(files)}")
            path = PurePosixPath(found[0])
            subfolder = None if str(path.parent) == "." else str(path.parent)
            return hf_hub_download(
                repo_id=repo_id, filename=path.name, subfolder=subfolder, local_dir=local_dir, cache_dir=cache_dir
            )

        model_path = download(filename)
        for pattern in additional_files or ():
            download(pattern)
        return cls(model_path, **kwargs)  # the first part of a split model opens the others beside it

    def __getstate__(self) -> dict[str, Any]:
        """What a pickled Llama holds: its constructor's arguments (it opens its file again), with its seed now."""
        return {**self._arguments, "seed": self._seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def close(self) -> None:
        """Frees the model (llama_cpp.Llama.close()); using it afterwards raises ModelClosedError."""
        self._model.close()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def eval_tokens(self) -> deque[int]:
        """The evaluated tokens (llama_cpp's deque of at most n_ctx)."""
        return deque(self.input_ids[: self.n_tokens].tolist(), maxlen=self.n_ctx())

    @property
    def _input_ids(self) -> np.ndarray:
        return self.input_ids[: self.n_tokens]

    @property
    def _scores(self) -> np.ndarray:
        return self.scores[: self.n_tokens, :]

    @staticmethod
    def logits_to_logprobs(logits: np.ndarray | list[float], axis: int = -1) -> np.ndarray:
        """log(softmax(logits)) along axis, in float32 (llama_cpp's)."""
        maxima = np.amax(logits, axis=axis, keepdims=True)
        maxima[~np.isfinite(maxima)] = 0  # infinities as llama_cpp takes them (an infinite row: NaN, -inf elsewhere)
        shifted = np.subtract(logits, maxima, dtype=np.single)
        with np.errstate(divide="ignore", invalid="ignore"):
            return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))

    @staticmethod
    def longest_token_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        return common_prefix(a, b)

    def pooling_type(self) -> int:
        """llama.cpp's number of the pooling: the one asked for (pooling_type=), else the file's."""
        asked = self._arguments["pooling_type"]
        if asked != LLAMA_POOLING_TYPE_UNSPECIFIED:
            return asked
        return next(number for number, name in LLAMA_POOLING_TYPES.items() if name == self._model.pooling)

    # ---- sizes and special tokens --------------------------------------------------------------------
    def n_ctx(self) -> int:
        return self._model.n_ctx

    def n_vocab(self) -> int:
        return self._model.n_vocab

    def n_embd(self) -> int:
        return self._model.info.n_embd

    def token_bos(self) -> int:
        return self._model.tokenizer.bos

    def token_eos(self) -> int:
        return self._model.tokenizer.eos

    def token_nl(self) -> int:
        return self._model.tokenizer.newline

    # ---- tokens -------------------------------------------------------------------------------------
    def tokenizer(self) -> LlamaTokenizer:
        """llama_cpp's tokenizer object for this model (tokenize / detokenize / encode / decode)."""
        return self.tokenizer_

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None, special: bool = False
    ) -> bytes:
        """The bytes of tokens; with prev_tokens, the bytes tokens add after them. As llama_cpp's, a text that starts
        with the BOS token loses one leading space (the space SentencePiece vocabularies put before the first word)."""
        return _detokenize(self._model.tokenizer, tokens, prev_tokens, special)

    # ---- low-level evaluation ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets the evaluated tokens (the next eval starts a new sequence)."""
        self.n_tokens = 0
        self._last_logits = None
        self._scored[:] = False

    def eval(self, tokens: Sequence[int]) -> None:
        """Appends tokens after the n_tokens evaluated ones; with logits_all their logits go to scores."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            return
        end = self.n_tokens + len(tokens)
        if end > self._model.n_ctx:
            raise ValueError(f"Requested tokens ({end}) exceed context window of {self._model.n_ctx}")
        history = [*self.input_ids[: self.n_tokens].tolist(), *tokens]
        logits = self._model.evaluate(self, history, logits_from=self.n_tokens if self._logits_all else None)
        if self._logits_all:
            self.scores[self.n_tokens : end] = logits
            self._scored[self.n_tokens : end] = True
            self._last_logits = logits[-1]
        else:
            self._last_logits = logits
        self.input_ids[self.n_tokens : end] = tokens
        self.n_tokens = end

    @property
    def eval_logits(self) -> list[list[float]]:
        """Logits of the evaluated tokens (every one with logits_all, else the last)."""
        if self._logits_all:
            return self.scores[: self.n_tokens].tolist()
        return [] if self._last_logits is None else [self._last_logits.tolist()]

    # ---- saved states and the prompt cache (llama_cpp's save_state, load_state, set_cache) ----------------
    def save_state(self) -> LlamaState:
        """The evaluated tokens, their logits as kept, the seed, and the keys and values the model holds for them, for
        load_state (on this Llama, or another one of the same file, n_ctx large enough, KV cache settings alike)."""
        n = self.n_tokens
        sequence = self._model.save_state(self, self.input_ids[:n].tolist())
        if self._logits_all:
            scores, scored = self.scores[:n].copy(), self._scored[:n].copy()
        else:
            last = [] if self._last_logits is None else [self._last_logits]
            scores, scored = np.array(last, dtype=np.single).reshape(len(last), self.n_vocab()), None
        data = sequence.to_bytes()
        return LlamaState(self.input_ids.copy(), scores, n, data, len(data), self._seed, scored)

    def load_state(self, state: LlamaState) -> None:
        """Goes back to what save_state saved: the next completion (or eval() of one token, or with logits_all) goes on
        after its tokens without evaluating them again. A state the model cannot hold (a model of another shape, more
        tokens than n_ctx, another KV cache type) is refused with nothing changed."""
        n = int(state.n_tokens)
        if not 0 <= n <= min(len(state.input_ids), self._model.n_ctx):
            raise ValueError(f"the state holds {n} tokens: this Llama's context holds {self._model.n_ctx}")
        kept = self._kept_logits(state, n)
        self._model.load_state(self, SequenceState.from_bytes(state.llama_state))
        self.input_ids[:] = 0
        self.input_ids[:n] = state.input_ids[:n]
        self.n_tokens = n
        self._seed = state.seed
        self._scored[:] = False
        if self._logits_all:
            for i, row in kept.items():
                self.scores[i] = row
                self._scored[i] = True
        last = kept.get(n - 1)
        self._last_logits = None if last is None else self.scores[n - 1] if self._logits_all else last.copy()

    def _kept_logits(self, state: LlamaState, n: int) -> dict[int, np.ndarray]:
        """The logits a state keeps, by position: with logits_all the rows scored marks, else the last position's."""
        rows = np.asarray(state.scores, dtype=np.single)
        scored = getattr(state, "scored", None)  # not in llama_cpp's LlamaState
        if rows.ndim != 2 or rows.shape[1] != self.n_vocab():
            raise ValueError(
                f"the state's scores have shape {rows.shape}: this model's vocabulary has {self.n_vocab()}"
            )
        if scored is not None and len(scored) == len(rows) == n:
            return {int(i): rows[i] for i in np.flatnonzero(scored)}
        return {n - 1: rows[0]} if scored is None and len(rows) == 1 and n else {}

    def set_cache(self, cache: LlamaCacheLike | None) -> None:
        """A prompt cache, as llama_cpp's (e.g. llama_cpp.LlamaRAMCache()): each completion saves its state under its
        evaluated tokens, and one whose prompt shares a longer prefix with a saved state than with what this Llama
        evaluated last goes on from that state. None: no cache."""
        self.cache = cache

    def _restore_from_cache(self, prompt_tokens: list[int]) -> None:
        if self.cache is None:
            return
        try:
            cached = self.cache[prompt_tokens]
        except KeyError:
            return
        held = common_prefix(cached.input_ids[: cached.n_tokens].tolist(), prompt_tokens)
        if held > common_prefix(self.input_ids[: self.n_tokens].tolist(), prompt_tokens):
            self.load_state(cached)

    # ---- token by token (llama_cpp's generate and sample) ------------------------------------------
    def _logits_at(self, idx: int | None) -> np.ndarray:
        """The logits after evaluated position idx (None: the last), as llama.cpp keeps them: every position's with
        logits_all, else the last evaluated one's only."""
        last = self.n_tokens - 1
        idx = last if idx is None else idx
        if 0 <= idx <= last and self._logits_all and self._scored[idx]:
            return self.scores[idx]
        if idx == last and self._last_logits is not None:
            return self._last_logits
        if idx == last:
            raise ValueError("no logits to sample from: eval() the tokens first (a completion leaves none)")
        if not 0 <= idx < last:
            raise ValueError(f"position {idx} is not evaluated (0..{last})")
        if not self._logits_all:
            raise ValueError(f"the logits of position {idx} are not kept (without logits_all only the last one's)")
        raise ValueError(f"the logits of position {idx} are not kept (a completion evaluated it, not eval())")

    def _sample_from(
        self,
        sampler: Sampler,
        history: list[int],
        logits_processor: LogitsHook | None,
        idx: int | None,
    ) -> int:
        """One token by sampler from position idx's logits, through logits_processor (_processor_chain's: the
        evaluated ids and the scores, giving new scores), its penalties over history (the tokens this sampler took,
        as llama.cpp's sampler counts them), which the token then joins."""
        logits = self._logits_at(idx)
        if logits_processor is not None:
            logits = logits_processor(self.input_ids[: self.n_tokens], logits)
        token = sampler.sample(logits, history)
        if sampler.grammar is not None and not self._model.tokenizer.is_end_of_generation(token):
            sampler.grammar.accept(token)  # as llama.cpp's grammar sampler, which takes no end-of-generation token
        history.append(token)
        return token

    def _token_sampler(
        self,
        *,
        top_k: int,
        top_p: float,
        min_p: float,
        typical_p: float,
        temp: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        tfs_z: float,
        mirostat_mode: int,
        grammar: Any,
    ) -> Sampler:
        """sample()'s and generate()'s sampler, from llama_cpp's arguments (what turbosparse lacks refused); a
        grammar (as the completions take it) starts at its beginning."""
        _refuse(typical_p=(typical_p, 1.0), tfs_z=(tfs_z, 1.0), mirostat_mode=(mirostat_mode, 0))
        constraint = _grammar(grammar)
        sampling = self._sampling(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                  presence_penalty=presence_penalty, seed=self._seed, logit_bias=None)  # fmt: skip
        state = constraint.start(self._model.tokenizer) if constraint is not None else None
        return Sampler(sampling, state)  # the Llama's seed as it is (llama_cpp's loops do not draw the next one)

    def sample(
        self,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_eta: float = 0.1,
        mirostat_tau: float = 5.0,
        penalize_nl: bool = True,
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
        grammar: Any = None,
        idx: int | None = None,
    ) -> int:
        """A token sampled from the last evaluated position's logits (idx: another's, with logits_all), as
        llama_cpp.Llama.sample outside generate(): its penalties have no history, a grammar is at its start.
        penalize_nl is taken and unused (llama.cpp's sampler no longer reads it either)."""
        sampler = self._token_sampler(top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                                      repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                      presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                                      grammar=grammar)  # fmt: skip
        return self._sample_from(sampler, [], _processor_chain(logits_processor, self.n_vocab()), idx)

    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        temp: float = 0.80,
        repeat_penalty: float = 1.0,
        reset: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        penalize_nl: bool = True,
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
        stopping_criteria: StopHook | Sequence[StopHook] | None = None,
        grammar: Any = None,
    ) -> Generator[int, Sequence[int] | None, None]:
        """Evaluates tokens and yields sampled tokens without end, as llama_cpp.Llama.generate: each yielded token
        is evaluated when the next is asked for (send() adds tokens after it: a draft, checked position by position
        against what sampling takes there, with logits_all); with reset, the longest prefix of tokens that is already
        evaluated is kept (all of them, sampled from at once, where they are exactly the evaluated tokens), else
        everything is evaluated anew. stopping_criteria(input_ids, logits) ends it when true. The penalties see the
        tokens this call took; a grammar (as the completions take it) holds the tokens it yields from its start,
        allowing end-of-generation tokens only where it is complete (where it allows no token at all, or llama.cpp's
        grammar engine takes too long to say which, a GrammarDeadEnd, a turbosparse.EvalError)."""
        tokens = [int(t) for t in tokens]
        if not tokens and (reset or self.n_tokens == 0):
            raise ValueError("generate() needs tokens (none: reset=False, going on from the evaluated ones)")
        sampler = self._token_sampler(top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p, temp=temp,
                                      repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                      presence_penalty=presence_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                                      grammar=grammar)  # fmt: skip
        processor = _processor_chain(logits_processor, self.n_vocab())  # built once: every token's step runs it
        return self._generate(tokens, sampler, reset, processor, _any_criterion(stopping_criteria))

    def _generate(
        self,
        tokens: list[int],
        sampler: Sampler,
        reset: bool,
        logits_processor: LogitsHook | None,
        stopping_criteria: StopHook | None,
    ) -> Generator[int, Sequence[int] | None, None]:
        if reset and self.n_tokens > 0:
            kept = 0
            for have, want in zip(self.input_ids[: self.n_tokens].tolist(), tokens, strict=False):
                if have != want:
                    break
                kept += 1
            if kept == len(tokens) == self.n_tokens and self._last_logits is not None:
                reset, tokens = False, []  # all evaluated, its logits at hand: sampled from at once
            else:
                if kept == len(tokens):
                    kept -= 1  # the last one evaluated again, for its logits
                if kept > 0:
                    reset, tokens, self.n_tokens = False, tokens[kept:], kept
        if reset:
            self.reset()
        history: list[int] = []
        sample_idx = self.n_tokens + len(tokens) - 1
        while True:
            self.eval(tokens)
            while sample_idx < self.n_tokens:
                token = self._sample_from(sampler, history, logits_processor, sample_idx)
                sample_idx += 1
                if stopping_criteria is not None and stopping_criteria(
                    self.input_ids[:sample_idx], self._logits_at(sample_idx - 1)
                ):
                    return
                sent = yield token
                tokens = [token, *(int(t) for t in (() if sent is None else sent))]
                if sample_idx < self.n_tokens and token != self.input_ids[sample_idx]:
                    self.n_tokens = sample_idx  # the draft went another way from here: evaluated anew
                    break

    # ---- completions -------------------------------------------------------------------------------
    def _sampling(
        self,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
        seed: int | None,
        logit_bias: dict[Any, Any] | None,
    ) -> SamplingParams:
        if seed is None and self._seed not in (-1, LLAMA_DEFAULT_SEED):
            # as llama_cpp: each call draws the next seed from the last one, so that calls differ, reproducibly
            seed = random.Random(self._seed).randint(0, 2**32 - 1)
        if seed is not None:
            self.set_seed(seed)
        if seed in (-1, LLAMA_DEFAULT_SEED):  # llama_cpp's random seed (-1 is the same as a uint32)
            seed = None
        if temperature < 0.0:  # llama_cpp's: the whole distribution as it is (no truncation, temperature 1)
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        return SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            repeat_last_n=self.last_n_tokens_size,
            seed=seed,
            logit_bias=_logit_bias(logit_bias),
            penalize_prompt=False,  # llama_cpp's sampler sees only the tokens it sampled
        )

    def _start(
        self,
        prompt_tokens: list[int],
        max_tokens: int | None,
        sampling: SamplingParams,
        stop: Any,
        logprobs: int | None = None,
        score_prompt: bool = False,
        grammar: Grammar | None = None,
        shown_tokens: frozenset[int] = frozenset(),
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
        stopping_criteria: StopHook | Sequence[StopHook] | None = None,
    ) -> Generation:
        n_ctx = self._model.n_ctx
        if len(prompt_tokens) >= n_ctx:  # as llama_cpp's completions: a prompt filling the context leaves no room
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {n_ctx}")
        self._restore_from_cache(prompt_tokens)
        room = n_ctx - len(prompt_tokens)  # llama_cpp's rule: max_tokens <= 0 or None means "until the context ends"
        limit = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return self._model.start(
            prompt_tokens,
            sampling=sampling,
            max_tokens=limit,
            stop=stops,
            logprobs=logprobs,
            score_prompt=score_prompt,
            grammar=grammar,
            cache_prompt=True,  # as llama_cpp.Llama: the longest prefix its cache holds, generated tokens too
            shown_tokens=shown_tokens,
            logits_processor=_processor_chain(logits_processor, self.n_vocab()),
            stopping_criteria=_any_criterion(stopping_criteria),
        )

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StopHook | Sequence[StopHook] | None = None,
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
        grammar: Any = None,
        logit_bias: dict[int, float] | None = None,
    ) -> dict | Iterator[dict]:
        """A text completion of prompt (text, or token ids), as llama_cpp.Llama.create_completion returns it.
        logprobs: each token's log-probability and that many alternatives (with echo, the prompt's tokens too,
        every position computed as decoding computes it), in llama_cpp's shape; logits_all is not needed for it."""
        if isinstance(logprobs, bool):  # llama_cpp takes a flag as the count it is in Python (True: 1)
            logprobs = int(logprobs)
        check_top_count(logprobs)
        _refuse(
            typical_p=(typical_p, 1.0),
            tfs_z=(tfs_z, 1.0),
            mirostat_mode=(mirostat_mode, 0),
        )
        tokenizer = self._model.tokenizer
        fill_in = suffix is not None and has_fim(tokenizer)  # else the suffix is appended to the text, as llama_cpp's
        if fill_in and echo:
            raise ValueError("echo with a suffix (a fill-in-the-middle prompt) is not supported by turbosparse.Llama")
        if isinstance(prompt, str):
            tokens = self.tokenize(prompt.encode("utf-8"), special=True) if prompt else [self.token_bos()]
            prompt_text = prompt
        else:
            tokens = [int(t) for t in prompt]
            prompt_text = prompt_text_of(tokenizer, tokens)
        if fill_in and suffix is not None:
            before = tokenizer.tokenize(prompt, add_bos=False) if isinstance(prompt, str) else tokens
            after = tokenizer.tokenize(suffix, add_bos=False)
            tokens = fim_tokens(tokenizer, before, after, suffix_first=self.spm_infill)
        sampling = self._sampling(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            seed=seed,
            logit_bias=logit_bias,
        )
        gen = self._start(
            tokens,
            max_tokens,
            sampling,
            stop,
            logprobs,
            echo and logprobs is not None,
            _grammar(grammar),
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
        )
        meta = CompletionMeta.new("cmpl", model or self.model_path)
        chunks = TextCompletionChunks(self._model.tokenizer, meta, gen, prompt_text, echo=echo)
        if stream:
            return self._stream(gen, chunks)
        whole = chunks.whole(self._model.finish(gen))["choices"][0]
        self._evaluated(gen)
        use = usage(gen.n_prompt, gen.n_generated)
        text = whole["text"] + suffix if suffix is not None and not fill_in else whole["text"]
        return text_completion(meta, text, gen.finish_reason, use, whole["logprobs"])

    def embed(
        self,
        input: str | list[str],
        normalize: bool = False,
        truncate: bool = True,
        return_count: bool = False,
    ) -> Any:
        """llama_cpp's embed: each text's embeddings (the final norm's output; with pooling "none" a list per token,
        else one pooled vector; normalize: of unit length), for a str the one text's; truncate: at most n_batch
        tokens per text (else a longer one is a ValueError); return_count: (embeddings, total tokens)."""
        if self._pooling is None:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        texts = [input] if isinstance(input, str) else list(input)
        data, total = [], 0
        for text in texts:
            tokens = self.tokenize(text.encode("utf-8"))
            if truncate:
                tokens = tokens[: self.n_batch]
            if len(tokens) > self.n_batch:
                raise ValueError(f"Requested tokens ({len(tokens)}) exceed batch size of {self.n_batch}")
            total += len(tokens)
            vectors = self._model.embed(tokens, pooling=self._pooling, normalize=normalize, user=self)
            data.append(vectors.tolist())
        self.reset()  # its sequence now holds nothing of what eval() evaluated
        result = data[0] if isinstance(input, str) else data
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> dict:
        """llama_cpp's create_embedding: OpenAI's embedding list of embed()'s vectors (not normalized)."""
        vectors, total = self.embed(input if isinstance(input, list) else [input], return_count=True)
        return {
            "object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "model": model if model is not None else self.model_path,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    def _stream(self, gen: Generation, chunks: TextCompletionChunks | ChatCompletionChunks) -> Iterator[dict]:
        yield from chunks.first()
        for piece in self._model.run(gen, with_empty=gen.logprobs is not None):
            chunk = chunks.piece(piece)
            if chunk is not None:
                yield chunk
        self._evaluated(gen)
        yield chunks.last(gen.finish_reason)

    def _evaluated(self, gen: Generation) -> None:
        """n_tokens and input_ids after a completion, as llama_cpp's: the tokens the model evaluated (not one the
        completion ended on: max_tokens, a stop string), so that eval() goes on after the completion's text. scores
        keep only what eval() wrote. With a cache, the state is saved there under those tokens."""
        tokens = gen.tokens[:-1] if gen.ended_on_new_token else gen.tokens
        self.input_ids[: len(tokens)] = tokens
        self.n_tokens = len(tokens)
        self._last_logits = None
        self._scored[:] = False
        if self.cache is not None:
            self.cache[list(tokens)] = self.save_state()

    def __call__(self, prompt: str | list[int], *args: Any, **options: Any) -> dict | Iterator[dict]:
        """create_completion (its arguments in its order, as llama_cpp's __call__ takes them)."""
        return self.create_completion(prompt, *args, **options)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """create_chat_completion's answer as the openai package's ChatCompletion (a stream: ChatCompletionChunks), as
        llama_cpp's (needs `pip install openai`)."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package: pip install openai") from None
        answer = self.create_chat_completion(*args, **kwargs)
        if kwargs.get("stream", False):
            return (ChatCompletionChunk(**chunk) for chunk in answer)
        return ChatCompletion(**answer)

    def create_chat_completion(
        self,
        messages: list[dict[str, Any]],
        functions: list[Any] | None = None,
        function_call: Any = None,
        tools: list[Any] | None = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: LogitsProcessor | Sequence[LogitsProcessor] | None = None,
        grammar: Any = None,
        logit_bias: dict[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> dict | Iterator[dict]:
        """The assistant's answer to messages, rendered with the chat template, as llama_cpp.Llama returns it."""
        _refuse(
            typical_p=(typical_p, 1.0),
            tfs_z=(tfs_z, 1.0),
            mirostat_mode=(mirostat_mode, 0),
        )
        check_top_count(top_logprobs, "top_logprobs")
        sampling = self._sampling(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            seed=seed,
            logit_bias=logit_bias,
        )
        n_top = (top_logprobs or 0) if logprobs else None
        if functions is not None or function_call is not None:
            tools, tool_choice = functions_as_tools(functions, function_call)
        tool_use = ToolUse.of(self._model, tools, tool_choice)
        constraint = _grammar(grammar, response_format)
        if tool_use.forced:
            constraint = tool_use.grammar()
        prompt = tool_use.prompt_tokens(self._model, _template_messages(messages))
        stops = [*([stop] if isinstance(stop, str) else stop or []), *self._chat_stops]
        gen = self._start(
            prompt,
            max_tokens,
            sampling,
            stops,
            n_top,
            grammar=constraint,
            shown_tokens=tool_use.shown_tokens(self._model),
            logits_processor=logits_processor,
        )
        meta = CompletionMeta.new("chatcmpl", model or self.model_path)
        chunks = ChatCompletionChunks(self._model.tokenizer, meta, gen, tools=tool_use)
        if stream:
            return self._stream(gen, chunks)
        text = self._model.finish(gen)
        self._evaluated(gen)
        use = usage(gen.n_prompt, gen.n_generated)
        content, _, calls = chunks.message(text, gen.finish_reason)
        return chat_completion(meta, content, gen.finish_reason, use, chunks.scores(text, end=True), tool_calls=calls)

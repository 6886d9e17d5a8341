"""`turbosparse run`: generate text from a prompt, streaming to stdout, timings to stderr (llama.cpp's flags)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from turbosparse.binding import CACHE_TYPES, SparseMode, find_device
from turbosparse.chat_template import chat_template_from, checked_variables
from turbosparse.cli.conversation import Conversation, converse, is_utf8, read_message
from turbosparse.cli.llama_server_flags import (
    NO_EFFECT_FLAGS,
    SAMPLER_PARAMETER_FLAGS,
    NoEffectFlag,
    add_no_effect_flags,
    add_unsupported_samplers,
    note_no_effect,
)
from turbosparse.cli.prompt_cache import PromptCache
from turbosparse.default import default_model
from turbosparse.errors import ChatTemplateError, InvalidArgumentError
from turbosparse.generation import Generation
from turbosparse.grammar import Grammar
from turbosparse.model import Model
from turbosparse.sampling import SamplingParams, llama_seed


class NoHubDownloads(argparse.Action):
    """llama.cpp's -hf REPO, refused by name (argparse read `-hf` as -h: the help, and exit 0)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        parser.error(f"{option_string} {values}: models are not downloaded here (no Hugging Face hub access); give "
                     "a local GGUF file with -m")  # fmt: skip


# llama-cli's flags that change nothing here: llama-server's that llama-cli shares, and its own (the shape of
# llama_server_flags.NO_EFFECT_FLAGS); taken, so that a llama-cli command line runs, and named in a note
_SHARED_WITH_LLAMA_SERVER = ("--jinja", "--no-jinja", "-tb", "-ub", "--no-mmap", "--mlock", "--no-warmup",
                             "--log-disable")  # fmt: skip
LLAMA_CLI_NO_EFFECT: tuple[NoEffectFlag, ...] = (
    *(f for f in NO_EFFECT_FLAGS if f[0][0] in _SHARED_WITH_LLAMA_SERVER),
    *SAMPLER_PARAMETER_FLAGS,
    (("-co", "--color"), "?", "the text is not coloured", False),
    (("--simple-io",), 0, "stdin and stdout are plain streams already", False),
    (("-no-perf", "--no-perf"), 0, "the timings are one line on stderr", False),
    (("--verbose-prompt",), 0, "the prompt's tokens are not listed", True),
    (("-mli", "--multiline-input"), 0, "-cnv joins a line ending in \\ with the next", True),
    (("-sp", "--special"), 0, "special tokens are not printed", True),
)  # fmt: skip


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that load a model."""
    p.add_argument("-m", "--model", required=True, help="GGUF file, or 'default' for the README's default model")
    p.add_argument("-hf", "-hfr", "--hf-repo", action=NoHubDownloads, metavar="REPO",
                   help="llama.cpp's download from Hugging Face: not here (no hub); -m takes a local GGUF")  # fmt: skip
    p.add_argument(
        "-t", "--threads", type=thread_count, default=None,
        help="CPU threads (default, or 0 / -1 as llama.cpp takes them: all cores, at most 8)",
    )  # fmt: skip
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context length in tokens (0 = the model's)")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="tokens per prompt-evaluation batch")
    p.add_argument(
        "--sparse",
        choices=[mode.label for mode in SparseMode],
        default="auto",
        help="FFN sparsity while decoding (auto: predictor if the file has predictors, exact for ReLU FFNs and "
        "calibrated files, else off; groups: the top-k neuron groups of a file converted with --groups)",
    )
    p.add_argument("--threshold", type=float, default=None, help="predictor logit threshold (default: the file's)")
    p.add_argument(
        "-dev",
        "--device",
        type=_device_named,
        default="cpu",
        help="where weights and graph go: cpu (or none, as llama.cpp names it), gpu (the first GPU ggml has) or a ggml "
        "device name such as Vulkan0 (a GPU runs dense and --sparse groups; predictor means groups there)",
    )
    p.add_argument(
        "--swa-full",
        action="store_true",
        help="sliding-window layers (Gemma) cache every position, as the others: any prefix of the context can be "
        "reused, for more memory (default: a window's worth, as llama-server)",
    )
    add_attention_args(p)
    p.add_argument(
        "-v", "--verbose", "--log-verbose", action="store_true", help="show llama.cpp's and turbosparse's log"
    )


def _device_named(name: str) -> str:
    """--device's value: llama.cpp's "none" (nothing offloaded) is the CPU."""
    return "cpu" if name == "none" else name


def add_attention_args(p: argparse.ArgumentParser, default_flash_attn: str = "auto") -> None:
    """llama.cpp's flash-attention and KV cache type flags (read back by attention_kwargs)."""
    p.add_argument(
        "-fa", "--flash-attn", nargs="?", const="on", default=default_flash_attn, type=flash_attn_setting,
        metavar="on|off|auto",
        help="attention through ggml's flash-attention op: faster at long contexts, "
        f"needed by a quantized V cache; auto: on for a model on the CPU (default: {default_flash_attn})",
    )  # fmt: skip
    for flag, short, which in (("--cache-type-k", "-ctk", "K"), ("--cache-type-v", "-ctv", "V")):
        p.add_argument(short, flag, default="f16", choices=list(CACHE_TYPES),
                       help=f"the {which} cache's type, as llama.cpp's (default: f16)")  # fmt: skip


def flash_attn_setting(value: str) -> str:
    """-fa's value as llama.cpp reads it: on (also enabled, true, 1), off (disabled, false, 0) or auto (-1)."""
    for setting, names in (("on", ("on", "enabled", "true", "1")), ("off", ("off", "disabled", "false", "0")),
                           ("auto", ("auto", "-1"))):  # fmt: skip
        if value in names:
            return setting
    raise argparse.ArgumentTypeError(f"unknown value {value!r}: on, off or auto")


def attention_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Model's flash_attn, type_k and type_v as the flags of add_attention_args say. auto is on where the model runs
    on the CPU, as llama.cpp's auto where the device runs the op: a GPU's backend may lack it (ggml would then copy
    the cache to the CPU each step), unless a quantized V cache needs it."""
    flash_attn = args.flash_attn == "on"
    if args.flash_attn == "auto":
        quantized_v = args.cache_type_v not in ("f32", "f16", "bf16")
        flash_attn = quantized_v or find_device(args.device).is_cpu
    return {"flash_attn": flash_attn, "type_k": args.cache_type_k, "type_v": args.cache_type_v}


def add_chat_template_args(p: argparse.ArgumentParser) -> None:
    """llama-server's and llama-cli's chat template flags (read back by chat_template_text)."""
    template = p.add_mutually_exclusive_group()
    template.add_argument(
        "--chat-template",
        default=None,
        help="a Jinja2 chat template replacing the file's, or the name of one of llama.cpp's built-in ones (chatml, "
        "llama3, gemma, mistral-v7, phi3, ...)",
    )
    template.add_argument("--chat-template-file", type=Path, default=None, help="... read from this file")
    p.add_argument(
        "--chat-template-kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help="variables for the Jinja2 chat template, as llama-server's: '{\"enable_thinking\": false}' turns "
        "Qwen3's thinking off",
    )


def thread_count(text: str) -> int | None:
    """-t's value: a count, or (0 or below, llama.cpp's "as many as the machine has") None, the default."""
    count = int(text)
    return count if count > 0 else None


def json_object(text: str) -> dict[str, object]:
    """--chat-template-kwargs's value: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'a JSON object is expected ({{"name": value, ...}}), got {text!r}')
    try:
        return checked_variables(value)
    except ChatTemplateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def chat_template_text(args: argparse.Namespace) -> str | None:
    """The chat template the flags give (a file's text, or --chat-template's), None for the model file's own."""
    return read_utf8(args.chat_template_file) if args.chat_template_file is not None else args.chat_template


def model_path(name: str) -> str:
    return default_model() if name == "default" else name


def read_text_as_llama_cpp(path: Path, error: type[Exception] = InvalidArgumentError) -> str:
    """A text to score or calibrate on, as llama.cpp's tools read a file: its bytes ("\r\n" kept, not universal
    newlines), bytes that are not UTF-8 replaced; error, naming the file, where it cannot be read."""
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            return f.read()
    except OSError as exc:
        raise error(f"{path}: cannot read the text: {exc.strerror or exc}") from None


def read_utf8(path: Path, newline: str | None = None) -> str:
    """A text file given on the command line (a prompt, a chat template): UTF-8, or an error naming the file;
    newlines translated (a CRLF file reads as "\n") unless newline="" keeps them."""
    try:
        with path.open(encoding="utf-8", newline=newline) as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}: {exc.reason})"
        ) from None


_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "'": b"'", '"': b'"', "\\": b"\\"}
_HEX = "0123456789abcdefABCDEF"


def process_escapes(text: str) -> str:
    """llama-cli's -e (on by default): \\n \\r \\t \\' \\" \\\\ in command-line text become those characters and
    \\xHH the byte HH (bytes that together are UTF-8 make its character); any other backslash stays."""
    out, i = bytearray(), 0
    while i < len(text):
        nxt, digits = text[i + 1 : i + 2], text[i + 2 : i + 4]
        if text[i] == "\\" and nxt in _ESCAPES:
            out += _ESCAPES[nxt]
            i += 2
        elif text[i] == "\\" and nxt == "x" and len(digits) == 2 and all(d in _HEX for d in digits):
            out.append(int(digits, 16))
            i += 4
        else:
            out += text[i].encode("utf-8", errors="surrogateescape")  # argv: bytes that were not UTF-8
            i += 1
    return out.decode("utf-8", errors="replace")


def logit_bias_arg(text: str) -> tuple[int, float]:
    """llama-cli's -l TOKEN_ID(+|-)BIAS, e.g. 15043+1 or 2-inf."""
    for at, sign in enumerate(text):
        if sign in "+-" and at > 0:
            try:
                token, bias = int(text[:at]), float(text[at + 1 :])
            except ValueError:
                break
            if token >= 0 and bias == bias:
                return token, bias if sign == "+" else -bias
            break
    raise argparse.ArgumentTypeError(f"expected TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf), got {text!r}")


def read_prompt_file(path: Path) -> str:
    """A prompt file as llama-cli reads it: its bytes as they are (UTF-8), less one final newline."""
    text = read_utf8(path, newline="")
    return text[:-1] if text.endswith("\n") else text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="generate text from a prompt", description=__doc__)
    add_model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", default="", help="prompt text")
    src.add_argument("-f", "--file", type=Path, help="read the prompt from this file")
    p.add_argument(
        "-n",
        "--n-predict",
        "--predict",
        type=int,
        default=-1,
        help="tokens to generate, at most (-1 = until the end of text or a full context)",
    )
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("-s", "--seed", type=int, default=-1, help="random seed (-1 = random)")
    p.add_argument("-l", "--logit-bias", type=logit_bias_arg, action="append", default=[], metavar="TOKEN_ID(+|-)BIAS")
    p.add_argument("--ignore-eos", action="store_true", help="never end the text (end-of-generation tokens banned)")
    p.add_argument("-r", "--reverse-prompt", "--stop", dest="stop", action="append", default=[],
                   help="stop string: the text ends with it, shown as llama-cli shows it (-cnv: not kept)")  # fmt: skip
    p.add_argument(
        "-e",
        "--escape",
        action="store_true",
        default=True,
        help="process \\n, \\t, \\xHH... in the prompt and -r (default)",
    )
    p.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt and -r as they are")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the model's chat template "
                   "(without -p / -f: the message is read from stdin)")  # fmt: skip
    p.add_argument("-st", "--single-turn", action="store_true",
                   help="one chat turn: as --chat; with -cnv, the chat ends after the first answer")  # fmt: skip
    p.add_argument("-no-cnv", "--no-conversation", action="store_true", help="a plain completion (the default)")
    # llama-cli's GPU option: placement here is --device
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", type=int, default=None,
                   help="llama-cli's; taken, no effect (placement is --device)")  # fmt: skip
    p.add_argument(
        "-cnv",
        "--conversation",
        action="store_true",
        help="chat in turns (llama-cli's conversation mode): each line of stdin is a user message (end a line with \\ "
        "to go on on the next), answered with the conversation before it; -p is the first message; Ctrl-C stops an "
        "answer, Ctrl-D ends",
    )
    add_chat_template_args(p)
    p.add_argument("-sys", "--system-prompt", default=None, help="system message (implies --chat unless -cnv)")
    p.add_argument("--no-display-prompt", action="store_true", help="do not echo the prompt")
    p.add_argument(
        "--prompt-cache", type=Path, default=None, metavar="FILE",
        help="keep the prompt's keys and values in FILE: a later run whose prompt starts with it evaluates only the "
        "rest (llama-cli's; the file is written after the prompt; use it with the model and cache settings that "
        "wrote it)",
    )  # fmt: skip
    p.add_argument("--prompt-cache-all", action="store_true", help="... the generated text's too")
    p.add_argument("--prompt-cache-ro", action="store_true", help="use the prompt cache, never write it")
    constraint = p.add_mutually_exclusive_group()
    constraint.add_argument("--grammar", default=None, help="GBNF grammar (llama.cpp's format) the text must follow")
    constraint.add_argument("--grammar-file", type=Path, default=None, help="read the GBNF grammar from this file")
    constraint.add_argument(
        "-j", "--json-schema", default=None, help="JSON schema the text must follow ('{}': any JSON object)"
    )
    constraint.add_argument(
        "-jf", "--json-schema-file", type=Path, default=None, help="read the JSON schema from a file"
    )
    add_unsupported_samplers(p)
    add_no_effect_flags(p, LLAMA_CLI_NO_EFFECT, "llama-cli's flags taken with no effect here (a note says why)")
    p.set_defaults(func=run)


def grammar_of(args: argparse.Namespace) -> Grammar | None:
    if args.grammar_file is not None:
        return Grammar(read_utf8(args.grammar_file))
    if args.grammar is not None:
        return Grammar(args.grammar)
    if args.json_schema is not None:
        return Grammar.from_json_schema(args.json_schema)
    if args.json_schema_file is not None:
        return Grammar.from_json_schema(read_utf8(args.json_schema_file))
    return None


def run(args: argparse.Namespace) -> int:
    if args.gpu_layers:
        print("turbosparse run: -ngl has no effect here (placement is --device)", file=sys.stderr)
    note_no_effect(args, LLAMA_CLI_NO_EFFECT)
    prompt = read_prompt_file(args.file) if args.file else args.prompt
    if args.escape:  # llama-cli's: the prompt (a file's too) and the stop strings
        prompt = process_escapes(prompt)
        args.stop = [process_escapes(s) for s in args.stop]
    grammar = grammar_of(args)
    cache = None
    if args.prompt_cache is not None:
        if args.conversation:
            raise InvalidArgumentError("--prompt-cache takes one prompt: not with -cnv")
        cache = PromptCache(args.prompt_cache, everything=args.prompt_cache_all, read_only=args.prompt_cache_ro)
        cache.check()
    model = Model(
        model_path(args.model),
        n_threads=args.threads,
        n_ctx=args.ctx_size,
        n_batch=args.batch_size,
        sparse=args.sparse,
        threshold=args.threshold,
        verbose=args.verbose,
        device=args.device,
        swa_full=args.swa_full,
        **attention_kwargs(args),
    )
    template = chat_template_text(args)
    if template is not None:
        model.chat_template = chat_template_from(template, model.tokenizer)
    model.chat_template_kwargs = args.chat_template_kwargs or {}
    sampling = SamplingParams(  # checks the options before any text
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=llama_seed(args.seed),
        logit_bias=logit_biases(model, args),
    )
    max_tokens = None if args.n_predict < 0 else args.n_predict
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []

    def begin(tokens: list[int], turn: int) -> Generation:
        seed = None if sampling.seed is None else sampling.seed + turn - 1  # turn by turn: another draw, reproducible
        limit = model.bounded(max_tokens, tokens)  # -n is a bound, as llama-cli's
        return model.start(tokens, sampling=replace(sampling, seed=seed), max_tokens=limit, stop=args.stop,
                           grammar=grammar, cache_prompt=args.conversation or cache is not None)  # fmt: skip

    def answer(tokens: list[int], turn: int) -> Iterator[str]:
        return model.run(begin(tokens, turn), with_empty=True)  # every step: Ctrl-C is looked at between any two

    if args.conversation:
        model.chat_template  # noqa: B018 - a file without one fails now, not after the first message
        # kept free for an answer when earlier turns are dropped: -n bounds an answer, as everywhere, but never asks
        # for more room than a quarter of the context (-n 4096 with -c 4096 would refuse every message)
        room = max(1, min(max_tokens if max_tokens is not None else model.n_ctx, model.n_ctx // 4))
        conversation = Conversation(model, answer, room, system)
        interrupted = converse(conversation, prompt, sys.stdin, sys.stdout, single_turn=args.single_turn,
                               prepare=process_escapes if args.escape else None)  # fmt: skip
        print_stats(model)
        return 130 if interrupted else 0  # Ctrl-C at the prompt: as a program SIGINT ends, as llama-cli
    chat = args.chat or args.single_turn or args.system_prompt is not None
    if chat and not prompt:  # llama-cli's `-sys TEXT` alone: the message comes from stdin
        prompt = stdin_message(args.escape)
    if not prompt:
        where = " (or a message on stdin)" if chat else ""
        raise InvalidArgumentError(f"empty prompt: give -p TEXT or -f FILE{where}")
    # a chat's BOS: the model's, unless its template writes one (as llama.cpp: never two)
    tokens = (
        model.chat_tokens([*system, {"role": "user", "content": prompt}])
        if chat
        else model.tokenize(prompt, special=True)
    )
    # as llama-cli's: the file is written after a prompt it did not hold whole (with -all, after every run)
    cached = cache.restore(model, tokens) if cache is not None else 0
    gen = begin(tokens, 1)  # checks the prompt; the text comes as it is read
    pieces = model.run(gen, with_empty=True)
    if not args.no_display_prompt and not chat:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    code = 0
    try:
        for step, piece in enumerate(pieces):
            if step == 0 and cache is not None and not cache.everything and cached < len(tokens):
                cache.save(model)  # the sequence holds the prompt alone now: the first token is not evaluated yet
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write(gen.stopping_word)  # the -r text that ended it, shown as llama-cli shows it
        if cache is not None and cache.everything:
            cache.save(model)
    except KeyboardInterrupt:  # Ctrl-C: the text so far ends its line and the timings follow, as llama-cli's
        code = 130
    sys.stdout.write("\n")
    print_stats(model)
    return code


def stdin_message(escape: bool) -> str:
    """The one message of a chat turn given no -p / -f: a line typed at a terminal (lines ending in \\ joined with
    the next, as -cnv reads them), or all of piped input less one final newline (as -f reads a file); -e's escapes
    processed."""
    if sys.stdin.isatty():
        text = read_message(sys.stdin, sys.stderr) or ""
    else:
        text = sys.stdin.read().removesuffix("\n")
    if not is_utf8(text):
        raise InvalidArgumentError("the message on stdin is not UTF-8 text")
    return process_escapes(text) if escape else text


def logit_biases(model: Model, args: argparse.Namespace) -> dict[int, float] | None:
    """-l's biases, and with --ignore-eos every end-of-generation token banned."""
    bias = dict(args.logit_bias)
    if args.ignore_eos:
        bias |= {t: -math.inf for t in model.tokenizer.end_of_generation_tokens()}
    return bias or None


def print_stats(model: Model) -> None:
    """The run line on stderr: prompt and decode speeds, and how much of the FFN sparse decoding read."""
    s = model.stats()
    active = [a for a in s["active_fraction"] if a is not None]
    sparse = s["sparse_mode"]
    if sparse != "off" and model.info.has_ffn_thresholds:  # a calibrated file: the whole gate, a share of up/down
        sparse += f" ({100 * s['mean_kept_fraction']:.0f}% of up/down rows read, the gate whole)"
    elif sparse != "off" and active and s["decode_tokens"]:
        sparse += f" ({100 * sum(active) / len(active):.0f}% of FFN rows read)"
    print(
        f"prompt: {s['prompt_tokens']} tokens, {s['prompt_tok_s']:.1f} tok/s | "
        f"decode: {s['decode_tokens']} tokens, {s['decode_tok_s']:.1f} tok/s | "
        f"sparse: {sparse}, threads: {model.n_threads}",
        file=sys.stderr,
    )

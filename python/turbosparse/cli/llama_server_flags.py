"""llama-server's flags that `turbosparse serve` takes beyond its own, so that a llama-server command line runs as it
is: the sampling flags, which become every request's defaults there (a request's own fields win), and flags that
change nothing here, taken and named in a note (offloading, memory mapping, the web UI, ...); `run` takes llama-cli's
flags of that kind the same way."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# flag names -> (the request field it is the default of, its type)
SAMPLING_FLAGS: dict[tuple[str, ...], tuple[str, type]] = {
    ("--temp", "--temperature"): ("temperature", float),
    ("--top-k",): ("top_k", int),
    ("--top-p",): ("top_p", float),
    ("--min-p",): ("min_p", float),
    ("--repeat-penalty",): ("repeat_penalty", float),
    ("--repeat-last-n",): ("repeat_last_n", int),
    ("--presence-penalty",): ("presence_penalty", float),
    ("--frequency-penalty",): ("frequency_penalty", float),
    ("-s", "--seed"): ("seed", int),
    ("-n", "--n-predict", "--predict"): ("max_tokens", int),
}
# flags taken with no effect: (names, the values that follow: 0, 1 or "?" (one or none), why nothing changes, whether
# a user would miss what the flag asks for: a warning, else a note shown with --verbose)
NoEffectFlag = tuple[tuple[str, ...], int | str, str, bool]
# the parameters of UNSUPPORTED_SAMPLERS (below), which change nothing while those are off; and the samplers' order
SAMPLER_PARAMETER_FLAGS: tuple[NoEffectFlag, ...] = (
    (("--mirostat-lr",), 1, "mirostat sampling is not implemented here (--mirostat)", False),
    (("--mirostat-ent",), 1, "mirostat sampling is not implemented here (--mirostat)", False),
    (("--xtc-threshold",), 1, "XTC sampling is not implemented here (--xtc-probability)", False),
    (("--dry-base",), 1, "DRY sampling is not implemented here (--dry-multiplier)", False),
    (("--dry-allowed-length",), 1, "DRY sampling is not implemented here (--dry-multiplier)", False),
    (("--dry-penalty-last-n",), 1, "DRY sampling is not implemented here (--dry-multiplier)", False),
    (("--dry-sequence-breaker",), 1, "DRY sampling is not implemented here (--dry-multiplier)", False),
    (("--dynatemp-exp",), 1, "dynamic temperature is not implemented here (--dynatemp-range)", False),
    (("--sampling-seq", "--sampler-seq", "--samplers"), 1,
     "the samplers run in llama.cpp's default order: logit bias, penalties, top-k, top-p, min-p, temperature", True),
)  # fmt: skip
NO_EFFECT_FLAGS: tuple[NoEffectFlag, ...] = (
    (("--jinja",), 0, "chat templates are always Jinja2 here", False),
    (("--no-jinja",), 0, "chat templates are always Jinja2 here", True),
    (("-ngl", "--gpu-layers", "--n-gpu-layers"), 1,
     "layers are not offloaded one by one: --device gpu puts the model on a GPU", True),
    (("-ub", "--ubatch-size"), 1, "one batch size, -b", False),
    (("-tb", "--threads-batch"), 1, "one thread count, -t", True),
    (("--no-mmap",), 0, "the file is mapped, its sparse rows copied to huge pages where they fit", True),
    (("--mlock",), 0, "the file is mapped, its sparse rows copied to huge pages where they fit", True),
    (("-cb", "--cont-batching"), 0, "requests are always batched as they come", False),
    (("-nocb", "--no-cont-batching"), 0, "requests are always batched as they come", True),
    (("--metrics",), 0, "/metrics is always served", False),
    (("--no-webui",), 0, "there is no web UI", False),
    (("--no-warmup",), 0, "there is no warm-up run", False),
    (("--log-disable",), 0, "the log is already short (--verbose shows llama.cpp's)", False),
    (("--threads-http",), 1, "requests are served by one event loop", False),
    (("--no-context-shift",), 0, "an answer ends where its slot is full (no context shift)", False),
    (("--context-shift",), 0, "there is no context shift: an answer ends where its slot is full", True),
    (("--cache-reuse",), 1, "a slot reuses the prompt's longest cached prefix, no chunks past it", False),
    (("-cram", "--cache-ram"), 1, "no prompt cache in host memory beside the slots' own", False),
    (("--ctx-checkpoints", "--swa-checkpoints"), 1, "one checkpoint of a sliding-window cache per slot", False),
    (("-kvu", "--kv-unified"), 0, "each slot has a KV cache of its own", False),
    (("-nkvo", "--no-kv-offload"), 0, "the KV cache is where --device puts the model", False),
    (("--warmup",), 0, "there is no warm-up run", False),
    (("--mmap",), 0, "the file is always mapped", False),
    (("-fit", "--fit"), "?", "the context is -c, not fitted to the device's memory", False),
    (("--webui", "--ui"), 0, "there is no web UI", True),
    (("--no-ui",), 0, "there is no web UI", False),
    (("--slots",), 0, "/slots is always served", False),
    (("--no-slots",), 0, "/slots is always served", True),
    (("--props",), 0, "/props is always served; POST /props is not taken", False),
    (("-sm", "--split-mode"), 1, "one device holds the model (--device)", False),
    (("-mg", "--main-gpu"), 1, "--device names the device", True),
    (("--log-file",), 1, "the log goes to stderr", True),
    (("--log-colors",), "?", "the log has no colours", False),
    (("--log-prefix",), 0, "the log's lines have no prefix", False),
    (("--log-timestamps",), 0, "the log's lines have no timestamps", False),
    (("-lv", "--verbosity", "--log-verbosity"), 1, "the log is short, or llama.cpp's with --verbose", False),
    *SAMPLER_PARAMETER_FLAGS,
)  # fmt: skip
# llama.cpp's samplers not implemented here: (names, whether a value turns it off, the values that do, what it is);
# taken at those values (a llama.cpp command line that names a sampler off runs as it is), refused at others
UnsupportedSampler = tuple[tuple[str, ...], Callable[[float], bool], str, str]
UNSUPPORTED_SAMPLERS: tuple[UnsupportedSampler, ...] = (
    (("--mirostat",), lambda v: v == 0, "0", "mirostat sampling"),
    (("--typical", "--typical-p"), lambda v: v >= 1, ">= 1", "locally typical sampling"),
    (("--top-nsigma", "--top-n-sigma"), lambda v: v <= 0, "<= 0", "top-n-sigma sampling"),
    (("--xtc-probability",), lambda v: v <= 0, "<= 0", "XTC sampling"),
    (("--dry-multiplier",), lambda v: v == 0, "0", "DRY sampling"),
    (("--dynatemp-range",), lambda v: v <= 0, "<= 0", "dynamic temperature"),
)


def _dest(names: tuple[str, ...]) -> str:
    return "llama_server_" + names[-1].lstrip("-").replace("-", "_")


def add_llama_server_flags(p: argparse.ArgumentParser) -> None:
    """llama-server's sampling flags (each request's defaults) and its flags that change nothing here."""
    sampling = p.add_argument_group("llama-server's sampling flags: every request's defaults (its own fields win)")
    for names, (field, kind) in SAMPLING_FLAGS.items():
        note = " (-1: no limit)" if field == "max_tokens" else " (-1: random)" if field == "seed" else ""
        sampling.add_argument(*names, dest=_dest(names), type=kind, default=None, metavar="N",
                              help=f"the default {field}{note}")  # fmt: skip
    add_unsupported_samplers(p)
    add_no_effect_flags(p, NO_EFFECT_FLAGS, "llama-server's flags taken with no effect here (a note says why)")


def add_unsupported_samplers(p: argparse.ArgumentParser) -> None:
    """llama.cpp's samplers not implemented here: taken at the values that turn them off, a usage error at others."""
    taken = p.add_argument_group("llama.cpp's samplers not implemented here: taken only at values that turn them off")
    for names, is_off, off, what in UNSUPPORTED_SAMPLERS:
        taken.add_argument(*names, dest=_dest(names), type=_off_only(is_off, off, what), default=None, metavar="N",
                           help=f"{what}: {off} only (off)")  # fmt: skip


def _off_only(is_off: Callable[[float], bool], off: str, what: str) -> Callable[[str], float]:
    def number(text: str) -> float:  # argparse names the type by this function's name in its own errors
        if not is_off(float(text)):
            raise argparse.ArgumentTypeError(
                f"{text}: {what} is not implemented here ({off} turns it off; the samplers are temperature, top-k, "
                "top-p, min-p, the penalties, logit bias and grammars)"
            )
        return float(text)

    return number


def add_no_effect_flags(p: argparse.ArgumentParser, flags: Sequence[NoEffectFlag], title: str) -> None:
    """flags (NO_EFFECT_FLAGS' shape), taken and kept for note_no_effect."""
    taken = p.add_argument_group(title)
    for names, values, why, _ in flags:
        options: dict[str, Any] = {"action": "store_true"} if values == 0 else {"metavar": "N"}
        if values == "?":
            options |= {"nargs": "?", "const": True}
        taken.add_argument(*names, dest=_dest(names), default=None, help=why, **options)


# the values llama.cpp reads as others: a negative temperature is 0 (greedy), a top-k of 0 or less none, the seed
# 0xFFFFFFFF (its LLAMA_DEFAULT_SEED) a random one, -n below 0 no limit
_AS_LLAMA_CPP_READS: dict[str, Any] = {
    "temperature": lambda v: max(v, 0.0),
    "top_k": lambda v: max(v, 0),
    "seed": lambda v: -1 if v == 0xFFFFFFFF else v,
    "max_tokens": lambda v: None if v < 0 else v,
}


def sampling_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields the sampling flags given set, their values as llama.cpp reads them."""
    defaults = {}
    for names, (field, _) in SAMPLING_FLAGS.items():
        value = getattr(args, _dest(names))
        if value is not None:
            defaults[field] = _AS_LLAMA_CPP_READS.get(field, lambda v: v)(value)
    return defaults


def note_no_effect(args: argparse.Namespace, flags: Sequence[NoEffectFlag] = NO_EFFECT_FLAGS) -> None:
    """One line per no-effect flag given: what it asks of llama.cpp's tool does not apply here, and why (a warning
    where a user would miss it, else a note shown with --verbose)."""
    for names, _, why, missed in flags:
        if getattr(args, _dest(names)) not in (None, False):
            level = logging.WARNING if missed else logging.INFO
            logger.log(level, "turbosparse %s: %s has no effect here: %s", args.command, names[-1], why)

"""llama-server's environment variables (LLAMA_ARG_CTX_SIZE=4096, LLAMA_API_KEY=..., as container setups give them)
read for `turbosparse serve`'s flags of the same meaning, as llama-server reads them: a flag given on the command line
wins over its variable, and a variable whose flag is excluded by one given (--chat-template beside
LLAMA_ARG_CHAT_TEMPLATE_FILE) is not read."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turbosparse.errors import InvalidArgumentError

logger = logging.getLogger(__name__)
# flag (argparse dest) -> llama-server's variable
LLAMA_SERVER_VARIABLES = {
    "model": "LLAMA_ARG_MODEL",
    "threads": "LLAMA_ARG_THREADS",
    "ctx_size": "LLAMA_ARG_CTX_SIZE",
    "batch_size": "LLAMA_ARG_BATCH",
    "swa_full": "LLAMA_ARG_SWA_FULL",
    "flash_attn": "LLAMA_ARG_FLASH_ATTN",
    "cache_type_k": "LLAMA_ARG_CACHE_TYPE_K",
    "cache_type_v": "LLAMA_ARG_CACHE_TYPE_V",
    "host": "LLAMA_ARG_HOST",
    "port": "LLAMA_ARG_PORT",
    "timeout": "LLAMA_ARG_TIMEOUT",
    "api_prefix": "LLAMA_ARG_API_PREFIX",
    "parallel": "LLAMA_ARG_N_PARALLEL",
    "api_key": "LLAMA_API_KEY",
    "alias": "LLAMA_ARG_ALIAS",
    "chat_template": "LLAMA_ARG_CHAT_TEMPLATE",
    "chat_template_file": "LLAMA_ARG_CHAT_TEMPLATE_FILE",
    "chat_template_kwargs": "LLAMA_ARG_CHAT_TEMPLATE_KWARGS",
    "reasoning_format": "LLAMA_ARG_THINK",
    "reasoning_budget": "LLAMA_ARG_THINK_BUDGET",
    "embeddings": "LLAMA_ARG_EMBEDDINGS",
    "pooling": "LLAMA_ARG_POOLING",
    "reasoning": "LLAMA_ARG_REASONING",
    # llama-server's flags taken here (llama_server_flags.py)
    "llama_server_predict": "LLAMA_ARG_N_PREDICT",
    "llama_server_temperature": "LLAMA_ARG_TEMPERATURE",
    "llama_server_top_k": "LLAMA_ARG_TOP_K",
    "llama_server_top_p": "LLAMA_ARG_TOP_P",
    "llama_server_min_p": "LLAMA_ARG_MIN_P",
    "llama_server_repeat_penalty": "LLAMA_ARG_REPEAT_PENALTY",
    "llama_server_presence_penalty": "LLAMA_ARG_PRESENCE_PENALTY",
    "llama_server_frequency_penalty": "LLAMA_ARG_FREQUENCY_PENALTY",
    "llama_server_n_gpu_layers": "LLAMA_ARG_N_GPU_LAYERS",
    "llama_server_ubatch_size": "LLAMA_ARG_UBATCH",
    "llama_server_threads_batch": "LLAMA_ARG_THREADS_BATCH",
    "llama_server_jinja": "LLAMA_ARG_JINJA",
    "llama_server_no_mmap": "LLAMA_ARG_NO_MMAP",
    "llama_server_mlock": "LLAMA_ARG_MLOCK",
    "llama_server_cont_batching": "LLAMA_ARG_CONT_BATCHING",
    "llama_server_no_cont_batching": "LLAMA_ARG_NO_CONT_BATCHING",
    "llama_server_metrics": "LLAMA_ARG_ENDPOINT_METRICS",
    "llama_server_no_webui": "LLAMA_ARG_NO_WEBUI",
    "llama_server_threads_http": "LLAMA_ARG_THREADS_HTTP",
}
# a variable's name before llama.cpp renamed it, read where the new one is not set
_OLDER_NAMES = {"LLAMA_ARG_CHAT_TEMPLATE_KWARGS": "LLAMA_CHAT_TEMPLATE_KWARGS"}
# a switch's values, as llama.cpp reads them
SWITCH_ON = ("1", "true", "on", "enabled")
SWITCH_OFF = ("0", "false", "off", "disabled")


@dataclass(frozen=True)
class FromEnvironment:
    """A flag's default while the command line is parsed: its variable's text, read by resolve_environment unless
    the command line gave the flag, or one of excluded_by; then the flag's own default (fallback)."""

    variable: str
    text: str
    action: argparse.Action
    fallback: Any
    excluded_by: tuple[str, ...]


def take_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Each mapped flag's help names its variable; a variable that is set becomes the flag's default (a required
    flag is then not required)."""
    for action in parser._actions:
        variable = LLAMA_SERVER_VARIABLES.get(action.dest)
        if variable is None:
            continue
        action.help = f"{action.help} (env: {variable})"
        text = environ.get(variable, environ.get(_OLDER_NAMES.get(variable, "")))
        if text is None:
            continue
        if isinstance(action, argparse._AppendAction):  # the command line's values are added to it, as in llama.cpp
            action.default = [text]
            continue
        excluded_by = tuple(
            other.dest
            for group in parser._mutually_exclusive_groups
            if action in group._group_actions
            for other in group._group_actions
            if other is not action
        )
        action.default = FromEnvironment(variable, text, action, action.default, excluded_by)
        action.required = False


def resolve_environment(args: argparse.Namespace) -> None:
    """Each flag args holds a FromEnvironment for set to its variable's value (InvalidArgumentError naming the
    variable for a value the flag's type or choices refuse; a switch is off unless its value turns it on, as in
    llama.cpp), or to its own default where a flag it excludes was given."""
    given = {dest for dest, value in vars(args).items() if not isinstance(value, FromEnvironment)}
    for dest, value in list(vars(args).items()):
        if isinstance(value, FromEnvironment):
            excluded = any(getattr(args, other, None) is not None and other in given for other in value.excluded_by)
            setattr(args, dest, value.fallback if excluded else _value(value))


def _value(source: FromEnvironment) -> Any:
    action, text = source.action, source.text
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):  # as llama.cpp: on where the value says so, else off
        value = text.strip().lower()
        if value not in SWITCH_ON + SWITCH_OFF:
            logger.warning(
                "%s=%r: %s is a switch (%s turn it on): off", source.variable, text, flag, "/".join(SWITCH_ON)
            )
        return value in SWITCH_ON
    try:
        value = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{source.variable}={text!r}: not a value {flag} takes ({exc})") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise InvalidArgumentError(f"{source.variable}={text!r}: {flag} takes one of {choices}")
    return value

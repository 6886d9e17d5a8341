"""The `turbosparse` command: one subcommand per module, each with register(subparsers) and run(args)."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from turbosparse.cli import (
    bench_cmd,
    calibrate_cmd,
    convert_cmd,
    imatrix_cmd,
    perplexity_cmd,
    relufy_cmd,
    run_cmd,
    serve_cmd,
    train_predictors_cmd,
)
from turbosparse.errors import TurboSparseError

_COMMANDS = (
    run_cmd,
    convert_cmd,
    imatrix_cmd,
    calibrate_cmd,
    train_predictors_cmd,
    relufy_cmd,
    bench_cmd,
    perplexity_cmd,
    serve_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turbosparse", description="Activation-sparse LLM inference on GGUF models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


_LONG_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9_-]*")


def hyphenated(argv: Sequence[str]) -> list[str]:
    """Long options spelled with underscores (--ctx_size) as with hyphens, as llama.cpp's tools take them; values
    (a prompt such as "--- my_doc") and everything after a bare -- as they are."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return [*out, *argv[i:]]
        name, eq, value = arg.partition("=")
        if _LONG_OPTION.fullmatch(name):
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(hyphenated(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s"
    )
    for stream in (sys.stdout, sys.stderr):  # text in an encoding that cannot hold it: "?", not a traceback
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    if isinstance(sys.stdin, io.TextIOWrapper):  # bytes that are not text read as lone surrogates (said where read)
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`| head`): quietly, as a program SIGPIPE ends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail again
        return 141
    except (TurboSparseError, OSError) as exc:  # anything else is a bug: its traceback is the report
        print(f"turbosparse {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _Terminated(BaseException):
    """SIGTERM (`kill`, a service manager, a container stopping) or SIGHUP (the terminal closed, an ssh session
    dropped), raised where the command stands so that it unwinds: writers remove their partial files (the signal's
    default action ended the process there, leaving them)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise _Terminated(signum)


def entry() -> NoReturn:
    """The `turbosparse` program (its console script and `python -m turbosparse`): main(), then the exit."""
    # serve's uvicorn (server/stopping_server.py) puts its own in while it runs, then raises the signal again
    signal.signal(signal.SIGTERM, _raise_terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, _raise_terminated)
    try:
        code = main()
    except _Terminated as ended:
        # unwound: now ended by the signal itself, as a service manager expects of a stopped process (not exit 143)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(ended.signum, signal.SIG_DFL)
        os.kill(os.getpid(), ended.signum)
        raise
    distributed = sys.modules.get("torch.distributed")  # loaded only where torch was: inference never imports it
    if distributed is not None and getattr(distributed, "is_torchelastic_launched", lambda: False)():
        # A torchrun rank (relufy, train-predictors) leaves without the interpreter's finalization: its garbage
        # collection there can destroy a gloo thread that is still joinable and abort the rank ("terminate called
        # without an active exception", after the work is written), which torchrun reports as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)

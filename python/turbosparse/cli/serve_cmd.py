"""`turbosparse serve`: an OpenAI-compatible HTTP server (llama-server's flag names and environment variables; needs
the `server` extra)."""

from __future__ import annotations

import argparse
import logging
import os

from turbosparse.cli.environment import SWITCH_OFF, SWITCH_ON, resolve_environment, take_environment
from turbosparse.cli.llama_server_flags import add_llama_server_flags, note_no_effect, sampling_defaults
from turbosparse.cli.run_cmd import (
    add_chat_template_args,
    add_model_args,
    attention_kwargs,
    chat_template_text,
    model_path,
)
from turbosparse.embeddings import POOLINGS
from turbosparse.errors import TurboSparseError, extra_install
from turbosparse.reasoning import REASONING_FORMATS

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    # no abbreviations, as llama-server takes none (--thread would name three flags)
    p = sub.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API", description=__doc__, allow_abbrev=False
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument(
        "-to", "--timeout", type=_seconds, default=600, metavar="N",
        help="seconds a client may send nothing while the server waits for its request, or take nothing of an answer "
        "being written, before it is disconnected (default 600, as llama-server's)",
    )  # fmt: skip
    p.add_argument(
        "-np", "--parallel", type=int, default=1,
        help="slots: requests decoded at once (in one forward pass), each with its own KV cache of ctx-size/parallel "
        "tokens (default 1; -1, llama-server's auto: 1)",
    )  # fmt: skip
    p.add_argument("--queue-size", type=int, default=64, help="requests that may wait for a slot; more get 503")
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="require 'Authorization: Bearer KEY' (or x-api-key: KEY); several keys separated by commas, or the flag "
        "given again (default: no key)",
    )
    p.add_argument("--api-key-file", default=None, help="a file of keys --api-key takes too, one per line")
    p.add_argument("-a", "--alias", default=None, help="the model name clients see (default: the file name)")
    add_chat_template_args(p)
    p.add_argument(
        "--reasoning-format", choices=REASONING_FORMATS, default="auto",
        help="a thinking model's answers (Qwen3, DeepSeek-R1): auto / deepseek put the <think> part in "
        "reasoning_content; deepseek-legacy leaves it in a streamed answer's content between the tags (a whole answer "
        "as deepseek); none leaves it in content (default auto)",
    )  # fmt: skip
    p.add_argument(
        "--reasoning-budget", type=int, default=-1,
        help="-1: think as the template does (default); 0: no thinking (the template's enable_thinking: false)",
    )  # fmt: skip
    p.add_argument(
        "-rea", "--reasoning", type=_reasoning_switch, default=None, metavar="on|off|auto",
        help="llama-server's thinking switch: off is --reasoning-budget 0, on the template's enable_thinking: true, "
        "auto as the template does (true / false / 1 / 0 / enabled / disabled too)",
    )  # fmt: skip
    p.add_argument(
        "--embeddings", "--embedding", action="store_true",
        help="serve /v1/embeddings too (OpenAI's: the final norm's output pooled per text, of unit length, as "
        "llama-server's); embeddings take a KV cache of their own beside the slots'",
    )  # fmt: skip
    p.add_argument(
        "--pooling", choices=POOLINGS, default=None,
        help="how /v1/embeddings pools a text's tokens: mean, cls (the first token's), last; default: the file's "
        "pooling_type (an embedding model's), which none (a chat model's) does not serve",
    )  # fmt: skip
    p.add_argument(
        "--slot-save-path", default=None,
        help="folder where POST /slots/{id}?action=save writes a slot's cached tokens and action=restore reads them "
        "(default: those actions refused)",
    )  # fmt: skip
    p.add_argument(
        "--api-prefix", default="",
        help="serve every route under this path, e.g. /llm (llama-server's; default: none)",
    )  # fmt: skip
    p.add_argument(
        "--spm-infill", action="store_true",
        help="/infill's prompt as SPM-trained models take it: the suffix before the prefix (default: the prefix first)",
    )  # fmt: skip
    add_llama_server_flags(p)
    take_environment(p, os.environ)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    resolve_environment(args)
    try:
        import uvicorn

        from turbosparse.server import ServerConfig, create_app
        from turbosparse.server.stopping_server import StoppingServer
        from turbosparse.server.timed_connections import timed_protocol
    except ImportError as exc:
        raise TurboSparseError(f"the server needs {extra_install('server')} ({exc})") from None
    path = model_path(args.model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    template = chat_template_text(args)
    note_no_effect(args)
    config = ServerConfig(
        model_path=path,
        alias=args.alias,
        host=args.host,
        port=args.port,
        n_threads=args.threads,
        n_ctx=args.ctx_size,
        n_batch=args.batch_size,
        parallel=args.parallel,
        queue_size=args.queue_size,
        sparse=args.sparse,
        threshold=args.threshold,
        device=args.device,
        swa_full=args.swa_full,
        **attention_kwargs(args),
        api_key=_api_keys(args) or os.environ.get("TURBOSPARSE_API_KEY") or None,
        chat_template=template,
        chat_template_kwargs={
            **({"enable_thinking": True} if args.reasoning == "on" else {}),
            **(args.chat_template_kwargs or {}),
        },
        reasoning_format=args.reasoning_format,
        reasoning_budget=0 if args.reasoning == "off" else args.reasoning_budget,
        embeddings=args.embeddings,
        pooling=args.pooling,
        slot_save_path=args.slot_save_path,
        spm_infill=args.spm_infill,
        api_prefix=args.api_prefix,
        sampling_defaults=sampling_defaults(args),
        verbose=args.verbose,
    )
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def stop(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_failure=stop)
    log_level = "info" if args.verbose else "warning"
    # on SIGINT / SIGTERM, open streams get a few seconds to finish before their connections are closed
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, uds=config.unix_socket, log_level=log_level,
                               timeout_graceful_shutdown=5, http=timed_protocol(args.timeout))  # fmt: skip
    server = StoppingServer(uv_config, app.state.stopping)  # SIGINT / SIGTERM: answers told, not cut
    logger.warning("turbosparse serve: loading %s, listening on %s", path, config.address)
    server.run()
    if failures:
        raise TurboSparseError(f"cannot serve {path}: {failures[0]}")
    return 0


def _seconds(text: str) -> float:
    """--timeout's value: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be a number of seconds > 0")
    return value


def _reasoning_switch(text: str) -> str:
    """--reasoning's value as llama.cpp reads it: on, off or auto."""
    for value, spellings in (("on", SWITCH_ON), ("off", SWITCH_OFF), ("auto", ("auto", "-1"))):
        if text.strip().lower() in spellings:
            return value
    raise argparse.ArgumentTypeError(f"{text!r} is not on, off or auto")


def _api_keys(args: argparse.Namespace) -> str | None:
    """Every key given (--api-key, each a comma-separated list, and --api-key-file's lines) as one comma-separated
    list, which ServerConfig checks; None: no key (an empty --api-key: as llama.cpp skips it, LLAMA_API_KEY=${KEY:-}
    in a compose file); a key file without a key is an error (a secret left unfilled)."""
    keys = [value for value in args.api_key or [] if value.strip()]
    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as file:
                from_file = [line.strip() for line in file if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise TurboSparseError(f"--api-key-file {args.api_key_file}: {exc}") from None
        if not from_file:
            raise TurboSparseError(f"--api-key-file {args.api_key_file} holds no key")
        keys += from_file
    return ",".join(keys) or None

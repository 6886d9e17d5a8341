"""The server's settings (llama-server's flag names in `turbosparse serve`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from turbosparse.binding import max_sequences
from turbosparse.chat_template import checked_variables
from turbosparse.embeddings import pooling_named
from turbosparse.errors import ChatTemplateError, InvalidArgumentError
from turbosparse.reasoning import REASONING_FORMATS, ReasoningFormat
from turbosparse.server.errors import validation_text
from turbosparse.server.schemas import _Generate


@dataclass(frozen=True)
class ServerConfig:
    model_path: str
    alias: str | None = None  # the model name clients see (default: the file name)
    host: str = "127.0.0.1"
    port: int = 8080
    n_threads: int | None = None
    n_ctx: int = 4096  # all slots together, as llama-server's -c: each slot gets n_ctx // parallel (0: the model's)
    n_batch: int = 512
    parallel: int = 1  # slots: requests decoded at once, each with its own KV cache
    queue_size: int = 64  # requests waiting for a slot; more are refused with 503
    sparse: str = "auto"
    threshold: float | None = None
    device: str = "cpu"  # Model(device=...): cpu, gpu or a ggml device name
    swa_full: bool = False  # Model(swa_full=...): sliding-window layers cache every position (llama-server's)
    flash_attn: bool = False  # Model(flash_attn=...): llama-server's -fa
    type_k: str = "f16"  # Model(type_k=...), type_v: the KV cache's types (llama-server's -ctk, -ctv)
    type_v: str = "f16"
    api_key: str | None = None  # clients must send "Authorization: Bearer <key>", a key of this comma-separated list
    chat_template: str | None = None  # replaces the file's tokenizer.chat_template: Jinja2, or a built-in's name
    # variables for every chat prompt's template (a request's chat_template_kwargs are added over them)
    chat_template_kwargs: dict[str, object] = field(default_factory=dict)
    reasoning_format: ReasoningFormat = "auto"  # how a thinking model's answers are split (reasoning.py)
    reasoning_budget: int = -1  # -1: thinking as the template does; 0: thinking off (enable_thinking: false)
    embeddings: bool = False  # serve /v1/embeddings (one more sequence than slots, which embeddings take)
    pooling: str | None = None  # the embeddings' pooling (embeddings.py); None: the file's
    slot_save_path: str | None = None  # the folder /slots/{id}?action=save|restore writes and reads (None: refused)
    spm_infill: bool = False  # /infill's prompt puts the suffix before the prefix, as SPM-trained models take it
    api_prefix: str = ""  # every route under this path (llama-server's --api-prefix), e.g. "/llm"
    # request fields' defaults (llama-server's --temp, --top-k, -n, ...: a request's own fields win)
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.parallel == -1:  # llama-server's auto; one slot, each request with the whole context
            object.__setattr__(self, "parallel", 1)
        if self.parallel < 1:
            raise InvalidArgumentError(f"--parallel must be >= 1, got {self.parallel}")
        most = max_sequences() - int(self.embeddings)
        if self.parallel > most:
            embeddings = " with --embeddings, whose sequence is one of them" if self.embeddings else ""
            raise InvalidArgumentError(
                f"--parallel must be <= {most} (a context holds {most + int(self.embeddings)} sequences{embeddings}), "
                f"got {self.parallel}"
            )
        if self.queue_size < 0:
            raise InvalidArgumentError(f"--queue-size must be >= 0, got {self.queue_size}")
        if not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"--port must be 0-65535, got {self.port}")
        try:
            checked = _Generate.model_validate(self.sampling_defaults)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidArgumentError(f"the default {first['loc'][0]}: {validation_text(first)}") from None
        # as the fields' validators leave them (a seed of -1: None, a fresh random one)
        object.__setattr__(self, "sampling_defaults", {name: getattr(checked, name) for name in self.sampling_defaults})
        if self.api_key is not None and not self.api_key.replace(",", "").strip():
            raise InvalidArgumentError("--api-key holds no key (one, or several separated by commas)")
        try:
            checked_variables(self.chat_template_kwargs)
        except ChatTemplateError as exc:
            raise InvalidArgumentError(f"--chat-template-kwargs: {exc}") from None
        if self.reasoning_format not in REASONING_FORMATS:
            raise InvalidArgumentError(
                f"--reasoning-format must be one of {', '.join(REASONING_FORMATS)}, got {self.reasoning_format!r}"
            )
        if self.reasoning_budget not in (-1, 0):
            raise InvalidArgumentError(
                f"--reasoning-budget must be -1 (unrestricted) or 0 (no thinking), got {self.reasoning_budget}"
            )
        if self.pooling is not None:
            pooling_named(self.pooling)  # InvalidArgumentError naming the choices
        if self.api_prefix and (not self.api_prefix.startswith("/") or self.api_prefix.endswith("/")):
            raise InvalidArgumentError(f"--api-prefix must start with / and not end with one, got {self.api_prefix!r}")
        if self.n_ctx < 0:
            raise InvalidArgumentError(f"--ctx-size must be >= 0, got {self.n_ctx}")
        if (
            self.slot_save_path is not None
            and Path(self.slot_save_path).exists()
            and not Path(self.slot_save_path).is_dir()
        ):
            raise InvalidArgumentError(f"--slot-save-path {self.slot_save_path}: not a folder")
        if 0 < self.n_ctx < 8 * self.parallel:
            raise InvalidArgumentError(
                f"--ctx-size {self.n_ctx} leaves fewer than 8 tokens to each of {self.parallel} slots"
            )

    @property
    def model_name(self) -> str:
        return self.alias or Path(self.model_path).name

    @property
    def unix_socket(self) -> str | None:
        """The UNIX socket's path the server listens on: a host ending in .sock, as llama-server takes it."""
        return self.host if self.host.endswith(".sock") else None

    @property
    def address(self) -> str:
        """Where clients reach the server."""
        where = f"unix:{self.unix_socket}" if self.unix_socket else f"http://{self.host}:{self.port}"
        return where + self.api_prefix

    def slot_ctx(self, n_ctx_train: Callable[[], int]) -> int:
        """Tokens each slot holds, as llama-server shares its context: n_ctx (0: the model's training context, which
        n_ctx_train reads from the file only then) over the slots."""
        return (self.n_ctx or n_ctx_train()) // self.parallel

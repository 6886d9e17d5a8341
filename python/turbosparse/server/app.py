"""The HTTP layer: OpenAI's /v1/models, /v1/completions, /v1/chat/completions, Anthropic's /v1/messages and
llama-server's /completion, /props, /slots, /apply-template, /health, /metrics, /tokenize, /detokenize, as FastAPI
routes over the engine. Streams are server-sent events (sse-starlette)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turbosparse import __version__
from turbosparse.binding import NativeModel
from turbosparse.chat_template import ChatTemplate, chat_template_from, checked_variables
from turbosparse.completions import (
    ChatCompletionChunks,
    CompletionMeta,
    ReasoningSplit,
    TextCompletionChunks,
    chat_completion,
    text_completion,
    usage,
)
from turbosparse.embeddings import pooling_named
from turbosparse.errors import (
    ChatTemplateError,
    ContextOverflowError,
    GrammarError,
    InfillNotSupportedError,
    SequenceBusyError,
)
from turbosparse.generation import FinishReason, Generation
from turbosparse.infill import ExtraFile, fim_tokens, infill_tokens
from turbosparse.logprobs import ReleasedLogprobs, prompt_text
from turbosparse.model import Model
from turbosparse.reasoning import CLOSE, open_at_end, thinks
from turbosparse.server import anthropic, native, responses, slots
from turbosparse.server.config import ServerConfig
from turbosparse.server.engine import Engine, Event, Job, QueueFullError
from turbosparse.server.errors import (
    APIError,
    error_body,
    error_response,
    install_handlers,
    route_path,
    validation_text,
)
from turbosparse.server.metrics import collect, render
from turbosparse.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    InfillRequest,
    NativeCompletionRequest,
    SlotFileRequest,
    TokenizeRequest,
    _Generate,
)
from turbosparse.tool_calls import ToolUse

logger = logging.getLogger(__name__)

_CANCELLED = Event(error="cancelled: the client went away")
CLIENT_CLOSED = 499  # nginx's status for a request whose client left before the answer
PUBLIC_PATHS = ("/health", "/v1/health", "/metrics")  # answered without the API key, as llama-server does
# the largest request body read: a prompt that fills a 1 M-token context is about 4 MB; parsing and tokenizing take
# tens of times a body's size in memory (a 200 MB prompt took llama.cpp's tokenizer past 6 GB and ended the server)
MAX_BODY_BYTES = 16 << 20
DROPPED_BODY_BYTES = 256 << 20  # a refused body is read and dropped up to this size, for its client to see the 413


class APIKeyCheck:
    """With --api-key, every route but /health and /metrics wants "Authorization: Bearer KEY" (or Anthropic's
    "x-api-key: KEY", as llama-server takes it), checked before the body is read. Plain ASGI: Starlette's
    BaseHTTPMiddleware would hide a client's disconnect from the routes."""

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self.api_keys = [key.strip().encode() for key in api_key.split(",") if key.strip()]  # llama-server's list

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) not in PUBLIC_PATHS:
            headers = Headers(scope=scope)
            scheme, _, key = headers.get("authorization", "").partition(" ")
            key = key if scheme.lower() == "bearer" else headers.get("x-api-key", "")
            given = key.strip().encode()
            if not any([secrets.compare_digest(given, known) for known in self.api_keys]):  # each compared, in time
                error = APIError(
                    401, "invalid or missing API key (send Authorization: Bearer <key>, or x-api-key: <key>)"
                )
                await error_response(error, route_path(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class APIPrefix:
    """With --api-prefix, every route is served under the prefix (behind a proxy that forwards a path as it is, as
    llama-server's); other paths are a 404."""

    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            if path != self.prefix and not path.startswith(self.prefix + "/"):
                error = APIError(404, f"{path}: not found (every route is under {self.prefix})")
                await error_response(error, path)(scope, receive, send)
                return
            # the prefix joins the root path, which the routes (and the key check) leave out and URLs keep
            scope = {**scope, "root_path": scope.get("root_path", "") + self.prefix}
        await self.app(scope, receive, send)


class JsonBodies:
    """A body sent as a form or plain text is read as JSON, as llama-server reads every body: `curl -d '{...}'` sends
    application/x-www-form-urlencoded, which FastAPI would hand the routes as bytes (a 400 about a dictionary)."""

    _READ_AS_JSON = (b"application/x-www-form-urlencoded", b"text/plain")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [
                (name, b"application/json" if name == b"content-type" and self._form_or_text(value) else value)
                for name, value in scope["headers"]
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)

    def _form_or_text(self, content_type: bytes) -> bool:
        return content_type.split(b";")[0].strip().lower() in self._READ_AS_JSON


class BodyLimit:
    """A request body past max_bytes is refused with a 413 before the routes parse it (Content-Length past it, or a
    chunked body once it passes it). The rest of the body is read and dropped first (a client answered while it still
    sends sees its connection reset, not the 413), unless the client waits to be told to send it (Expect:
    100-continue) or declares more than DROPPED_BODY_BYTES: those are answered at once."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            if headers.get("expect", "").lower() != "100-continue" and int(declared) <= DROPPED_BODY_BYTES:
                await _drop_body(receive)
            error = APIError(413, self._message(f"{int(declared)} bytes"))
            await error_response(error, route_path(scope))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drop_body(receive)
                    # FastAPI answers an HTTPException raised while it reads the body
                    raise HTTPException(413, self._message(f"more than {self.max_bytes} bytes"))
            return message

        await self.app(scope, counted, send)

    def _message(self, size: str) -> str:
        return f"the request body ({size}) is larger than this server reads ({self.max_bytes >> 20} MiB)"


async def _drop_body(receive: Receive) -> None:
    """Reads the rest of a request's body, keeping none of it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


@dataclass
class ServerState:
    config: ServerConfig
    created: int
    model: Model | None = None
    engine: Engine | None = None
    failure: str | None = None


def load_model(config: ServerConfig) -> Model:
    model = Model(
        config.model_path,
        n_threads=config.n_threads,
        n_ctx=config.slot_ctx(lambda: NativeModel(config.model_path, metadata_only=True).info.n_ctx_train),
        n_batch=config.n_batch,
        sparse=config.sparse,  # type: ignore[arg-type]
        threshold=config.threshold,
        verbose=config.verbose,
        n_seq=config.parallel + int(config.embeddings),  # one sequence is always free for embeddings
        device=config.device,
        swa_full=config.swa_full,
        flash_attn=config.flash_attn,
        type_k=config.type_k,
        type_v=config.type_v,
    )
    if config.chat_template is not None:
        model.chat_template = chat_template_from(config.chat_template, model.tokenizer)
    # --reasoning-budget 0 turns thinking off as llama-server does, through the template's enable_thinking
    thinking = {"enable_thinking": False} if config.reasoning_budget == 0 else {}
    model.chat_template_kwargs = {**thinking, **config.chat_template_kwargs}
    return model


def create_app(config: ServerConfig, *, on_failure: Callable[[str], None] | None = None) -> FastAPI:
    """The application; the model loads in a thread once it starts (/health answers 503 until then).
    on_failure is called with the message when the model cannot be loaded."""
    state = ServerState(config, created=int(time.time()))

    def load() -> None:
        try:
            model = load_model(config)
            engine = Engine(model, queue_size=config.queue_size, slots=config.parallel)
            engine.start()
        except Exception as exc:
            state.failure = str(exc)
            logger.error("cannot load %s: %s", config.model_path, exc)
            if on_failure is not None:
                on_failure(state.failure)
            return
        state.model, state.engine = model, engine
        if config.embeddings and (config.pooling or model.pooling) == "none":
            logger.warning("--embeddings: %s's pooling is none (a chat model's), which /v1/embeddings does not serve: "
                           "give --pooling mean, cls or last", config.model_name)  # fmt: skip
        logger.warning(
            "turbosparse serve: %s ready on %s (%d slot(s) of %d tokens, sparse %s, %d threads)",
            config.model_name, config.address, config.parallel, model.n_ctx, model.sparse_name, model.n_threads,
        )  # fmt: skip

    # embeddings run one input at a time on a thread of their own (they take the model in turn anyway): waiting for
    # the engine there never holds a thread of the pool that every request's own steps need
    embedding_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turbosparse-embed")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="turbosparse-load", daemon=True).start()
        yield
        embedding_thread.shutdown(wait=False, cancel_futures=True)
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="turbosparse", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stopping = threading.Event()  # set by `serve`'s server when it is told to stop (SIGINT / SIGTERM)
    install_handlers(app)

    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    if config.api_key is not None:
        app.add_middleware(APIKeyCheck, api_key=config.api_key)
    # any origin, as llama-server and llama-cpp-python's server allow: browser front ends call it; outermost, so
    # that a preflight (no key) is answered before the key check
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    if config.api_prefix:
        app.add_middleware(APIPrefix, prefix=config.api_prefix)

    @functools.cache
    def end_of_generation(model: Model) -> list[int]:
        return model.tokenizer.end_of_generation_tokens()

    def ready() -> tuple[Model, Engine]:
        if state.failure is not None:
            raise APIError(500, f"the model failed to load: {state.failure}", type="server_error")
        if state.model is None or state.engine is None:
            raise APIError(503, "Loading model")
        return state.model, state.engine

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> JSONResponse:
        ready()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:  # a plain def: FastAPI runs it in a worker thread (stats wait for a step)
        model, engine = ready()
        return PlainTextResponse(render(collect(engine, model)), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    @app.get("/models")
    async def models() -> JSONResponse:
        model, _ = ready()
        meta = {
            "n_vocab": model.n_vocab,
            "n_ctx_slot": model.n_ctx,
            "slots": config.parallel,
            "n_params": model.info.n_params,
            "size": model.info.n_bytes,
            "sparse": model.sparse_name,
        }
        # the page fields of Anthropic's model list beside OpenAI's (the anthropic SDK's client.models.list())
        page = {"has_more": False, "first_id": config.model_name, "last_id": config.model_name}
        return JSONResponse({"object": "list", "data": [{**model_entry(model), "meta": meta}], **page})

    @app.get("/v1/models/{model_id:path}")
    async def model_by_id(model_id: str) -> JSONResponse:
        model, _ = ready()
        if model_id != config.model_name:
            raise APIError(404, f"the model '{model_id}' does not exist (this server has '{config.model_name}')")
        return JSONResponse(model_entry(model))

    def model_entry(model: Model) -> dict[str, Any]:
        """OpenAI's model object, with Anthropic's fields beside (its ModelInfo: type, display_name, created_at,
        lifecycle, max_input_tokens: a slot's context less the one token an answer needs)."""
        created_at = datetime.fromtimestamp(state.created, timezone.utc).isoformat().replace("+00:00", "Z")
        return {"id": config.model_name, "object": "model", "created": state.created, "owned_by": "turbosparse",
                "type": "model", "display_name": config.model_name, "created_at": created_at, "lifecycle": "active",
                "max_input_tokens": model.n_ctx - 1}  # fmt: skip

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        model, _ = ready()
        tokens = await asyncio.to_thread(model.tokenize, body.content, add_bos=body.add_special,
                                         special=body.parse_special)  # fmt: skip
        if not body.with_pieces:
            return JSONResponse({"tokens": tokens})
        return JSONResponse({"tokens": [{"id": t, "piece": _piece(model, t)} for t in tokens]})

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        model, _ = ready()
        _check_tokens(model, body.tokens, "tokens")
        text = await asyncio.to_thread(model.detokenize, body.tokens, special=True)
        return JSONResponse({"content": text})  # as llama-server

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
        model, _ = ready()
        if not config.embeddings:
            raise APIError(
                501, "this server does not serve embeddings: start it with --embeddings", type="not_supported_error"
            )
        pooling = pooling_named(config.pooling) if config.pooling is not None else model.pooling
        if pooling == "none":
            raise APIError(
                400, "the model's pooling is none (a vector per token), which OpenAI's embeddings do not take: start "
                "the server with --pooling mean, cls or last",
            )  # fmt: skip
        if body.dimensions is not None and body.dimensions != model.info.n_embd:
            raise APIError(
                400, f"dimensions {body.dimensions}: the model's embeddings have {model.info.n_embd}, not shortened",
                param="dimensions",
            )  # fmt: skip

        def tokenized() -> list[list[int]]:  # on a worker thread: a long text does not hold up the event loop
            return [
                model.tokenize(text, add_bos=True, special=True) if isinstance(text, str) else list(text)
                for text in body.inputs()
            ]

        inputs = await asyncio.to_thread(tokenized)
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise APIError(400, f"input {i} is empty: it has no tokens", param="input")
            _check_tokens(model, tokens, "input")
            if len(tokens) > model.n_ctx:
                raise APIError(400, f"input {i} has {len(tokens)} tokens; one holds {model.n_ctx}", param="input")

        # one input at a time (each waits for the engine's step): the generations step between them, and a client
        # that went away stops the rest
        leaving = asyncio.create_task(_disconnected(request))
        vectors: list[np.ndarray] = []
        try:
            for tokens in inputs:
                if leaving.done():
                    return JSONResponse({}, status_code=499)  # nobody reads it (nginx's "client closed request")
                embed = functools.partial(model.embed, tokens, pooling=pooling, normalize=True)
                vectors.append(await asyncio.get_running_loop().run_in_executor(embedding_thread, embed))
        except SequenceBusyError as exc:  # no free sequence: the engine runs one generation per slot, so never here
            raise APIError(503, f"the server is busy: {exc}") from None
        finally:
            leaving.cancel()
        n_tokens = sum(len(tokens) for tokens in inputs)
        return JSONResponse({
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": config.model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })  # fmt: skip

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        model, engine = ready()
        ids = isinstance(body.prompt, list) and isinstance(body.prompt[0], int)
        if ids:
            tokens = [int(t) for t in body.prompt]  # type: ignore[arg-type]
            _check_tokens(model, tokens, "prompt")
            text = await asyncio.to_thread(prompt_text, model.tokenizer, tokens)
        else:
            text = body.prompt if isinstance(body.prompt, str) else str(body.prompt[0])
            tokens = await asyncio.to_thread(model.tokenize, text, special=True)  # a long text: off the event loop
        if body.suffix:  # OpenAI's insertion: the prompt (a text as plain text) before the middle, the suffix after
            bos = model.tokenizer.bos if model.tokenizer.adds_bos else None
            if ids:
                prefix = tokens[1:] if tokens[:1] == [bos] else tokens
            else:
                prefix = await asyncio.to_thread(model.tokenize, text, add_bos=False)
            suffix = await asyncio.to_thread(model.tokenize, body.suffix, add_bos=False)
            try:
                tokens = fim_tokens(model.tokenizer, prefix, suffix, suffix_first=config.spm_infill)
            except InfillNotSupportedError as exc:
                raise APIError(400, f"suffix: {exc}", param="suffix") from None
        n_top = body.logprobs
        score = body.echo and n_top is not None
        job, queue = await _submit(
            model, engine, tokens, body, "prompt", n_top, score_prompt=score, defaults=config.sampling_defaults
        )
        gen = job.generation
        meta = CompletionMeta.new("cmpl", config.model_name)
        chunks = TextCompletionChunks(model.tokenizer, meta, gen, text, echo=body.echo)
        if body.stream:
            return _stream(
                job,
                queue,
                first=chunks.first(),
                piece=chunks.piece,
                last=chunks.last,
                usage_chunk=_usage_chunk(meta, "text_completion", gen) if body.include_usage else None,
            )
        answer = await _collect(job, queue, request)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        whole = chunks.whole(answer)["choices"][0]
        use = usage(gen.n_prompt, gen.n_generated)
        return JSONResponse(text_completion(meta, whole["text"], gen.finish_reason, use, whole["logprobs"]))

    @app.post("/completion")
    @app.post("/completions")
    async def native_completion(body: NativeCompletionRequest, request: Request) -> Response:
        """llama-server's own completion endpoint (native.py's bodies)."""
        model, engine = ready()
        tokens = await asyncio.to_thread(_mixed_prompt, model, body.prompt)  # a long text: off the event loop
        return await native_answer(model, engine, tokens, body, request)

    @app.post("/infill")
    async def infill(body: InfillRequest, request: Request) -> Response:
        """llama-server's fill-in-the-middle completion (infill.py's prompt), answered as /completion; 501 for a
        model whose vocabulary has no FIM tokens."""
        model, engine = ready()
        _take_defaults(body, config.sampling_defaults)  # the answer's room (-n) sizes the prompt

        def prompt() -> list[int]:
            return infill_tokens(
                model.tokenizer,
                _mixed_tokens(model, body.input_prefix, "input_prefix"),
                _mixed_tokens(model, body.input_suffix, "input_suffix"),
                [ExtraFile(chunk.text, chunk.filename) for chunk in body.input_extra],
                _mixed_tokens(model, body.prompt, "prompt", special=True),
                n_batch=config.n_batch,
                n_ctx=model.n_ctx,
                n_predict=body.max_tokens or 0,
                suffix_first=config.spm_infill,
            )

        try:
            tokens = await asyncio.to_thread(prompt)
        except InfillNotSupportedError as exc:
            raise APIError(501, str(exc), type="not_supported_error") from None
        return await native_answer(model, engine, tokens, body, request)

    async def native_answer(
        model: Model, engine: Engine, tokens: list[int], body: NativeCompletionRequest, request: Request
    ) -> Response:
        """The answer to a /completion (or /infill) body for the prompt tokens."""
        biases = body.text_biases()  # texts given as logit_bias keys: tokenized off the event loop as prompts are
        texts = await asyncio.to_thread(lambda: {text: model.tokenize(text, add_bos=False) for text in biases})
        body.resolve(texts, end_of_generation(model) if body.ignore_eos else [])
        clock = native.Clock()
        job, queue = await _submit(
            model, engine, tokens, body, "prompt", body.n_probs or None, defaults=config.sampling_defaults
        )
        gen = job.generation
        released = ReleasedLogprobs(gen.token_logprobs)
        sent = 0  # generated ids that went out in chunks (return_tokens)

        def new_tokens() -> list[int]:  # a stream's chunks carry their tokens, as llama-server's
            nonlocal sent
            ids, sent = gen.generated[sent:], len(gen.generated)
            return ids if body.return_tokens or body.stream else []

        def probs(text: str, *, end: bool = False) -> list[dict[str, Any]] | None:
            if not body.n_probs:
                return None
            entries = released.take(text, uncut_end=end and not gen.stopped_by_string)
            return native.probabilities(model.tokenizer, entries)

        def last(content: str) -> dict[str, Any]:
            text = prompt_text(model.tokenizer, tokens)
            room = model.n_ctx - len(tokens)
            full = gen.finish_reason == "length" and (body.max_tokens is None or body.max_tokens > room)
            return native.final(
                content, new_tokens(), gen, body=body, model_name=config.model_name, prompt=text, n_ctx=model.n_ctx,
                clock=clock, probs=None if body.stream else probs(content, end=True), truncated=full,
            )  # fmt: skip

        if body.stream:

            def piece(text: str) -> dict[str, Any]:
                clock.saw_event()
                return native.chunk(text, new_tokens(), gen, probs(text))

            def end(reason: FinishReason | None) -> dict[str, Any]:
                clock.saw_event()
                return last("")

            return _stream(job, queue, first=[], piece=piece, last=end, usage_chunk=None, done_marker=False)
        answer = await _collect(job, queue, request, on_event=clock.saw_event)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(last(answer))

    @app.post("/slots/{id_slot}")
    async def slot_action(id_slot: int, action: str, body: SlotFileRequest | None = None) -> JSONResponse:
        """llama-server's slot actions: save / restore a slot's cached tokens to / from a file, or erase them."""
        model, _ = ready()
        if config.slot_save_path is None:
            raise APIError(501, "slot actions need --slot-save-path", type="not_supported_error")
        if action not in ("save", "restore", "erase"):
            raise APIError(400, f"action must be save, restore or erase, got {action!r}", param="action")
        if not 0 <= id_slot < model.n_seq:
            raise APIError(400, f"slot {id_slot} out of [0, {model.n_seq})", param="id_slot")
        filename = body.filename if body is not None else None
        if action != "erase" and filename is None:
            raise APIError(400, "the body needs a filename", param="filename")
        try:
            if action == "erase":
                return JSONResponse(await asyncio.to_thread(slots.erase, model, id_slot))
            act = slots.save if action == "save" else slots.restore
            return JSONResponse(await asyncio.to_thread(act, model, id_slot, config.slot_save_path, filename))
        except SequenceBusyError as exc:
            raise APIError(409, str(exc), param="id_slot") from None
        except FileNotFoundError:  # llama-server's status for it
            raise APIError(400, f"no saved slot named {filename!r}", param="filename") from None
        except (ValueError, OSError) as exc:  # a bad name or file; a state this server cannot hold (model, cache, size)
            raise APIError(400, str(exc), param="filename") from None

    @app.get("/slots")
    async def slots_status(fail_on_no_slot: str | None = None) -> JSONResponse:
        """llama-server's slot list: each slot's size, whether a request decodes in it, the tokens it holds (with
        --embeddings, the sequence embeddings take too). fail_on_no_slot (given at all): 503 where --parallel requests
        run already."""
        model, _ = ready()
        status = await asyncio.to_thread(model.sequence_status)
        if fail_on_no_slot is not None and sum(busy for _, busy in status) >= config.parallel:
            raise APIError(503, "no slot available")
        return JSONResponse([{"id": i, "n_ctx": model.n_ctx, "is_processing": busy, "n_tokens": n}
                             for i, (n, busy) in enumerate(status)])  # fmt: skip

    @app.post("/apply-template")
    async def apply_template(body: ChatCompletionRequest) -> JSONResponse:
        """llama-server's: the text of the prompt a chat completion of the same body evaluates (the template's, a
        final assistant message continued, tools written in)."""
        model, _ = ready()
        tokens, _ = await asyncio.to_thread(_chat_prompt, model, body)
        return JSONResponse({"prompt": prompt_text(model.tokenizer, tokens)})

    @app.get("/props")
    async def props() -> JSONResponse:
        model, _ = ready()
        defaults = NativeCompletionRequest(prompt=" ")
        _take_defaults(defaults, config.sampling_defaults)  # the sampling flags' (--temp, -n, ...), as requests get
        return JSONResponse(
            native.props(model, defaults, model_path=config.model_path, slots=config.parallel, version=__version__)
        )

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        model, engine = ready()
        tokens, tool_use, reasoning = await asyncio.to_thread(chat_setup, model, body)  # template, tokens: off the loop
        job, queue = await _submit(
            model, engine, tokens, body, "messages", body.n_top, tools=tool_use, defaults=config.sampling_defaults
        )
        gen = job.generation
        meta = CompletionMeta.new("chatcmpl", config.model_name)
        chunks = ChatCompletionChunks(model.tokenizer, meta, gen, reasoning, tool_use)
        if body.stream:
            return _stream(
                job,
                queue,
                first=chunks.first(),
                piece=chunks.piece,
                last=chunks.last,
                usage_chunk=_usage_chunk(meta, "chat.completion.chunk", gen) if body.include_usage else None,
            )
        answer = await _collect(job, queue, request)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        use = usage(gen.n_prompt, gen.n_generated)
        content, reasoning_content, calls = chunks.message(answer, gen.finish_reason)
        scores = chunks.scores(answer, end=True)
        return JSONResponse(chat_completion(meta, content, gen.finish_reason, use, scores, reasoning_content, calls))

    def chat_setup(model: Model, body: ChatCompletionRequest) -> tuple[list[int], ToolUse, ReasoningSplit | None]:
        """A chat request's prompt tokens (with thinking off, a reasoning the template opens closed, as llama-server
        does), its tool use and how its answer splits into reasoning and content."""
        tokens, tool_use = _chat_prompt(model, body)
        thinking_off = model.template_variables(body.chat_template_kwargs).get("enable_thinking") is False
        if thinking_off and open_at_end(_prompt_end(model, tokens)):  # DeepSeek-R1's template opens it anyway
            tokens = [*tokens, *model.tokenize(CLOSE, add_bos=False, special=True)]
        reasoning_format = "none" if body.answers_json else body.reasoning_format or config.reasoning_format
        return tokens, tool_use, _reasoning_split(model, tokens, reasoning_format)

    def converted_prompt(
        model: Model, convert: Callable[[], ChatCompletionRequest], names: dict[str, str]
    ) -> tuple[ChatCompletionRequest, list[int], ToolUse, ReasoningSplit | None]:
        """Another API's request as the chat completion it becomes (convert), and chat_setup's for it; the errors of
        both name its fields as that API names them (names: the chat completion's field -> the API's)."""
        chat = _converted_chat(convert, names)
        with _errors_named_as(names):
            return chat, *chat_setup(model, chat)

    async def converted_generation(
        model: Model,
        engine: Engine,
        convert: Callable[[], ChatCompletionRequest],
        names: dict[str, str],
        param: str,
        *,
        logprobs: bool = False,
    ) -> tuple[ChatCompletionRequest, list[int], Job, asyncio.Queue[Event], ChatCompletionChunks]:
        """Another API's request, as the chat completion it became (converted_prompt's), started: its prompt tokens,
        job and events, and the chat route's chunks of its answer (the reasoning kept apart: these APIs have blocks
        of their own for it); logprobs: the API gives log-probabilities where the chat completion asks for them."""
        chat, tokens, tool_use, reasoning = await asyncio.to_thread(converted_prompt, model, convert, names)
        with _errors_named_as(names):
            job, queue = await _submit(
                model,
                engine,
                tokens,
                chat,
                param,
                chat.n_top if logprobs else None,
                tools=tool_use,
                defaults=config.sampling_defaults,
            )
        meta = CompletionMeta.new("chatcmpl", config.model_name)
        chunks = ChatCompletionChunks(model.tokenizer, meta, job.generation, _split_apart(reasoning), tool_use)
        return chat, tokens, job, queue, chunks

    @app.post("/v1/messages")
    async def messages(body: anthropic.MessagesRequest, request: Request) -> Response:
        """Anthropic's Messages API over the chat route's prompt and sampling (anthropic.py)."""
        model, engine = ready()
        chat, tokens, job, queue, chunks = await converted_generation(
            model, engine, body.chat, ANTHROPIC_FIELDS, "messages"
        )
        gen = job.generation
        message_id = anthropic.new_message_id()
        if body.stream:
            events = anthropic.MessageEvents(message_id, config.model_name, gen, chat.max_tokens)

            def failed(message: str) -> dict[str, Any]:
                return error_body(500, message, type="server_error", anthropic=True)

            return _events_stream(job, queue, chunks, events, events.first(len(tokens)), failed)
        answer = await _collect(job, queue, request)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        content, reasoning_content, calls = chunks.message(answer, gen.finish_reason)
        blocks = anthropic.blocks(content, reasoning_content, calls)
        return JSONResponse(anthropic.message(message_id, config.model_name, blocks, gen, chat.max_tokens))

    @app.post("/v1/responses")
    @app.post("/responses")
    async def create_response(body: responses.ResponsesRequest, request: Request) -> Response:
        """OpenAI's Responses API over the chat route's prompt, sampling and tool calls (responses.py)."""
        model, engine = ready()
        chat, _, job, queue, chunks = await converted_generation(
            model, engine, body.chat, RESPONSES_FIELDS, "input", logprobs=True
        )
        gen = job.generation

        def count(text: str) -> int:
            return len(model.tokenize(text, add_bos=False))

        response = responses.ResponseObject(body, chat, config.model_name, count)
        if body.stream:
            events = responses.ResponseEvents(response, gen)
            return _events_stream(job, queue, chunks, events, events.first(), events.failure)
        answer = await _collect(job, queue, request)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        content, reasoning_content, calls = chunks.message(answer, gen.finish_reason)
        scores = chunks.scores(answer, end=True)
        items = responses.output_items(content, reasoning_content, calls, cut=gen.finish_reason == "length",
                                       logprobs=scores["content"] if scores else None)  # fmt: skip
        return JSONResponse(response(items, gen))

    @app.post("/v1/responses/input_tokens")
    @app.post("/responses/input_tokens")
    async def count_input_tokens(body: responses.ResponsesRequest) -> JSONResponse:
        """The tokens /v1/responses would evaluate for the same body (the openai SDK's responses.input_tokens)."""
        model, _ = ready()
        _, tokens, _, _ = await asyncio.to_thread(converted_prompt, model, body.chat, RESPONSES_FIELDS)
        return JSONResponse({"object": "response.input_tokens", "input_tokens": len(tokens)})

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(body: anthropic.CountTokensRequest) -> JSONResponse:
        model, _ = ready()
        _, tokens, _, _ = await asyncio.to_thread(converted_prompt, model, body.chat, ANTHROPIC_FIELDS)
        return JSONResponse({"input_tokens": len(tokens)})

    return app


# the chat completion's fields as the Responses API and Anthropic's name them, for their errors
RESPONSES_FIELDS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}
ANTHROPIC_FIELDS = {"stop": "stop_sequences", "response_format": "output_config.format"}


class _DeltaEvents(Protocol):
    """A streamed answer's events built from the chat route's deltas (anthropic.MessageEvents,
    responses.ResponseEvents)."""

    def piece(self, delta: dict[str, Any]) -> list[dict[str, Any]]: ...

    def last(self, delta: dict[str, Any]) -> list[dict[str, Any]]: ...


def _events_stream(
    job: Job,
    queue: asyncio.Queue[Event],
    chunks: ChatCompletionChunks,
    events: _DeltaEvents,
    first: list[dict[str, Any]],
    failure: Callable[[str], dict[str, Any] | list[dict[str, Any]]],
) -> EventSourceResponse:
    """Another API's stream: its named events, built from the chat route's chunks' deltas, no [DONE]."""

    def delta(chunk: dict[str, Any]) -> dict[str, Any]:
        """The chunk's delta, with its log-probability entries (if kept) under "logprobs"."""
        choice = chunk["choices"][0]
        return {**choice["delta"], "logprobs": (choice["logprobs"] or {}).get("content") or []}

    def piece(text: str) -> list[dict[str, Any]]:
        chunk = chunks.piece(text)
        return events.piece(delta(chunk)) if chunk is not None else []

    def last(reason: FinishReason | None) -> list[dict[str, Any]]:
        return events.last(delta(chunks.last(reason)))

    return _stream(job, queue, first=first, piece=piece, last=last, usage_chunk=None, done_marker=False,
                   named_events=True, failure=failure)  # fmt: skip


def _converted_chat(convert: Callable[[], ChatCompletionRequest], names: dict[str, str]) -> ChatCompletionRequest:
    """Another API's request as a chat completion's: a 400 for what that refuses (sampling out of range, ...), its
    field named as that API names it (names: the chat completion's field -> the API's)."""
    try:
        return convert()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if loc and loc[0] in names:
            loc[0] = names[loc[0]]
        where = ".".join(loc)
        raise APIError(400, f"{where}: {validation_text(first)}", param=where) from None


@contextmanager
def _errors_named_as(names: dict[str, str]) -> Iterator[None]:
    """The chat route's errors (tools, grammars, templates) with its fields named as another API names them (names:
    the chat completion's field -> the API's): in param, and in the message where the name is an identifier such as
    response_format ("messages" is left in the prose)."""
    try:
        yield
    except APIError as exc:
        message = exc.message
        for chat_name, own_name in names.items():
            if "_" in chat_name:
                message = re.sub(rf"\b{chat_name}\b", own_name, message)
        param = names.get(exc.param or "", exc.param)
        raise APIError(exc.status, message, param=param, type=exc.type, details=exc.details) from None


def _split_apart(reasoning: ReasoningSplit | None) -> ReasoningSplit | None:
    """A reasoning split for an API with its own reasoning blocks: never left inline (deepseek-legacy) when streamed."""
    return None if reasoning is None else replace(reasoning, inline_when_streamed=False)


def _chat_prompt(model: Model, body: ChatCompletionRequest) -> tuple[list[int], ToolUse]:
    """A chat request's prompt tokens and its tool use (APIError 400 for what the template cannot take)."""
    try:
        checked_variables(body.chat_template_kwargs or {})
    except ChatTemplateError as exc:
        raise APIError(400, str(exc), param="chat_template_kwargs") from None
    tool_use = _tool_use(model, body)
    try:
        # a final assistant message is continued, as llama-server's prefill_assistant (on by default) does: its text
        # parts follow one another as they are
        messages = [m.for_template() for m in body.messages[:-1]]
        messages.append(body.messages[-1].for_template("" if body.messages[-1].role == "assistant" else "\n"))
        tokens = tool_use.prompt_tokens(
            model, messages, prefill_assistant=True, template_kwargs=body.chat_template_kwargs
        )
    except ValueError as exc:  # no template (the error says how to give one), one that is not UTF-8 or refuses
        raise APIError(400, str(exc), param="messages") from None  # the messages (ChatTemplateError); bad text
    return tokens, tool_use


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """An embedding as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _tool_use(model: Model, body: ChatCompletionRequest) -> ToolUse:
    """How the request's answer uses its tools (llama-server's: a 400 for tools that are not OpenAI's, a template
    that writes no tool calls, or tools besides another constraint on the answer)."""
    tools, choice = body.tools_and_choice()
    try:
        tool_use = ToolUse.of(
            model, tools, choice, parallel=body.parallel_tool_calls, template_kwargs=body.chat_template_kwargs
        )
    except ValueError as exc:
        raise APIError(400, str(exc), param="tools") from None
    try:
        constraint = body.constraint_field()
    except GrammarError as exc:
        raise APIError(400, str(exc)) from None
    if tool_use.syntax is not None and constraint is not None:
        raise APIError(400, f"tools and {constraint} both constrain the answer: give one of them", param="tools")
    return tool_use


def _prompt_end(model: Model, tokens: list[int]) -> str:
    """The text of a prompt's last tokens: enough to see whether it ends in `<think>` (reasoning.open_at_end)."""
    return model.detokenize(tokens[-16:], special=True)


def _reasoning_split(model: Model, tokens: list[int], reasoning_format: str) -> ReasoningSplit | None:
    """How the answer to a chat prompt is split into reasoning and content (llama-server's reasoning formats:
    "none" keeps it whole; the others split a thinking model's answers, "deepseek-legacy" leaving a streamed
    answer's reasoning in its content between the tags); None: not split."""
    if reasoning_format == "none":
        return None
    prompt_end = _prompt_end(model, tokens)
    template = model.chat_template
    if not thinks(template.source if isinstance(template, ChatTemplate) else None, prompt_end):
        return None
    legacy = reasoning_format == "deepseek-legacy"
    return ReasoningSplit(open_at_start=open_at_end(prompt_end), inline_when_streamed=legacy)


def _piece(model: Model, token: int) -> str | list[int]:
    """A token's text for /tokenize's pieces; a piece that is not whole UTF-8 (part of a character) as its bytes, as
    llama-server gives it."""
    piece = model.tokenizer.piece(token, special=True)
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def _mixed_prompt(model: Model, prompt: str | list[int | str]) -> list[int]:
    """llama-server's prompt: text, or a list of token ids and texts (_mixed_tokens: special tokens parsed, the BOS
    before a leading text)."""
    tokens = _mixed_tokens(model, prompt, "prompt", special=True, bos=True)
    if not tokens:
        raise APIError(400, "the prompt is empty", param="prompt")
    return tokens


def _mixed_tokens(
    model: Model, value: str | list[int | str], param: str, *, special: bool = False, bos: bool = False
) -> list[int]:
    """Text, or token ids and texts mixed, as tokens, each text tokenized in turn (special tokens' texts parsed where
    special; bos: the BOS before a leading text)."""
    parts = [value] if isinstance(value, str) else value
    tokens: list[int] = []
    for i, part in enumerate(parts):
        tokens += model.tokenize(part, add_bos=bos and i == 0, special=special) if isinstance(part, str) else [part]
    _check_tokens(model, tokens, param)
    return tokens


def _take_defaults(body: _Generate, defaults: Mapping[str, Any]) -> None:
    """The server's sampling defaults (llama-server's --temp, -n, ...) for the fields the body leaves out (a limit
    given under another name, n_predict or max_completion_tokens, is given)."""
    given = set(body.model_fields_set)
    if given & {"n_predict", "max_completion_tokens"} & set(type(body).model_fields):  # where the route reads them
        given.add("max_tokens")
    for name, value in defaults.items():
        if name not in given:
            setattr(body, name, value)
    limit = defaults.get("max_tokens")
    if limit and (body.max_tokens is None or body.max_tokens > limit):  # -n is a limit too, as llama-server's
        body.max_tokens = limit


def _check_tokens(model: Model, tokens: list[int], param: str) -> None:
    bad = [t for t in tokens if not 0 <= t < model.n_vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is out of the vocabulary (0..{model.n_vocab - 1})", param=param)


async def _submit(
    model: Model,
    engine: Engine,
    tokens: list[int],
    body: _Generate,
    param: str,
    logprobs: int | None,
    *,
    score_prompt: bool = False,
    tools: ToolUse | None = None,
    defaults: Mapping[str, Any],
) -> tuple[Job, asyncio.Queue[Event]]:
    """Starts a generation for tokens (logprobs: alternatives per token when log-probabilities are asked for;
    score_prompt: the prompt's too; tools: a chat's, which may hold the answer to calls and show their markers;
    defaults: the server's for the fields the body leaves out) and queues it on the engine; its events arrive in the
    returned queue."""
    _take_defaults(body, defaults)
    _check_tokens(model, list(body.bias), "logit_bias")
    if body.id_slot >= model.n_seq:
        raise APIError(400, f"id_slot {body.id_slot} out of [0, {model.n_seq})", param="id_slot")
    name = None
    try:
        name = "tools" if tools is not None and tools.forced else body.constraint_field()

        def start() -> Generation:
            return model.start(
                tokens,
                sampling=body.sampling(),
                # past the slot's room, the answer ends where the slot is full ("length"), as in llama-server
                max_tokens=model.bounded(body.max_tokens, tokens),
                sequence=body.id_slot if body.id_slot >= 0 else None,
                stop=body.stops,
                logprobs=logprobs,
                score_prompt=score_prompt,
                grammar=tools.grammar() if tools is not None and tools.forced else body.constraint(),
                cache_prompt=body.cache_prompt,
                shown_tokens=tools.shown_tokens(model) if tools is not None else frozenset(),
            )

        # on a worker thread: a large grammar takes a while to parse, which the event loop (every other request's
        # stream) must not wait for; constrained generations' steps wait for llama.cpp's grammar engine meanwhile
        gen = await asyncio.to_thread(start)
    except GrammarError as exc:
        raise APIError(400, str(exc), param=name) from None
    except ContextOverflowError:
        # llama-server's answer, whose type and counts clients look for (the only overflow here: max_tokens is bounded)
        raise APIError(
            400,
            f"request ({len(tokens)} tokens) exceeds the available context size ({model.n_ctx} tokens, one slot's), "
            "try increasing it",
            param=param,
            type="exceed_context_size_error",
            details={"n_prompt_tokens": len(tokens), "n_ctx": model.n_ctx},
        ) from None
    except ValueError as exc:
        raise APIError(400, str(exc), param=param) from None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # called by the engine thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is stopping
            gen.cancel()

    job = Job(gen, emit)
    try:
        engine.submit(job)
    except QueueFullError:
        raise APIError(503, "the server is busy: every slot is taken and the queue is full; retry later") from None
    return job, queue


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _watch_disconnect(request: Request, gen: Generation, queue: asyncio.Queue[Event]) -> None:
    """Cancels gen when the client goes away."""
    await _disconnected(request)
    gen.cancel()
    queue.put_nowait(_CANCELLED)


async def _collect(
    job: Job, queue: asyncio.Queue[Event], request: Request, on_event: Callable[[], None] | None = None
) -> str | None:
    """The whole answer; None when the client went away (its generation is cancelled). on_event: called as each event
    arrives."""
    gen = job.generation
    watcher = asyncio.create_task(_watch_disconnect(request, gen, queue))
    parts: list[str] = []
    cutoff = _Cutoff(request.app.state.stopping.is_set)  # set by serve's server when it is told to stop
    try:
        while True:
            event = await cutoff.next_event(queue)
            if event is None:  # a JSON error, not uvicorn's cancelled task's plain-text 500 and traceback
                raise APIError(503, "the server is shutting down: the answer was not finished")
            if on_event is not None:
                on_event()
            if event is _CANCELLED:
                return None
            if event.error is not None:
                raise APIError(500, f"the generation failed: {event.error}", type="server_error")
            parts.append(event.text)
            if event.finished:
                return "".join(parts)
    finally:
        watcher.cancel()
        if not gen.done:
            gen.cancel()


def _usage_chunk(meta: CompletionMeta, obj: str, gen: Generation) -> Callable[[], dict[str, Any]]:
    """OpenAI's last chunk with stream_options.include_usage: no choices, the usage."""

    def chunk() -> dict[str, Any]:
        use = usage(gen.n_prompt, gen.n_generated)
        return {"id": meta.id, "object": obj, "created": meta.created, "model": meta.model, "choices": [], "usage": use}

    return chunk


# a request's time to finish once it sees the server is stopping, before it says it is cut: within uvicorn's 5 s
# (serve_cmd) and sse-starlette's grace (_stream), which it may see up to a poll later
SHUTDOWN_NOTICE_S = 3.5
STOPPING_POLL_S = 0.5  # how often a request waiting for its next event looks whether the server stops


@dataclass
class _Cutoff:
    """A request's wait for its generation's events while the server may be stopping: once stopped() is true, the
    answer has SHUTDOWN_NOTICE_S to finish, then is given up, so that it can say so before it is cancelled (a stream
    that just ends, as if whole; a non-streamed answer's plain-text 500)."""

    stopped: Callable[[], bool]
    cut_at: float | None = None

    async def next_event(self, queue: asyncio.Queue[Event]) -> Event | None:
        """The queue's next event; None once the answer is given up."""
        loop = asyncio.get_running_loop()
        while True:
            if self.stopped():
                self.cut_at = self.cut_at or loop.time() + SHUTDOWN_NOTICE_S
                if loop.time() >= self.cut_at:
                    return None
            try:
                return await asyncio.wait_for(queue.get(), STOPPING_POLL_S)
            except asyncio.TimeoutError:  # not the built-in TimeoutError before Python 3.11
                pass


def _stream(
    job: Job,
    queue: asyncio.Queue[Event],
    *,
    first: list[dict[str, Any]],
    piece: Callable[[str], dict[str, Any] | list[dict[str, Any]] | None],
    last: Callable[[FinishReason | None], dict[str, Any] | list[dict[str, Any]]],
    usage_chunk: Callable[[], dict[str, Any]] | None,
    done_marker: bool = True,
    named_events: bool = False,
    failure: Callable[[str], dict[str, Any] | list[dict[str, Any]]] | None = None,
) -> EventSourceResponse:
    """Server-sent events: the first chunks, the chunks of each text piece, the finishing chunks, then [DONE]
    (OpenAI's; not in llama-server's own streams: done_marker False); named_events: each event named by its chunk's
    "type" (Anthropic's and the Responses API's); a failed generation's event is failure(message) (default: OpenAI's
    error object). A client that disconnects cancels the generation (sse-starlette cancels this generator)."""
    gen = job.generation

    def sent(chunks: dict[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, str]]:
        """Each chunk as an event (sse-starlette writes a dict with the response's separator)."""
        chunks = [] if chunks is None else [chunks] if isinstance(chunks, dict) else chunks
        return [{"data": json.dumps(c), **({"event": c["type"]} if named_events else {})} for c in chunks]

    stopping = anyio.Event()  # set by sse-starlette when the server is told to stop
    cutoff = _Cutoff(stopping.is_set)

    async def events() -> AsyncIterator[dict[str, str] | str]:
        try:
            for event in sent(first):
                yield event
            while True:
                event = await cutoff.next_event(queue)
                if event is None:
                    message = "the server is shutting down: the answer ends here, unfinished"
                    cut = (
                        failure(message) if failure is not None else error_body(503, message, type="unavailable_error")
                    )
                    for out in sent(cut):
                        yield out
                    break
                if event.error is not None:
                    message = f"the generation failed: {event.error}"
                    failed = failure(message) if failure is not None else error_body(500, message, type="server_error")
                    for out in sent(failed):
                        yield out
                    break
                for out in sent(piece(event.text) if event.text else None):
                    yield out
                if event.finished:
                    for out in sent(last(gen.finish_reason)):
                        yield out
                    if usage_chunk is not None:
                        yield json.dumps(usage_chunk())
                    break
            if done_marker:
                yield "[DONE]"
        finally:
            if not gen.done:
                gen.cancel()

    return EventSourceResponse(events(), sep="\n", shutdown_event=stopping,
                               shutdown_grace_period=SHUTDOWN_NOTICE_S + STOPPING_POLL_S + 0.5)  # fmt: skip

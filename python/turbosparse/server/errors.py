"""Errors as OpenAI's API writes them: {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status; on
Anthropic's routes (/v1/messages...) also as Anthropic's: {"type": "error", "error": {"type", "message", ...}}."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    503: "unavailable_error",
}


# Anthropic's names where OpenAI's differ (llama-server's exceed_context_size_error: Anthropic's prompt too long)
_ANTHROPIC_TYPES = {
    "server_error": "api_error",
    "unavailable_error": "overloaded_error",
    "exceed_context_size_error": "invalid_request_error",
}
_ANTHROPIC_PATH = "/v1/messages"  # and the paths below it


class APIError(Exception):
    """An error answered to the client with this status and an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _TYPES.get(status, "server_error")
        self.details = details or {}  # more fields of the error object (llama-server's n_prompt_tokens, n_ctx)


def error_body(
    status: int,
    message: str,
    *,
    param: str | None = None,
    type: str | None = None,
    anthropic: bool = False,
    details: dict[str, object] | None = None,
) -> dict:
    """The error object (anthropic: one that is Anthropic's too, its type named as Anthropic names it), with details'
    fields."""
    kind = type or _TYPES.get(status, "server_error")
    more = details or {}
    if anthropic:
        if kind == "exceed_context_size_error" and {"n_prompt_tokens", "n_ctx"} <= set(more):
            # Anthropic's words, which clients look for (a conversation compacted when its prompt is too long)
            # (a prompt leaves an answer one token at least: n_ctx - 1 is the most it may be)
            message = f"prompt is too long: {more['n_prompt_tokens']} tokens > {int(more['n_ctx']) - 1} maximum"
        kind = "request_too_large" if status == 413 else _ANTHROPIC_TYPES.get(kind, kind)
        return {"type": "error", "error": {"type": kind, "message": message, "param": param, "code": status, **more}}
    return {"error": {"message": message, "type": kind, "param": param, "code": status, **more}}


def error_response(error: APIError, path: str) -> JSONResponse:
    """The error answered to a request for path."""
    anthropic = path == _ANTHROPIC_PATH or path.startswith(_ANTHROPIC_PATH + "/")
    body = error_body(
        error.status, error.message, param=error.param, type=error.type, anthropic=anthropic, details=error.details
    )
    return JSONResponse(body, error.status)


def validation_text(error: Mapping[str, Any]) -> str:
    """A pydantic error's message, less the "Value error, " it puts before a validator's own words (at each level
    of a message that quotes another's)."""
    return re.sub(r"(^|: )Value error, ", r"\1", str(error.get("msg", "invalid value")))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line naming the first offending field, e.g. "max_tokens: Input should be greater than or equal to 0"."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    message = validation_text(first)
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    field = ".".join(loc) or None
    return (f"{field}: {message}" if field else message), field


def route_path(scope: Scope) -> str:
    """The path the routes see: the request's, less the root path (--api-prefix puts the prefix there)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def install_handlers(app: FastAPI) -> None:
    """Every error, including FastAPI's own (validation, unknown route, wrong method), as an error object."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, route_path(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return error_response(APIError(400, message, param=field), route_path(request.scope))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail)), route_path(request.scope))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, route_path(request.scope))
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}")
        return error_response(error, route_path(request.scope))

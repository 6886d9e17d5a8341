"""The OpenAI completion objects (as llama-cpp-python returns them): text completions, chat completions and their
streamed chunks. Shared by turbosparse.Llama and the server, so both answer in one shape."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from turbosparse.generation import FinishReason


@dataclass(frozen=True)
class CompletionMeta:
    """What every object of one completion repeats: its id, creation time and model name."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, kind: str, model: str) -> CompletionMeta:
        """kind: "cmpl" (text completion) or "chatcmpl"."""
        return cls(id=f"{kind}-{uuid.uuid4()}", model=model)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def text_completion(
    meta: CompletionMeta,
    text: str,
    finish_reason: FinishReason | None,
    use: dict[str, int],
    logprobs: dict | None = None,
) -> dict:
    """A whole text completion: a streamed chunk's shape (OpenAI uses one object name for both) plus usage.
    logprobs: logprobs.completion_logprobs's object, when asked for."""
    return {**text_completion_chunk(meta, text, finish_reason, logprobs), "usage": use}


def text_completion_chunk(
    meta: CompletionMeta, text: str, finish_reason: FinishReason | None, logprobs: dict | None = None
) -> dict:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def chat_completion(
    meta: CompletionMeta,
    text: str,
    finish_reason: FinishReason | None,
    use: dict[str, int],
    logprobs: dict | None = None,
) -> dict:
    """logprobs: logprobs.chat_logprobs's object, when asked for."""
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": use,
    }


def chat_completion_chunk(
    meta: CompletionMeta, delta: dict[str, Any], finish_reason: FinishReason | None, logprobs: dict | None = None
) -> dict:
    """delta: {"role": "assistant"} first, then {"content": text} pieces, then {} with the finish reason."""
    return {
        "id": meta.id,
        "model": meta.model,
        "created": meta.created,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
    }

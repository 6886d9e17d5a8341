"""llama-server's own bodies, beside OpenAI's: /completion's answer and stream chunks, and /props.

Field names and meanings as llama-server's (tools/server/README.md in llama.cpp): a client written for llama-server
(its web UI, SillyTavern's llama.cpp backend, benchmark scripts) reads them unchanged."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from turbosparse.chat_template import ChatTemplate
from turbosparse.errors import ChatTemplateError
from turbosparse.generation import Generation
from turbosparse.logprobs import TokenLogprob, chat_logprobs
from turbosparse.model import Model
from turbosparse.server.schemas import NativeCompletionRequest
from turbosparse.tokenizer import Tokenizer


@dataclass
class Clock:
    """When a request was submitted, when its first text (or its end) came, and when it ended: llama-server's
    timings, measured from the request's side (the prompt's time includes a wait for a slot)."""

    submitted: float = field(default_factory=time.perf_counter)
    first: float | None = None
    ended: float | None = None

    def saw_event(self) -> None:
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.ended = now

    def timings(self, n_cached: int, n_prompt: int, n_predicted: int) -> dict[str, float]:
        """n_prompt: the prompt tokens evaluated, n_cached those a slot held already."""
        first = self.first if self.first is not None else time.perf_counter()
        ended = self.ended if self.ended is not None else first
        prompt_ms, predicted_ms = 1000 * (first - self.submitted), 1000 * (ended - first)
        return {
            "cache_n": n_cached,
            "prompt_n": n_prompt,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / max(n_prompt, 1),
            "prompt_per_second": 1000 * n_prompt / prompt_ms if prompt_ms > 0 else 0.0,
            "predicted_n": n_predicted,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(n_predicted, 1),
            "predicted_per_second": 1000 * n_predicted / predicted_ms if predicted_ms > 0 else 0.0,
        }


def stop_type(gen: Generation) -> str:
    """Why the text ended: "eos" (an end-of-generation token), "word" (a stop string), "limit" (n_predict or a full
    slot), "none" (cancelled)."""
    if gen.stopped_by_string:
        return "word"
    if gen.finish_reason == "length":
        return "limit"
    return "eos" if gen.finish_reason == "stop" else "none"


def generation_settings(body: NativeCompletionRequest, n_ctx: int) -> dict[str, Any]:
    """The request's sampling settings, as llama-server echoes them."""
    return {
        "n_ctx": n_ctx,
        "n_predict": -1 if body.max_tokens is None else body.max_tokens,
        "seed": -1 if body.seed is None else body.seed,
        "temperature": body.temperature,
        "top_k": body.top_k,
        "top_p": body.top_p,
        "min_p": body.min_p,
        "repeat_last_n": body.repeat_last_n,
        "repeat_penalty": body.repeat_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "stop": body.stops,
        "n_probs": body.n_probs,
        "ignore_eos": body.ignore_eos,
        "stream": body.stream,
        "logit_bias": [[token, value if math.isfinite(value) else False] for token, value in body.bias.items()],
        "grammar": body.grammar or "",
        "cache_prompt": body.cache_prompt,
        "id_slot": body.id_slot,
        "max_tokens": -1 if body.max_tokens is None else body.max_tokens,
        "n_keep": 0,
        "typical_p": 1.0,
        "mirostat": 0,
        "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],  # the sampler's order (sampling.py)
    }


def probabilities(tokenizer: Tokenizer, entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """completion_probabilities: the chat completion's shape (each token's text, UTF-8 bytes, log-probability and
    alternatives) with each token's id."""
    shown = chat_logprobs(tokenizer, entries)["content"]
    return [
        {
            "id": e.token,
            **c,
            "top_logprobs": [{"id": i, **t} for (i, _), t in zip(e.top, c["top_logprobs"], strict=True)],
        }
        for e, c in zip(entries, shown, strict=True)
    ]


def chunk(content: str, tokens: list[int], gen: Generation, probs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A stream's piece of text (tokens: the generated ids it carries, with return_tokens)."""
    out: dict[str, Any] = {
        "index": 0,
        "content": content,
        "tokens": tokens,
        "stop": False,
        "id_slot": gen.sequence,
        "tokens_predicted": gen.n_generated,
        "tokens_evaluated": gen.n_prompt,
    }
    if probs is not None:
        out["completion_probabilities"] = probs
    return out


def final(
    content: str,
    tokens: list[int],
    gen: Generation,
    *,
    body: NativeCompletionRequest,
    model_name: str,
    prompt: str,
    n_ctx: int,
    clock: Clock,
    probs: list[dict[str, Any]] | None,
    truncated: bool,
) -> dict[str, Any]:
    """The whole answer, or a stream's last chunk (content: what it adds); truncated: it ended where the slot is
    full."""
    out = chunk(content, tokens, gen, probs)
    out.update(
        stop=True,
        model=model_name,
        generation_settings=generation_settings(body, n_ctx),
        prompt=prompt,
        has_new_line="\n" in gen.text,
        truncated=truncated,
        stop_type=stop_type(gen),
        stopping_word=gen.stopping_word,
        tokens_cached=_held(gen),
        timings=clock.timings(gen.n_cached, gen.n_prompt - gen.n_cached if gen.sequence >= 0 else 0, gen.n_generated),
    )
    return out


def _held(gen: Generation) -> int:
    """Tokens the generation's slot holds after it: none where it never ran (n_predict 0 without cache_prompt)."""
    return len(gen.tokens) - (1 if gen.ended_on_new_token else 0) if gen.sequence >= 0 else 0


def props(
    model: Model, defaults: NativeCompletionRequest, *, model_path: str, slots: int, version: str
) -> dict[str, Any]:
    """GET /props: the defaults a request gets (a request body with only the server's defaults), the slots, the
    model's file, chat template and special tokens."""
    try:
        template = model.chat_template
        template_text = template.source if isinstance(template, ChatTemplate) else template.name
    except ChatTemplateError:
        template_text = ""
    tok = model.tokenizer

    def special(token: int) -> str:
        return tok.piece(token, special=True).decode("utf-8", "replace") if token >= 0 else ""

    return {
        "default_generation_settings": {
            "id": 0,
            "n_ctx": model.n_ctx,
            "is_processing": False,
            "params": generation_settings(defaults, model.n_ctx),
        },
        "total_slots": slots,
        "model_path": model_path,
        "chat_template": template_text,
        "bos_token": special(tok.bos),
        "eos_token": special(tok.eos),
        "build_info": f"turbosparse {version}",
        "modalities": {"vision": False, "audio": False},
        "is_sleeping": False,
    }

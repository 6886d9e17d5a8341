"""/metrics: Prometheus text with llama-server's metric names, plus the share of FFN rows read."""

from __future__ import annotations

from dataclasses import dataclass

from turbosparse.model import Model
from turbosparse.server.engine import Engine


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge
    help: str
    value: float


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def collect(engine: Engine, model: Model) -> list[Metric]:
    stats = model.stats()
    c = engine.counters
    rows = [r for r in stats["rows_read_fraction"] if r is not None]  # type: ignore[union-attr]
    active = [a for a in stats["active_fraction"] if a is not None]  # type: ignore[union-attr]
    prompt_tokens, prompt_seconds = float(stats["prompt_tokens"]), float(stats["prompt_seconds"])  # type: ignore[arg-type]
    # a mixture of experts does not count the union of rows its steps read: no gauge rather than a false 1
    rows_read = [
        Metric(
            "turbosparse:ffn_rows_read_ratio", "gauge",
            "Share of FFN gate/up rows a forward pass reads (the union over the tokens decoded together), "
            "averaged over layers.",
            _ratio(sum(rows), len(rows)),
        ),
    ] if rows else []  # fmt: skip
    return [
        Metric("llamacpp:prompt_tokens_total", "counter", "Prompt tokens evaluated.", prompt_tokens),
        Metric("llamacpp:prompt_seconds_total", "counter", "Prompt evaluation time.", prompt_seconds),
        Metric("llamacpp:tokens_predicted_total", "counter", "Tokens generated.", c.tokens_predicted),
        Metric(
            "llamacpp:tokens_predicted_seconds_total", "counter", "Wall time of the decoding steps.", c.step_seconds
        ),
        Metric("llamacpp:n_decode_total", "counter", "Decoding steps (one forward pass each).", c.steps),
        Metric(
            "llamacpp:n_busy_slots_per_decode", "gauge", "Average generations per decoding step.",
            _ratio(c.busy_slots, c.steps),
        ),
        Metric(
            "llamacpp:prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
            _ratio(prompt_tokens, prompt_seconds),
        ),
        Metric(
            "llamacpp:predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s (all slots).",
            _ratio(c.tokens_predicted, c.step_seconds),
        ),
        Metric("llamacpp:requests_processing", "gauge", "Requests in a slot.", engine.processing),
        Metric("llamacpp:requests_deferred", "gauge", "Requests waiting for a slot.", engine.deferred),
        *rows_read,
        Metric(
            "turbosparse:ffn_rows_per_token_ratio", "gauge",
            "Share of FFN neurons computed per token, averaged over layers.",
            _ratio(sum(active), len(active)) if active else 1.0,
        ),
        Metric("turbosparse:requests_finished_total", "counter", "Requests answered.", c.requests_finished),
        Metric("turbosparse:requests_cancelled_total", "counter", "Requests whose client left.", c.requests_cancelled),
        Metric("turbosparse:requests_rejected_total", "counter", "Requests refused (queue full).", c.requests_rejected),
    ]  # fmt: skip


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(metrics: list[Metric]) -> str:
    lines = []
    for m in metrics:
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", f"{m.name} {_number(m.value)}"]
    return "\n".join(lines) + "\n"

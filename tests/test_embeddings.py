"""Embeddings on SmolLM2: the drop-in's embed / create_embedding against llama-cpp-python's for every pooling, the
file's pooling read as llama.cpp reads it, a running generation undisturbed, and the server's /v1/embeddings."""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from turbosparse.embeddings import normalized
from turbosparse.errors import InvalidArgumentError, SequenceBusyError
from turbosparse.sampling import SamplingParams

from hfcheckpoints import rewritten

N_THREADS = 2
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Bonjour, le monde !"]
# llama.cpp's pooling types as llama-cpp-python takes them: the file's (none for SmolLM2), mean, cls, last
POOLING_TYPES = [-1, 1, 2, 3]


@pytest.mark.parametrize("pooling_type", POOLING_TYPES)
def test_the_drop_in_embeds_as_llama_cpp_python(smollm2_path: Path, pooling_type: int) -> None:
    import llama_cpp

    from turbosparse import Llama

    options = {"embedding": True, "pooling_type": pooling_type, "n_ctx": 512, "n_threads": N_THREADS}
    ref = llama_cpp.Llama(str(smollm2_path), verbose=False, **options)
    ours = Llama(str(smollm2_path), verbose=False, **options)
    for text in TEXTS:
        for normalize in (False, True):
            expected = np.array(ref.embed(text, normalize=normalize))
            got = np.array(ours.embed(text, normalize=normalize))
            assert got.shape == expected.shape  # [n_tokens, n_embd] for none, else [n_embd]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    if pooling_type != -1:  # llama-cpp-python 0.3.36 reads several texts' token rows from the wrong place
        expected, got = ref.create_embedding(TEXTS), ours.create_embedding(TEXTS)
        assert got["usage"] == expected["usage"] and len(got["data"]) == len(expected["data"]) == 2
        for a, b in zip(got["data"], expected["data"], strict=True):
            assert a["index"] == b["index"] and a["object"] == b["object"] == "embedding"
            np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=0, atol=1e-4)
    vectors, count = ours.embed(TEXTS, return_count=True)
    assert len(vectors) == 2 and count == sum(len(ours.tokenize(t.encode())) for t in TEXTS)
    # a completion after embeddings is a completion as any
    assert (
        ours("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
        == ref("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
    )
    ref.close()
    ours.close()


def test_what_the_drop_in_refuses(smollm2_path: Path) -> None:
    from turbosparse import Llama

    plain = Llama(str(smollm2_path), n_ctx=128, n_threads=N_THREADS, verbose=False)
    with pytest.raises(RuntimeError, match="embedding=True"):
        plain.embed("hi")
    plain.close()
    with pytest.raises(ValueError, match="rank, 4"):
        Llama(str(smollm2_path), embedding=True, pooling_type=4, n_ctx=128, verbose=False)
    short = Llama(str(smollm2_path), embedding=True, n_ctx=128, n_batch=4, n_threads=N_THREADS, verbose=False)
    assert len(short.embed(TEXTS[0])) == 4  # truncated to n_batch tokens, as llama-cpp-python
    with pytest.raises(ValueError, match="exceed batch size of 4"):
        short.embed(TEXTS[0], truncate=False)
    short.close()
    small = Llama(str(smollm2_path), embedding=True, pooling_type=1, n_ctx=16, n_threads=N_THREADS, verbose=False)
    assert small.n_batch == 16 and len(small.embed(TEXTS[0] * 4)) == 576  # n_batch at most n_ctx, as llama_cpp's
    small.close()


def test_the_files_pooling(tmp_path: Path, smollm2_path: Path) -> None:
    from turbosparse import Model

    last = rewritten(smollm2_path, tmp_path / "last.gguf", keys={"llama.pooling_type": (3, gguf.GGUFValueType.UINT32)})
    with Model(last, n_ctx=128, n_threads=N_THREADS, sparse="off") as model:
        tokens = model.tokenize(TEXTS[0])
        assert model.pooling == "last"
        np.testing.assert_array_equal(model.embed(tokens), model.embed(tokens, pooling="none")[-1])
    rank = rewritten(smollm2_path, tmp_path / "rank.gguf", keys={"llama.pooling_type": (4, gguf.GGUFValueType.UINT32)})
    with Model(rank, n_ctx=128, n_threads=N_THREADS, sparse="off") as model:
        with pytest.raises(InvalidArgumentError, match=r"llama\.pooling_type: pooling 4"):
            model.embed(tokens)


def test_embeddings_leave_running_generations_alone(smollm2_path: Path) -> None:
    """Embeddings take a sequence no generation holds: a generation running meanwhile gives its text unchanged; with
    every sequence generating there is none to take."""
    from turbosparse import Model

    with Model(smollm2_path, n_ctx=128, n_seq=2, n_threads=N_THREADS, sparse="off") as model:
        prompt = model.tokenize("Once upon a time")
        greedy = SamplingParams(temperature=0)
        alone = model.generate(prompt, max_tokens=12, temperature=0)
        gen = model.start(prompt, sampling=greedy, max_tokens=12)
        text = "".join(model.step([gen]))
        embedded = model.embed(model.tokenize(TEXTS[0]), pooling="mean")
        while not gen.done:
            text += "".join(model.step([gen]))
        assert text == alone
        np.testing.assert_array_equal(model.embed(model.tokenize(TEXTS[0]), pooling="mean"), embedded)
        first, second = (model.start(prompt, sampling=greedy, max_tokens=12) for _ in range(2))
        model.step([first, second])
        with pytest.raises(SequenceBusyError, match="none is free"):
            model.embed(prompt)
        with pytest.raises(InvalidArgumentError, match="pooling 'rank'"):
            model.embed(prompt, pooling="rank")  # type: ignore[arg-type]


def test_the_servers_embeddings(smollm2_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from turbosparse import Llama
    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    def client(**options: Any) -> Any:
        return TestClient(create_app(ServerConfig(str(smollm2_path), n_ctx=512, n_threads=N_THREADS, **options)))

    def wait(c: Any) -> None:
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)

    drop_in = Llama(str(smollm2_path), embedding=True, pooling_type=1, n_ctx=512, n_threads=N_THREADS, verbose=False)
    expected = [np.array(drop_in.embed(text, normalize=True)) for text in TEXTS]
    drop_in.close()
    with client(embeddings=True, pooling="mean", parallel=2) as c:
        wait(c)
        assert c.get("/v1/models").json()["data"][0]["meta"]["slots"] == 2  # the embeddings' sequence is no slot
        # with both slots generating and a third request waiting, embeddings still have their own sequence
        no_end = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>: the answers run to max_tokens
        long = {"prompt": "Once upon a time", "max_tokens": 200, "logit_bias": no_end, "temperature": 0}
        with ThreadPoolExecutor(3) as pool:
            running = [pool.submit(c.post, "/v1/completions", json=long) for _ in range(3)]
            time.sleep(0.5)
            during = c.post("/v1/embeddings", json={"input": TEXTS[0], "dimensions": 576})
            assert all(r.result().status_code == 200 for r in running)
        assert during.status_code == 200, during.text
        np.testing.assert_allclose(during.json()["data"][0]["embedding"], expected[0], rtol=0, atol=1e-6)
        reply = c.post("/v1/embeddings", json={"input": TEXTS, "model": "any"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
        for data, vector in zip(body["data"], expected, strict=True):
            np.testing.assert_allclose(data["embedding"], vector, rtol=0, atol=1e-6)  # of unit length
        tokens = c.post("/tokenize", json={"content": TEXTS[0], "add_special": True}).json()["tokens"]
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(tokens)
        coded = c.post("/v1/embeddings", json={"input": tokens, "encoding_format": "base64"}).json()
        vector = np.frombuffer(base64.b64decode(coded["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vector, expected[0], rtol=0, atol=1e-6)
        for bad, match in [
            ({"input": []}, "empty list"),
            ({"input": [[1, 2, 10**9]]}, "out of the vocabulary"),
            ({"input": "x", "dimensions": 8}, "dimensions 8"),
            ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
            ({"input": " " * 0}, "no tokens"),
        ]:
            reply = c.post("/v1/embeddings", json=bad)
            assert reply.status_code == 400 and match in reply.json()["error"]["message"], reply.text
    with client() as c:
        wait(c)
        reply = c.post("/v1/embeddings", json={"input": "x"})
        assert reply.status_code == 501 and "--embeddings" in reply.json()["error"]["message"]
    with caplog.at_level(logging.WARNING), client(embeddings=True) as c:  # SmolLM2's pooling is none
        wait(c)
        reply = c.post("/v1/embeddings", json={"input": "x"})
        assert reply.status_code == 400 and "--pooling" in reply.json()["error"]["message"]
    # said when the model loads too, not only to the first client
    assert any("pooling is none" in r.getMessage() and "--pooling" in r.getMessage() for r in caplog.records)


def test_pooling_helpers() -> None:
    from turbosparse.embeddings import file_pooling, pooled, pooling_named

    rows = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    assert pooled(rows, "mean").tolist() == [pytest.approx(4 / 3), 2.0]
    assert pooled(rows, "cls").tolist() == [1.0, 2.0] and pooled(rows, "last").tolist() == [0.0, 0.0]
    np.testing.assert_allclose(normalized(rows), [[0.4472136, 0.8944272], [0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert pooling_named(1) == "mean" and pooling_named("cls") == "cls"
    for bad in (4, -1, True, "max"):
        with pytest.raises(InvalidArgumentError):
            pooling_named(bad)
    assert file_pooling({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}) == "last"
    assert file_pooling({"general.architecture": "llama"}) == "none"
    with pytest.raises(InvalidArgumentError, match="not a number"):
        file_pooling({"general.architecture": "llama", "llama.pooling_type": "mean"})

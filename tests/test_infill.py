"""Fill-in-the-middle (llama-server's /infill): the prompt around the vocabulary's FIM tokens, sized as llama-server
sizes it, answered as /completion answers the same tokens; a model without FIM tokens is a 501."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from turbosparse.errors import InfillNotSupportedError
from turbosparse.infill import ExtraFile, infill_tokens
from turbosparse.tokenizer import Tokenizer

# SmolLM2's <issue_start> ... <jupyter_start>, made FIM tokens in the copies; llama.cpp takes SmolLM2's own
# <reponame> (StarCoder's) for the repository token
PRE, SUF, MID, REP, SEP, REPONAME = 8, 9, 10, 11, 12, 4


def fim_copy(source: Path, out: Path, *, repository: bool) -> Path:
    """SmolLM2 with FIM tokens (and with repository, the repository and file separator tokens, and a BOS added)."""
    token = gguf.GGUFValueType.UINT32
    keys = gguf.Keys.Tokenizer
    new = {keys.FIM_PRE_ID: MetadataDetails(token, PRE), keys.FIM_SUF_ID: MetadataDetails(token, SUF),
           keys.FIM_MID_ID: MetadataDetails(token, MID)}  # fmt: skip
    if repository:
        new |= {keys.FIM_REP_ID: MetadataDetails(token, REP), keys.FIM_SEP_ID: MetadataDetails(token, SEP),
                keys.ADD_BOS: MetadataDetails(gguf.GGUFValueType.BOOL, True)}  # fmt: skip
    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    copy_with_new_metadata(reader, writer, new, [])
    return out


@pytest.fixture(scope="module")
def fim_paths(tmp_path_factory: Any, smollm2_path: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fim")
    return (fim_copy(smollm2_path, folder / "fim.gguf", repository=False),
            fim_copy(smollm2_path, folder / "fim_repo.gguf", repository=True))  # fmt: skip


def test_the_prompt_surrounds_the_cursor_with_the_fim_tokens(fim_paths: tuple[Path, Path], smollm2_path: Path) -> None:
    plain, repo = (Tokenizer(str(path)) for path in fim_paths)
    assert (plain.fim.prefix, plain.fim.suffix, plain.fim.middle, plain.fim.repository) == (PRE, SUF, MID, REPONAME)
    assert plain.fim.separator is None

    def text(tokenizer: Tokenizer, value: str) -> list[int]:
        return tokenizer.tokenize(value, add_bos=False)

    prefix, suffix, prompt = (
        text(plain, "def add(a, b):\n    "),
        text(plain, "\n\nprint(add(1, 2))"),
        text(plain, "ret"),
    )
    extra = [ExtraFile("import math\n", "util.py")]
    sizes = {"n_batch": 512, "n_ctx": 2048, "n_predict": 16}
    tokens = infill_tokens(plain, prefix, suffix, extra, prompt, **sizes)
    snippet = text(plain, "\n\n--- snippet ---\n\n") + text(plain, "import math\n")
    assert tokens == [REPONAME, *text(plain, "myproject\n"), *snippet, PRE, *prefix, *prompt, SUF, *suffix, MID]
    # the repo-level pattern, after the BOS the vocabulary adds
    tokens = infill_tokens(repo, prefix, suffix, extra, prompt, **sizes)
    files = [REP, *text(repo, "myproject\n"), SEP, *text(repo, "util.py\n"), *text(repo, "import math\n"), SEP,
             *text(repo, "filename\n")]  # fmt: skip
    assert tokens == [repo.bos, *files, PRE, *prefix, *prompt, SUF, *suffix, MID]
    # sized as llama-server sizes them: the prefix's last 3/4 batch, the suffix's first quarter less the prompt and
    # two, the other files' last tokens in the context left beside a batch and twice the answer
    long = list(range(100, 400))
    tokens = infill_tokens(plain, long, long, [ExtraFile("word " * 100)], [9] * 10, n_batch=64, n_ctx=200, n_predict=8)
    context = [
        REPONAME,
        *text(plain, "myproject\n"),
        *text(plain, "\n\n--- snippet ---\n\n"),
        *text(plain, "word " * 100),
    ]
    context = context[-(200 - 64 - 16) :]
    assert tokens == [*context, PRE, *long[-48:], *[9] * 10, SUF, *long[:4], MID]
    # always within the slot, one token of room left: a batch wider than the slot counts as the slot (75 / 13 of it),
    # then the prefix's start is cut (2 tokens), the other files get nothing
    tokens = infill_tokens(plain, long, long, [ExtraFile("word " * 100)], [9] * 10, n_batch=512, n_ctx=100, n_predict=0)
    assert tokens == [PRE, *long[-73:], *[9] * 10, SUF, *long[:13], MID] and len(tokens) == 99
    # with the BOS counted (the repository vocabulary adds one)
    tokens = infill_tokens(repo, long, long, [ExtraFile("word " * 100)], [], n_batch=512, n_ctx=100, n_predict=0)
    assert len(tokens) == 99 and tokens[:2] == [repo.bos, PRE] and tokens[-1] == MID
    with pytest.raises(InfillNotSupportedError, match="no fill-in-the-middle prefix / suffix / middle token"):
        infill_tokens(Tokenizer(str(smollm2_path)), prefix, suffix, [], [], **sizes)


def _client(path: Path) -> Any:
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    client = TestClient(create_app(ServerConfig(str(path), n_ctx=1024, n_threads=2)))
    return client


def _ready(client: Any) -> None:
    deadline = time.monotonic() + 120
    while client.get("/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_infill_answers_as_completion_answers_its_prompt(fim_paths: tuple[Path, Path], smollm2_path: Path) -> None:
    body = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))",
            "input_extra": [{"filename": "util.py", "text": "import math\n"}], "prompt": "return",
            "n_predict": 12, "temperature": 0, "return_tokens": True}  # fmt: skip
    with _client(fim_paths[1]) as client:
        _ready(client)
        reply = client.post("/infill", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        tokenizer = Tokenizer(str(fim_paths[1]))
        expected = infill_tokens(
            tokenizer, tokenizer.tokenize(body["input_prefix"], add_bos=False),
            tokenizer.tokenize(body["input_suffix"], add_bos=False), [ExtraFile("import math\n", "util.py")],
            tokenizer.tokenize("return", add_bos=False), n_batch=512, n_ctx=1024, n_predict=12,
        )  # fmt: skip
        assert answer["tokens_evaluated"] == len(expected) and answer["tokens_predicted"] > 0, answer
        same = client.post("/completion", json={"prompt": expected, "n_predict": 12, "temperature": 0,
                                                "return_tokens": True}).json()  # fmt: skip
        assert (answer["content"], answer["tokens"]) == (same["content"], same["tokens"])
        streamed = client.post("/infill", json={**body, "stream": True}).text
        chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: ")]
        assert "".join(c["content"] for c in chunks) == answer["content"] and chunks[-1]["stop"] is True
        # token ids and texts mixed, as in /completion
        mixed = client.post("/infill", json={**body, "input_prefix": [*tokenizer.tokenize("def add", add_bos=False),
                                                                      "(a, b):\n    "]})  # fmt: skip
        assert mixed.status_code == 200 and mixed.json()["content"] == answer["content"], mixed.text
        for bad in ({"input_extra": [{"filename": "x"}]}, {"input_extra": "x"}, {"input_prefix": [10**9]},
                    {"prompt": [[1], [2]]}):  # fmt: skip
            reply = client.post("/infill", json={**body, **bad})
            assert reply.status_code == 400, reply.text
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    # --spm-infill: the suffix's part first
    with TestClient(create_app(ServerConfig(str(fim_paths[1]), n_ctx=1024, n_threads=2, spm_infill=True))) as client:
        _ready(client)
        answer = client.post("/infill", json={**body, "n_predict": 1}).json()
        shown = answer["prompt"]
        assert shown.index("<issue_comment>") < shown.index("<issue_start>"), shown  # SUF before PRE
    with _client(smollm2_path) as client:
        _ready(client)
        reply = client.post("/infill", json=body)
        assert reply.status_code == 501 and reply.json()["error"]["type"] == "not_supported_error", reply.text
        assert "no fill-in-the-middle" in reply.json()["error"]["message"]


def test_a_completions_suffix_fills_the_middle(fim_paths: tuple[Path, Path], smollm2_path: Path) -> None:
    """OpenAI's insertion (/v1/completions' suffix) and llama-cpp-python's create_completion(suffix=...): the FIM
    prompt of the prompt and the suffix; a model without FIM tokens: a 400 on the server, the suffix appended to the
    text in the drop-in (llama_cpp's documented meaning)."""
    from turbosparse import Llama

    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))"
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": 10, "temperature": 0}
    tokenizer = Tokenizer(str(fim_paths[0]))
    fim_prompt = [PRE, *tokenizer.tokenize(prefix, add_bos=False), SUF,
                           *tokenizer.tokenize(suffix, add_bos=False), MID]  # fmt: skip
    with _client(fim_paths[0]) as client:
        _ready(client)
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        same = client.post("/completion", json={"prompt": fim_prompt, "n_predict": 10, "temperature": 0}).json()
        assert answer["choices"][0]["text"] == same["content"]
        assert answer["usage"]["prompt_tokens"] == len(fim_prompt)
        ids = client.post("/v1/completions", json={**body, "prompt": tokenizer.tokenize(prefix, add_bos=False)})
        assert ids.json()["choices"][0]["text"] == same["content"], ids.text
        assert client.post("/v1/completions", json={**body, "echo": True}).status_code == 400
    # a token-id prompt's BOS is the prompt's, not the prefix's; --spm-infill puts the suffix's part first
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    repo = Tokenizer(str(fim_paths[1]))
    prefix_ids, suffix_ids = repo.tokenize(prefix, add_bos=False), repo.tokenize(suffix, add_bos=False)
    with TestClient(create_app(ServerConfig(str(fim_paths[1]), n_ctx=256, n_threads=2, spm_infill=True))) as client:
        _ready(client)
        ids = {**body, "prompt": [repo.bos, *prefix_ids], "max_tokens": 1, "logprobs": 0}
        reply = client.post("/v1/completions", json=ids).json()
        assert reply["usage"]["prompt_tokens"] == 4 + len(prefix_ids) + len(suffix_ids), reply
        same = client.post("/completion", json={"prompt": [repo.bos, SUF, *suffix_ids, PRE, *prefix_ids, MID],
                                                "n_predict": 1, "temperature": 0}).json()  # fmt: skip
        assert reply["choices"][0]["text"] == same["content"]
    llm = Llama(model_path=str(fim_paths[0]), n_ctx=256, n_threads=2, verbose=False)
    reply = llm.create_completion(prefix, suffix=suffix, max_tokens=10, temperature=0)
    assert reply["choices"][0]["text"] == same["content"] and reply["usage"]["prompt_tokens"] == len(fim_prompt)
    with pytest.raises(ValueError, match="echo with a suffix"):
        llm.create_completion(prefix, suffix=suffix, echo=True)
    llm.close()
    spm = Llama(model_path=str(fim_paths[0]), n_ctx=256, n_threads=2, verbose=False, spm_infill=True)
    assert spm.spm_infill is True  # llama_cpp's attribute
    spm.create_completion(prefix, suffix=suffix, max_tokens=1)
    assert spm._input_ids[0] == SUF  # the suffix's part first
    spm.close()
    plain = Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    text = plain.create_completion(prefix, max_tokens=4, temperature=0)["choices"][0]["text"]
    assert plain.create_completion(prefix, suffix=suffix, max_tokens=4, temperature=0)["choices"][0]["text"] == (
        text + suffix
    )
    plain.close()
    with _client(smollm2_path) as client:
        _ready(client)
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 400 and "no fill-in-the-middle" in reply.json()["error"]["message"], reply.text


def test_the_servers_answer_limit_sizes_the_other_files(fim_paths: tuple[Path, Path]) -> None:
    """The server's -n (a request without n_predict) keeps twice its room from the other files, as the request's
    n_predict does."""
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    body = {"input_prefix": "x = ", "input_suffix": "", "input_extra": [{"text": "word " * 2000}], "temperature": 0}
    config = ServerConfig(str(fim_paths[0]), n_ctx=1024, n_threads=2, sampling_defaults={"max_tokens": 200})
    with TestClient(create_app(config)) as client:
        _ready(client)
        evaluated = client.post("/infill", json=body).json()["tokens_evaluated"]
        assert evaluated == client.post("/infill", json={**body, "n_predict": 200}).json()["tokens_evaluated"]
        assert evaluated <= 1024 - 512 - 2 * 200 + 8  # the files' room, the prefix and the FIM tokens

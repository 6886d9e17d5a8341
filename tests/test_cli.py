"""The turbosparse command line, run as users run it."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest


def turbosparse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300)


def test_run_streams_text_and_prints_timings(smollm2_path) -> None:
    out = turbosparse(
        "run", "-m", str(smollm2_path), "-p", "The capital of France is", "-n", "8", "--temp", "0", "-t", "2"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is Paris")
    assert "decode: 7 tokens" in out.stderr and "tok/s" in out.stderr


def test_run_chat_with_default_model(tmp_path, smollm2_path) -> None:
    """`-m default` runs the cached default model. A stand-in file sits where the build leaves the GGUF, so the
    test never starts the 25-minute build (the build's steps have their own tests)."""
    import os
    import shutil

    from turbosparse.assets import DEFAULT_MODEL_RECIPE, default_model_file

    cached = tmp_path / "default-model" / DEFAULT_MODEL_RECIPE / default_model_file()
    cached.parent.mkdir(parents=True)
    shutil.copy(smollm2_path, cached)
    args = ["run", "-m", "default", "--chat", "-p", "Say hello.", "-n", "8", "-s", "1", "-t", "2"]
    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_errors_are_one_line_and_nonzero(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all, just some bytes")
    out = turbosparse("run", "-m", str(bad), "-p", "x")
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"turbosparse run: error: {bad}: not a GGUF file: magic is 'not ', expected 'GGUF' (or PowerInfer 'PWRI')"
    )


def test_a_bad_sampling_option_is_refused_before_any_text(smollm2_path) -> None:
    out = turbosparse("run", "-m", str(smollm2_path), "-p", "Hi", "-n", "2", "--temp", "nan")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == "turbosparse run: error: temperature must be a finite number, got nan"


def test_a_prompt_file_that_is_not_utf8_is_named(tmp_path, smollm2_path) -> None:
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"caf\xe9 au lait")  # Latin-1
    for args in (["run", "-m", str(smollm2_path), "-f", str(bad)], ["serve", "-m", str(smollm2_path),
                                                                     "--chat-template-file", str(bad)]):  # fmt: skip
        out = turbosparse(*args)
        assert out.returncode == 1 and out.stdout == ""
        assert (
            out.stderr.strip() == f"turbosparse {args[0]}: error: {bad}: not UTF-8 text (byte 0xe9 at offset 3: "
            "invalid continuation byte)"
        )


def test_serve_options_out_of_range_are_one_line_errors(smollm2_path) -> None:
    for option, value, message in (("--parallel", "0", "--parallel must be >= 1, got 0"),
                                   ("--parallel", "1000", "--parallel must be <= 256 (a context holds 256 "
                                    "sequences), got 1000"),
                                   ("--port", "99999", "--port must be 0-65535, got 99999")):  # fmt: skip
        out = turbosparse("serve", "-m", str(smollm2_path), option, value)
        assert out.returncode == 1 and out.stderr.strip() == f"turbosparse serve: error: {message}", out.stderr


def test_bench_lists_are_checked() -> None:
    for option, value, message in (("--ffn-layer", "q9_9", "unknown type 'q9_9'"),
                                   ("--ffn-layer", ",", "expected types such as q4_0,q8_0"),
                                   ("--batch", "a,2", "expected numbers of sequences >= 1")):  # fmt: skip
        args = ["bench", option, value] if option == "--ffn-layer" else ["bench", "--synthetic", "tiny", option, value]
        out = turbosparse(*args)
        assert out.returncode == 2 and f"argument {option}: {message}" in out.stderr, out.stderr


def test_bench_counts_are_checked_before_any_work() -> None:
    for option, value, message in (("-n", "0", "-n/--decode-tokens must be >= 1"), ("-r", "0", "-r/--rounds must be"),
                                   ("-t", "0", "-t/--threads must be >= 1"), ("--layers", "0", "--layers must be"),
                                   ("--active", "1.5", "--active must be in (0, 1)"),
                                   ("--rank", "33", "--rank must be even"),
                                   ("--rank", "48", "not a multiple of q4_0's block of 32"),
                                   ("--groups", "100", "does not divide")):  # fmt: skip
        out = turbosparse("bench", "--synthetic", "tiny", option, value)
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bench_refuses_runs_with_nothing_to_compare(tmp_path, smollm2_path) -> None:
    """Every mode skipped without llama.cpp printed an empty table and exit 0; a --dense file of another vocabulary
    loaded every engine, then failed on a token out of it."""
    from tinymodel import TinyConfig, random_weights, write_gguf

    nothing = turbosparse("bench", "-m", str(smollm2_path), "--modes", "exact", "--no-llama-cpp", "-r", "1")
    assert nothing.returncode == 1 and "nothing to measure: no mode of --modes exact runs here" in nothing.stderr
    tiny = tmp_path / "tiny.gguf"
    write_gguf(tiny, TinyConfig(), random_weights(TinyConfig()))
    other = turbosparse("bench", "-m", str(tiny), "--dense", str(smollm2_path), "-r", "1", "-p", "4", "-n", "2")
    assert other.returncode == 1 and "a vocabulary of 49152 tokens where" in other.stderr, other.stderr
    # the options that shape a synthetic model, dropped before where they changed nothing
    dropped = turbosparse("bench", "-m", str(tiny), "--quant", "q8_0", "--layers", "2")
    assert dropped.returncode == 1 and "--quant, --layers shape(s) a --synthetic model" in dropped.stderr
    layer = turbosparse("bench", "--ffn-layer", "q4_0", "--groups", "32")
    assert layer.returncode == 1 and "--ffn-layer's layers are Mistral-7B's" in layer.stderr
    typo = turbosparse("bench", "--synthetic", "mistral-7b", "--modes", "dense,exat")  # before a 4 GB twin is built
    assert typo.returncode == 1 and "--modes dense,exat: modes are dense, predictor, exact, groups" in typo.stderr
    off = turbosparse("bench", "-m", str(tiny), "--modes", "dense,off")  # ran the sparse file densely, as "off"
    assert off.returncode == 1 and "--modes dense,off: modes are dense, predictor, exact, groups" in off.stderr
    twin = turbosparse("bench", "--synthetic", "tiny", "--dense", str(tiny))
    assert twin.returncode == 1 and "--synthetic makes its own dense twin" in twin.stderr


def test_bench_counts_a_tied_embedding_as_the_output_head(smollm2_path) -> None:
    """SmolLM2 has no output.weight: its token embedding is read whole every token as the head."""
    from turbosparse.bench.runner import tensor_bytes
    from turbosparse.gguf_reader import read_gguf

    sizes = {t.name: int(t.n_bytes) for t in read_gguf(smollm2_path).tensors}
    assert "output.weight" not in sizes
    assert tensor_bytes(smollm2_path).output == sizes["token_embd.weight"] + sizes["output_norm.weight"]


def test_help() -> None:
    for args in (["--help"], ["run", "--help"], ["convert", "--help"], ["serve", "--help"]):
        out = turbosparse(*args)
        assert out.returncode == 0 and "usage: turbosparse" in out.stdout


def test_bench_json_on_a_synthetic_pair(tmp_path) -> None:
    """bench builds a synthetic sparse model and its dense twin, checks llama.cpp agrees, and reports JSON."""
    import json
    import os

    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    args = ["bench", "--synthetic", "tiny", "--rank", "64", "-p", "8", "-n", "4", "-r", "1", "-t", "2", "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    engines = {(r["engine"], r["mode"]) for r in report["results"]}
    assert engines == {("llama.cpp", "dense"), ("turbosparse", "dense"), ("turbosparse", "predictor"),
                       ("turbosparse", "exact")}  # fmt: skip
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in report["results"])
    assert report["agreement_max_abs_logit_diff"] <= 1e-3
    assert abs(next(r for r in report["results"] if r["mode"] == "predictor")["active_fraction"] - 0.10) < 0.05
    assert "turbosparse/predictor" in report["ratios"]
    # figures from different machines are never mixed up: the CPU and the kernels it ran are stamped
    machine = report["machine"]
    assert machine["cpu"] and machine["kernel_isas"] and machine["commit"]


def test_bench_refuses_engines_that_do_not_fit_in_memory(tmp_path, monkeypatch) -> None:
    """Every engine holds its own copy of its file (predictor and groups share one): a run that cannot hold them all
    is refused with what to drop, not killed by the kernel halfway."""
    from turbosparse.binding import DeviceInfo, find_device
    from turbosparse.cli import bench_cmd
    from turbosparse.errors import InvalidArgumentError

    sparse, dense = tmp_path / "s.gguf", tmp_path / "d.gguf"
    sparse.write_bytes(bytes(1000))
    dense.write_bytes(bytes(900))
    every = ["dense", "predictor", "groups", "exact"]
    cpu = find_device("cpu")
    monkeypatch.setattr(bench_cmd, "_mem_available", lambda: 2 * 900 + 2 * 1000)
    bench_cmd._check_memory(every, True, sparse, dense, cpu)  # llama.cpp + dense + one row-layout model + exact's
    monkeypatch.setattr(bench_cmd, "_mem_available", lambda: 2 * 900 + 2 * 1000 - 1)
    with pytest.raises(InvalidArgumentError, match=r"memory available: drop modes \(--modes\)"):
        bench_cmd._check_memory(every, True, sparse, dense, cpu)
    bench_cmd._check_memory(["predictor", "exact"], False, sparse, dense, cpu)
    # on a GPU the weights go to the device's memory: that is the bound, not the host's (0: unknown, not checked)
    gpu = DeviceInfo(name="CUDA0", description="a GPU", is_cpu=False, memory_total=2 * 900 + 1000)
    bench_cmd._check_memory(["dense", "groups"], True, sparse, dense, gpu)
    with pytest.raises(InvalidArgumentError, match=r"memory of CUDA0: drop modes"):
        bench_cmd._check_memory(["dense", "groups"], True, sparse, dense, DeviceInfo("CUDA0", "a GPU", False, 2799))
    bench_cmd._check_memory(["dense", "groups"], True, sparse, dense, DeviceInfo("CUDA0", "a GPU", False, 0))


def test_bench_grouped_route_on_a_synthetic_model(tmp_path) -> None:
    """--groups G adds the grouped route to the synthetic model; its rows read are top-k groups of G."""
    import json
    import os

    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    args = ["bench", "--synthetic", "tiny", "--rank", "64", "--groups", "32", "--modes", "predictor,groups",
            "-p", "8", "-n", "4", "-r", "1", "-t", "2", "--json"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    groups = next(r for r in report["results"] if r["mode"] == "groups")
    assert groups["decode_tok_s"] > 0 and groups["active_fraction"] == pytest.approx(2 * 32 / 768)  # 2 of 24 groups
    assert "turbosparse/groups" in report["ratios"]


def test_bench_device_flag(tmp_path) -> None:
    """--device: the engines' device, named in the report; a device ggml lacks is refused with the list of those it
    has; on a GPU the benchmarks of the CPU's kernels are refused."""
    import json
    import os

    from turbosparse import devices

    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    base = [sys.executable, "-m", "turbosparse", "bench", "--synthetic", "tiny", "--rank", "64", "--modes", "dense",
            "-p", "8", "-n", "4", "-r", "1", "-t", "2"]  # fmt: skip
    out = subprocess.run([*base, "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["machine"]["device"] == "CPU"
    bad = subprocess.run([*base, "--device", "nope"], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode != 0 and "unknown device 'nope'" in bad.stderr
    gpu = next((d for d in devices() if not d.is_cpu), None)
    if gpu is not None:
        kernels = subprocess.run([*base, "--device", gpu.name, "--batch", "1,2"], capture_output=True, text=True,
                                 timeout=300, env=env)  # fmt: skip
        assert kernels.returncode != 0 and "runs the decode and prefill benchmark only" in kernels.stderr


def test_bench_batch_and_generate(tmp_path, smollm2_path) -> None:
    """bench --batch: B sequences decoded together read the union of their rows; bench --generate: whole greedy
    generations beside llama-cpp-python, same text on a dense file."""
    import json
    import os

    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    args = ["bench", "--synthetic", "tiny", "--rank", "64", "--batch", "1,3", "--modes", "dense,predictor",
            "-n", "4", "-r", "1", "-t", "2", "--json"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    rows = {(r["mode"], r["batch"]): r for r in json.loads(out.stdout)["results"]}
    assert rows["dense", 1]["rows_read"] == rows["dense", 3]["rows_read"] == 1.0
    one, three = rows["predictor", 1], rows["predictor", 3]
    assert abs(one["rows_read"] - one["rows_per_token"]) < 1e-9  # one token: the union is its own rows
    assert three["rows_per_token"] < three["rows_read"] < 3 * three["rows_per_token"]
    out = turbosparse("bench", "-m", str(smollm2_path), "--generate", "-n", "8", "-r", "1", "-t", "2", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["same_text"] and report["tokens"] == 8 and report["ratio"] > 0 and report["ratio_new_prompt"] > 0


def test_serve_refuses_what_it_cannot_serve(tmp_path) -> None:
    """A file that does not load stops the server with the loader's message (no server left running without a
    model); bad flags are refused before it starts."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    out = turbosparse("serve", "-m", str(bad), "--port", "0", "-t", "1")
    assert out.returncode == 1 and f"cannot serve {bad}" in out.stderr, out.stderr
    out = turbosparse("serve", "-m", str(bad), "--parallel", "0")
    assert out.returncode == 1 and "--parallel must be >= 1" in out.stderr, out.stderr
    out = turbosparse("serve", "-m", str(tmp_path / "missing.gguf"))
    assert out.returncode == 1 and "no such model file" in out.stderr, out.stderr


def test_serve_reads_llama_servers_environment_variables(tmp_path, monkeypatch) -> None:
    """As llama-server: LLAMA_ARG_* (and LLAMA_API_KEY) give serve's flags, the command line wins over them, a
    variable whose flag is excluded by one given is not read, a value the flag refuses names the variable."""
    from turbosparse.cli import build_parser
    from turbosparse.cli.environment import resolve_environment
    from turbosparse.errors import InvalidArgumentError

    def parsed(*argv: str) -> Any:
        args = build_parser().parse_args(["serve", *argv])
        resolve_environment(args)
        return args

    template = tmp_path / "template.jinja"
    template.write_text("{{ messages[0].content }}")
    for name, value in {"LLAMA_ARG_MODEL": "m.gguf", "LLAMA_ARG_CTX_SIZE": "2048", "LLAMA_ARG_N_PARALLEL": "2",
                        "LLAMA_API_KEY": "k", "LLAMA_ARG_FLASH_ATTN": "off", "LLAMA_ARG_EMBEDDINGS": "true",
                        "LLAMA_ARG_CACHE_TYPE_K": "q8_0", "LLAMA_ARG_CHAT_TEMPLATE_FILE": str(template),
                        "LLAMA_CHAT_TEMPLATE_KWARGS": '{"enable_thinking": false}', "LLAMA_ARG_THINK": "none",
                        "LLAMA_ARG_HOST": "0.0.0.0", "LLAMA_ARG_PORT": "9000", "LLAMA_ARG_TEMPERATURE": "0.3",
                        "LLAMA_ARG_TOP_K": "7"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    args = parsed()
    assert (args.model, args.ctx_size, args.parallel, args.api_key, args.flash_attn) == (
        "m.gguf",
        2048,
        2,
        ["k"],
        "off",
    )
    assert (args.llama_server_temperature, args.llama_server_top_k) == (0.3, 7)
    assert parsed("--api-key", "a", "--api-key", "b").api_key == ["k", "a", "b"]  # added to, as llama.cpp's list
    with monkeypatch.context() as patch:  # the variable's newer name wins over the older one
        patch.setenv("LLAMA_ARG_CHAT_TEMPLATE_KWARGS", '{"enable_thinking": true}')
        assert parsed().chat_template_kwargs == {"enable_thinking": True}
    assert (args.embeddings, args.cache_type_k, args.chat_template_file, args.chat_template) == (
        True, "q8_0", template, None)  # fmt: skip
    assert (args.chat_template_kwargs, args.reasoning_format, args.host, args.port) == (
        {"enable_thinking": False}, "none", "0.0.0.0", 9000)  # fmt: skip
    args = parsed("-m", "other.gguf", "-c", "512", "--chat-template", "chatml")  # the command line wins
    assert (args.model, args.ctx_size, args.chat_template, args.chat_template_file) == (
        "other.gguf",
        512,
        "chatml",
        None,
    )
    out = turbosparse("serve", "--help")
    assert "(env: LLAMA_ARG_CTX_SIZE)" in " ".join(out.stdout.split()), out.stdout
    for name, value, message in [("LLAMA_ARG_CTX_SIZE", "big", "LLAMA_ARG_CTX_SIZE='big': not a value --ctx-size"),
                                 ("LLAMA_ARG_THINK", "always", "--reasoning-format takes one of"),
                                 ("LLAMA_CHAT_TEMPLATE_KWARGS", "[1]", "a JSON object is expected")]:  # fmt: skip
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(InvalidArgumentError, match=re.escape(message)):
                parsed()
    for off in ("0", "", "yes"):  # as llama.cpp: a switch is on only where its value says so
        monkeypatch.setenv("LLAMA_ARG_EMBEDDINGS", off)
        assert parsed().embeddings is False
    monkeypatch.setenv("LLAMA_ARG_THREADS", "-1")  # llama.cpp's "as many as the machine has": the default
    assert parsed().threads is None and parsed("-t", "0").threads is None and parsed("-t", "3").threads == 3
    # in the command itself: the model and the slots from the environment
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    monkeypatch.setenv("LLAMA_ARG_MODEL", str(bad))
    monkeypatch.setenv("LLAMA_ARG_PORT", "0")
    out = turbosparse("serve", "-t", "1")
    assert out.returncode == 1 and f"cannot serve {bad}" in out.stderr, out.stderr
    monkeypatch.setenv("LLAMA_ARG_N_PARALLEL", "0")
    out = turbosparse("serve")
    assert out.returncode == 1 and "--parallel must be >= 1" in out.stderr, out.stderr


def test_bench_on_a_calibrated_synthetic_twin(tmp_path) -> None:
    """bench --sparsity calibrates the dense twin (cached) and runs exact mode on it beside llama.cpp."""
    import json
    import os

    env = {**os.environ, "TURBOSPARSE_CACHE": str(tmp_path)}
    args = ["bench", "--synthetic", "tiny", "--sparsity", "0.5", "-p", "8", "-n", "8", "-r", "1", "-t", "2", "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["config"]["sparse_model"].endswith(".calibrated-s0.5.gguf")  # each target its own file
    assert {(r["engine"], r["mode"]) for r in report["results"]} == {("llama.cpp", "dense"), ("turbosparse", "dense"),
                                                                     ("turbosparse", "exact")}  # fmt: skip
    exact = next(r for r in report["results"] if r["mode"] == "exact")
    assert abs(exact["kept_fraction"] - 0.5) < 0.1  # on tokens it was not calibrated on
    assert 1.0 < report["bytes_ceiling"] < 2.0
    bad = subprocess.run([sys.executable, "-m", "turbosparse", "bench", "-m", "x.gguf", "--sparsity", "0.5"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert bad.returncode == 1 and "--sparsity shape(s) a --synthetic model: -m x.gguf is the file it is" in bad.stderr


def test_synthetic_files_use_the_formats_key_types(tmp_path) -> None:
    """The synthetic writer goes through the converter's key table: u32 ranks and group top-k, as the format says."""
    import gguf

    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    sparse, _ = synthetic_pair(SyntheticSpec(SHAPES["tiny"], rank=64, groups=32), tmp_path)
    reader = gguf.GGUFReader(str(sparse))
    for key in ("turbosparse.predictor_ranks", "turbosparse.group_top_k"):
        assert reader.fields[key].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32], key
    # the grouped route and a GPU device's prompts read the standard down matrices, the row route the transposed ones
    names = {t.name for t in reader.tensors}
    assert {"blk.0.ffn_down.weight", "blk.0.ffn_down_t.weight", "blk.0.ffn_pred_groups.weight"} <= names
    layout = reader.fields["turbosparse.down_layout"]
    assert bytes(layout.parts[layout.data[0]]).decode() == "both"


def test_synthetic_files_stream_through_the_converters_writer(tmp_path, monkeypatch) -> None:
    """Every tensor is stored as its producer made it; a producer that fails leaves no file and no partial file
    (the converter's atomic writer)."""
    import gguf
    import numpy as np

    from turbosparse.bench import synthetic
    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    spec = SyntheticSpec(SHAPES["tiny-moe"], rank=64, pred_quant=gguf.GGMLQuantizationType.F32)
    sparse, _ = synthetic_pair(spec, tmp_path / "ok")
    stored = {t.name: t for t in gguf.GGUFReader(str(sparse)).tensors}
    entries = synthetic._entries(spec, sparse=True)
    assert [e.name for e in entries] == list(stored)
    for e in entries:
        t = stored[e.name]
        assert tuple(int(n) for n in reversed(t.shape.tolist())) == e.shape and t.tensor_type == e.qtype, e.name
        assert np.asarray(t.data).tobytes() == np.ascontiguousarray(e.produce()).tobytes(), e.name

    entries_of = synthetic._entries

    def failing(spec: SyntheticSpec, sparse: bool) -> list:
        good = entries_of(spec, sparse)
        return [*good[:3], synthetic._Entry("broken", 1, 8, gguf.GGMLQuantizationType.F32, lambda: 1 / 0)]

    monkeypatch.setattr(synthetic, "_entries", failing)
    with pytest.raises(ZeroDivisionError):
        synthetic_pair(spec, tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == []


def conversation_reference(path, messages: list[str], n_predict: int) -> tuple[list[str], int]:
    """What Model answers each message with the conversation before it, greedily, as `run -cnv` keeps it (with
    flash attention, as run's -fa auto on the CPU); and the tokens of every turn's whole prompt, summed."""
    from turbosparse import Model
    from turbosparse.sampling import SamplingParams

    history: list[dict[str, object]] = []
    answers, prompt_tokens = [], 0
    with Model(path, n_threads=2, sparse="off", flash_attn=True) as model:
        for text in messages:
            history.append({"role": "user", "content": text})
            tokens = model.chat_tokens(history)
            prompt_tokens += len(tokens)
            greedy = SamplingParams(temperature=0.0)
            gen = model.start(tokens, sampling=greedy, max_tokens=n_predict, cache_prompt=True)
            answers.append("".join(model.run(gen)))
            history.append({"role": "assistant", "content": answers[-1]})
    return answers, prompt_tokens


def test_run_conversation_answers_each_turn_with_the_conversation_before_it(smollm2_path) -> None:
    """-cnv: -p and then each line of stdin are user messages (a blank line skipped, a line ending in a backslash
    going on on the next), each answered with the whole conversation before it, the KV cache kept between turns."""
    messages = ["What is the capital of France?", "And of Italy?", "Name a\n river there."]
    stdin = "And of Italy?\n\nName a\\\n river there.\n"
    args = ["run", "-m", str(smollm2_path), "-cnv", "-p", messages[0], "-n", "24", "--temp", "0", "-t", "2"]
    out = subprocess.run([sys.executable, "-m", "turbosparse", *args], input=stdin, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    answers, prompt_tokens = conversation_reference(smollm2_path, messages, 24)
    assert out.stdout == "".join(answer + "\n" for answer in answers)
    alone, _ = conversation_reference(smollm2_path, messages[1:2], 24)
    assert alone[0] != answers[1]  # the second answer depends on the first exchange
    evaluated = int(out.stderr.split("prompt: ")[1].split(" tokens")[0])
    assert evaluated < prompt_tokens - 40, (evaluated, prompt_tokens)  # the history is not evaluated again


def test_run_conversation_drops_the_oldest_exchanges_past_the_context(smollm2_path) -> None:
    long = "Tell me about the sea, the sky, the hills, the rivers, the towns and the people who live there. " * 2
    stdin = "".join(f"{i}. {long}\n" for i in range(4)) + "word " * 300 + "\nAnd the mountains?\n"
    args = ["run", "-m", str(smollm2_path), "-cnv", "-c", "256", "-n", "16", "--temp", "0", "-t", "2"]
    out = subprocess.run([sys.executable, "-m", "turbosparse", *args], input=stdin, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "oldest exchange(s) dropped" in out.stderr
    assert "past the context of 256 (-c)" in out.stderr  # the 300-word message alone does not fit; the next goes on
    assert len(out.stdout.splitlines()) >= 5


CHATML_WITH_BOS = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def bos_model(tmp_path_factory, smollm2_path):
    """SmolLM2 whose vocabulary adds a BOS and whose chat template writes one too (as Llama 3's, Mistral's, Gemma's)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    out = tmp_path_factory.mktemp("bos") / "bos.gguf"
    reader = gguf.GGUFReader(str(smollm2_path))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    new = {
        "tokenizer.ggml.add_bos_token": MetadataDetails(gguf.GGUFValueType.BOOL, True),
        "tokenizer.ggml.bos_token_id": MetadataDetails(gguf.GGUFValueType.UINT32, 0),  # not <|im_start|>, SmolLM2's
        gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, CHATML_WITH_BOS),
    }
    copy_with_new_metadata(reader, writer, new, [])
    return out


def test_a_chat_gets_one_bos(bos_model) -> None:
    """Where the template writes the BOS the vocabulary also adds, the prompt starts with one (llama.cpp's rule):
    run --chat (and -sys, which implies it) and Model.generate on a chat prompt."""
    from turbosparse import Model

    model = Model(bos_model, n_threads=2, n_ctx=256)
    messages = [{"role": "user", "content": "Hi"}]
    tokens = model.chat_tokens(messages)
    assert tokens[0] == model.tokenizer.bos != tokens[1]
    model.generate(model.chat_prompt(messages), max_tokens=1)
    assert model.stats()["prompt_tokens"] == len(tokens)
    with_system = model.chat_tokens([{"role": "system", "content": "Be brief."}, *messages])
    model.close()
    for args, n in ((["--chat"], len(tokens)), (["-sys", "Be brief."], len(with_system))):
        out = turbosparse("run", "-m", str(bos_model), *args, "-p", "Hi", "-n", "1", "-t", "2")
        assert out.returncode == 0, out.stderr
        assert f"prompt: {n} tokens" in out.stderr


def test_a_chat_template_given_on_the_command_line(smollm2_path) -> None:
    from turbosparse import Model

    with Model(smollm2_path, n_threads=2, n_ctx=64) as model:
        n = len(model.tokenize("Q: Hi! A:", special=True))
    template = "Q: {{ messages[-1]['content'] }}! A:"
    out = turbosparse("run", "-m", str(smollm2_path), "--chat-template", template, "--chat", "-p", "Hi", "-n", "1")
    assert out.returncode == 0 and f"prompt: {n} tokens" in out.stderr, out.stderr


def test_a_built_in_chat_template_by_name(smollm2_path) -> None:
    """llama-cli's --chat-template NAME: llama.cpp's built-in template; a name it does not know is a one-line error."""
    from turbosparse import Model

    with Model(smollm2_path, n_threads=2, n_ctx=64) as model:
        n = len(model.tokenize("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", special=True))
    out = turbosparse("run", "-m", str(smollm2_path), "--chat-template", "gemma", "--chat", "-p", "Hi", "-n", "1")
    assert out.returncode == 0 and f"prompt: {n} tokens" in out.stderr, out.stderr
    out = turbosparse("run", "-m", str(smollm2_path), "--chat-template", "gemmma", "--chat", "-p", "Hi", "-n", "1")
    assert out.returncode == 1 and "neither a Jinja2 template" in out.stderr and "Traceback" not in out.stderr


def test_llama_cli_prompt_conventions(tmp_path, smollm2_path) -> None:
    """-p's escapes are processed (--no-escape keeps them), a prompt file loses one final newline, -n is a bound
    (the context's end also ends the text), and llama-cli's GPU flags are taken, not misread as -n / -f."""
    base = ["run", "-m", str(smollm2_path), "--temp", "0", "-t", "2"]
    out = turbosparse(*base, "-p", r"Q: 1+1?\nA:", "-n", "2")
    assert out.returncode == 0 and out.stdout.startswith("Q: 1+1?\nA:"), out.stderr
    out = turbosparse(*base, "-p", r"Q: 1+1?\nA:", "-n", "2", "--no-escape")
    assert out.returncode == 0 and out.stdout.startswith(r"Q: 1+1?\nA:"), out.stderr
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The capital of France is\n")
    from_file = turbosparse(*base, "-f", str(prompt), "-n", "3")
    from_p = turbosparse(*base, "-p", "The capital of France is", "-n", "3")
    assert from_file.returncode == 0 and from_file.stdout == from_p.stdout, from_file.stderr
    out = turbosparse(*base, "-c", "16", "-p", "Once upon a time", "-ngl", "99", "-no-cnv", "--ignore-eos")
    assert out.returncode == 0, out.stderr
    # the 16 positions filled: 4 + 12 tokens, the last taken and never evaluated; the same as with a larger -n
    assert "prompt: 4 tokens" in out.stderr and "decode: 11 tokens" in out.stderr
    bound = turbosparse(*base, "-c", "16", "-p", "Once upon a time", "--ignore-eos", "-n", "100")
    assert bound.stdout == out.stdout and "decode: 11 tokens" in bound.stderr
    assert "-ngl has no effect" in out.stderr
    counted = turbosparse(*base, "-p", "Count: 1, 2, 3,", "-r", " 6", "-n", "16")  # -r's text shown, as llama-cli's
    assert counted.returncode == 0 and counted.stdout == "Count: 1, 2, 3, 4, 5, 6\n", counted.stdout
    taken = turbosparse(*base, "-p", "Hi", "-n", "1", "--jinja", "-tb", "2", "-co", "-no-perf", "-mli", "-sp")
    assert taken.returncode == 0 and "--threads-batch has no effect here" in taken.stderr, taken.stderr
    off = [
        "--mirostat",
        "0",
        "--typical",
        "1.0",
        "--top-nsigma",
        "-1",
        "--xtc-probability",
        "0",
        "--dry-multiplier",
        "0",
        "--dynatemp-range",
        "0",
        "--mirostat-lr",
        "0.1",
        "--dry-sequence-breaker",
        "none",
        "--samplers",
        "k;t",
    ]
    taken = turbosparse(*base, "-p", "Hi", "-n", "1", *off)  # llama.cpp's samplers not here: a command line naming
    assert taken.returncode == 0 and taken.stdout == turbosparse(*base, "-p", "Hi", "-n", "1").stdout  # them off runs
    assert "--samplers has no effect here: the samplers run in llama.cpp's default order" in taken.stderr
    for flag, value, what in (("--mirostat", "2", "mirostat sampling"), ("--typical-p", "0.9", "locally typical"),
                              ("--dry-multiplier", "0.8", "DRY sampling")):  # fmt: skip
        asked = turbosparse(*base, "-p", "Hi", "-n", "1", flag, value)
        assert asked.returncode == 2 and f"{value}: {what}" in asked.stderr and "not implemented here" in asked.stderr
    hub = turbosparse("run", "-hf", "bartowski/SmolLM2-GGUF")  # read as -h f before: the help, and exit 0
    assert hub.returncode == 2 and "-hf bartowski/SmolLM2-GGUF: models are not downloaded here" in hub.stderr


def test_chat_messages_from_stdin_and_single_turns(smollm2_path) -> None:
    """llama-cli's `-sys TEXT` (or --chat, -st) without -p answers the message on stdin; -cnv -st ends after one
    answer; -cnv takes a -n past the context (a bound, not a refusal of every message)."""
    base = ["run", "-m", str(smollm2_path), "--temp", "0", "-t", "2", "-n", "8"]
    system = ["-sys", "You answer in one word."]
    given = turbosparse(*base, *system, "-p", "What color is the sky?")
    piped = subprocess.run([sys.executable, "-m", "turbosparse", *base, *system], input="What color is the sky?\n",
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert piped.returncode == 0 and piped.stdout == given.stdout and given.stdout.strip(), piped.stderr
    lines = "Name two colors.\nThen stop.\n"  # all of piped input is the message, as -f reads a file
    whole = turbosparse(*base, *system, "-p", "Name two colors.\nThen stop.")
    piped = subprocess.run([sys.executable, "-m", "turbosparse", *base, *system], input=lines, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert piped.stdout == whole.stdout, (piped.stdout, whole.stdout)
    empty = subprocess.run([sys.executable, "-m", "turbosparse", *base, "--chat"], input="", capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert empty.returncode == 1 and "(or a message on stdin)" in empty.stderr
    one = subprocess.run([sys.executable, "-m", "turbosparse", *base, "-cnv", "-st", "-p", "Hi"], input="Again\n",
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 1, one.stdout
    roomy = subprocess.run([sys.executable, "-m", "turbosparse", *base[:-2], "-cnv", "-c", "256", "-n", "500"],
                           input="Hi\n", capture_output=True, text=True, timeout=300)  # fmt: skip
    assert roomy.returncode == 0 and roomy.stdout.strip() and "not sent" not in roomy.stderr, roomy.stderr


def test_flash_attention_and_cache_type_flags(smollm2_path) -> None:
    """llama-cli's -fa (auto by default: on, on the CPU), -ctk and -ctv: the text of the Model so configured; a
    quantized V cache without flash attention is a one-line error."""
    from turbosparse import Model

    base = ("run", "-m", str(smollm2_path), "-t", "2", "-p", "The capital of France is", "-n", "8", "--temp", "0")
    with Model(smollm2_path, n_threads=2, flash_attn=True, type_k="q8_0", type_v="q8_0") as model:
        want = model.generate("The capital of France is", max_tokens=8, temperature=0.0)
    out = turbosparse(*base, "-ctk", "q8_0", "-ctv", "q8_0")
    assert out.returncode == 0 and out.stdout.startswith("The capital of France is" + want), out.stderr
    out = turbosparse(*base, "-fa", "off", "-ctv", "q8_0")
    assert out.returncode == 1 and "quantized V cache (q8_0) needs flash attention" in out.stderr
    assert "Traceback" not in out.stderr


def test_flash_attention_values_as_llama_cpp_reads_them() -> None:
    """-fa's values (llama.cpp's truthy, falsey and auto words) and auto's reading: on for a model on the CPU,
    whatever the cache types; bench refuses the flags where it runs no attention of its own."""
    import argparse

    from turbosparse.cli.run_cmd import add_attention_args, attention_kwargs

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    add_attention_args(parser)

    def flash(*flags: str) -> bool:
        return attention_kwargs(parser.parse_args(list(flags)))["flash_attn"]

    assert flash() and flash("-fa") and flash("-fa", "enabled") and flash("-fa", "1") and flash("-fa", "-1")
    assert not flash("-fa", "off") and not flash("-fa", "0") and not flash("--flash-attn", "false")
    assert attention_kwargs(parser.parse_args(["-ctk", "q8_0", "-ctv", "q4_0"])) == {
        "flash_attn": True, "type_k": "q8_0", "type_v": "q4_0"}  # fmt: skip
    out = turbosparse("run", "-m", "x.gguf", "-fa", "maybe")
    assert out.returncode == 2 and "unknown value 'maybe': on, off or auto" in out.stderr
    out = turbosparse("bench", "--ffn-layer", "q4_0", "-fa", "on")
    assert out.returncode == 1 and "--ffn-layer, --generate and --batch take none" in out.stderr


def test_logit_bias_flag(smollm2_path) -> None:
    from turbosparse import Model

    model = Model(smollm2_path, n_threads=2, n_ctx=64)
    paris = model.tokenize(" Paris", add_bos=False)[0]
    model.close()
    base = ["run", "-m", str(smollm2_path), "--temp", "0", "-t", "2", "-p", "The capital of France is", "-n", "1"]
    assert turbosparse(*base).stdout.startswith("The capital of France is Paris")
    out = turbosparse(*base, "-l", f"{paris}-inf")
    assert out.returncode == 0 and "Paris" not in out.stdout, out.stderr
    bad = turbosparse(*base, "-l", "Paris+1")
    assert bad.returncode == 2 and "TOKEN_ID+BIAS" in bad.stderr


def test_a_closed_pipe_ends_quietly(smollm2_path) -> None:
    """`turbosparse run ... | head -c 5`: no error line, no traceback (a program SIGPIPE ends exits 141)."""
    command = [sys.executable, "-m", "turbosparse", "run", "-m", str(smollm2_path), "-p", "Once upon a time", "-n",
               "64", "--ignore-eos", "-t", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(5)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert "error" not in err and "Traceback" not in err


def test_ctrl_c_ends_the_text_with_the_timings(smollm2_path) -> None:
    import signal

    command = [sys.executable, "-m", "turbosparse", "run", "-m", str(smollm2_path), "-p", "Once upon a time", "-n",
               "2000", "-c", "2048", "--ignore-eos", "-t", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(40)  # generating
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert b"decode: " in err and b"Traceback" not in err and out.endswith(b"\n")


def test_a_chat_template_that_is_not_utf8_is_a_one_line_error(tmp_path, bos_model) -> None:
    data = bytearray(bos_model.read_bytes())
    at = data.find(b"{{ bos_token }}{% for")
    data[at + 3] = 0xFF
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    out = turbosparse("run", "-m", str(bad), "--chat", "-p", "Hi", "-n", "1", "-t", "2")
    assert out.returncode == 1 and "tokenizer.chat_template is not UTF-8" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("text", "processed"),
    [
        (r"a\nb\tc", "a\nb\tc"),
        (r"\'\"\\n", "'\"\\n"),  # \\ is one backslash, then a plain n
        (r"caf\xc3\xa9 \x41", "café A"),  # bytes, together UTF-8
        (r"\q \x4g", r"\q \x4g"),  # no escape: as it is
        ("end\\", "end\\"),
    ],
)  # fmt: skip
def test_escapes_as_llama_cli_processes_them(text: str, processed: str) -> None:
    from turbosparse.cli.run_cmd import process_escapes

    assert process_escapes(text) == processed


def test_files_that_are_not_models(tmp_path, smollm2_path) -> None:
    """A FIFO is refused (opening it waited for a writer, for ever); a name that is not UTF-8 is a file like any
    other (its encoding was a traceback); llama.cpp's reason for refusing a vocabulary is said (its log is off)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    os.mkfifo(tmp_path / "fifo.gguf")
    out = subprocess.run([sys.executable, "-m", "turbosparse", "run", "-m", str(tmp_path / "fifo.gguf"), "-p", "Hi"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and "fifo.gguf: not a regular file" in out.stderr
    odd = os.path.join(os.fsencode(tmp_path), b"lat\xff.gguf")
    os.symlink(smollm2_path, odd)
    out = turbosparse("run", "-m", os.fsdecode(odd), "-p", "Hi", "-n", "2", "--temp", "0", "-c", "64")
    assert out.returncode == 0 and out.stdout.startswith("Hi"), out.stderr
    bad = tmp_path / "bad.gguf"
    reader = gguf.GGUFReader(str(smollm2_path))
    writer = gguf.GGUFWriter(str(bad), arch=reader.fields["general.architecture"].contents())
    copy_with_new_metadata(reader, writer, {"general.file_type": MetadataDetails(gguf.GGUFValueType.STRING, "q4")}, [])
    out = turbosparse("run", "-m", str(bad), "-p", "Hi", "-n", "1")
    assert out.returncode == 1
    assert "could not load the vocabulary: key general.file_type has wrong type str but expected type u32" in out.stderr
    overlapping = tmp_path / "overlapping.gguf"  # the cause is gguf's reader's line, before the loader's
    shutil.copyfile(smollm2_path, overlapping)
    second = gguf.GGUFReader(str(overlapping), "r+").tensors[1]
    second.field.parts[-1][0] = 0  # its data offset, where the first tensor's data is
    second.field.parts[-1].flush()
    out = turbosparse("run", "-m", str(overlapping), "-p", "Hi", "-n", "1")
    assert out.returncode == 1
    assert f"could not load the vocabulary: gguf_init_from_reader: tensor '{second.name}' has offset 0" in out.stderr


def conversion_under_way(tmp_path, smollm2_path, preexec_fn: Callable[[], object]) -> subprocess.Popen[bytes]:
    """`convert` to tmp_path/out.gguf, once its partial file is there."""
    out = tmp_path / "out.gguf"
    cmd = [sys.executable, "-m", "turbosparse", "convert", str(smollm2_path), "-o", str(out), "--outtype", "q8_0"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec_fn)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".*.partial")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_removes_the_partial_output(tmp_path, smollm2_path, signum: signal.Signals) -> None:
    """`kill` (a service manager, a container stopping) and a closed terminal (SIGHUP) end a conversion as Ctrl-C
    does: the partial file goes (SIGHUP left a hidden one, named by the process id, never removed)."""
    default = functools.partial(signal.signal, signum, signal.SIG_DFL)  # whatever this test's runner ignores
    process = conversion_under_way(tmp_path, smollm2_path, default)
    process.send_signal(signum)
    assert process.wait(timeout=60) == -signum  # ended by the signal, as a service manager expects
    assert list(tmp_path.iterdir()) == []


def test_under_nohup_a_hangup_is_ignored(tmp_path, smollm2_path) -> None:
    """SIGHUP ignored by the parent (nohup) stays ignored: the conversion goes on to its end."""
    process = conversion_under_way(
        tmp_path, smollm2_path, functools.partial(signal.signal, signal.SIGHUP, signal.SIG_IGN)
    )
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=120) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_perplexity_chunks_are_positive_or_all(smollm2_path, tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    out = turbosparse("perplexity", "-m", str(smollm2_path), "-f", str(text), "-c", "64", "--chunks", "0")
    assert out.returncode == 1 and "--chunks must be >= 1, got 0" in out.stderr
    every = turbosparse("perplexity", "-m", str(smollm2_path), "-f", str(text), "-c", "64", "--json")
    out = turbosparse("perplexity", "-m", str(smollm2_path), "-f", str(text), "-c", "64", "--chunks", "-1", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == json.loads(every.stdout)  # llama-perplexity's "all"


def test_chat_template_kwargs_reach_the_template(smollm2_path) -> None:
    """llama-server's --chat-template-kwargs (a JSON object) on run: variables the chat template reads."""
    from turbosparse import Model

    with Model(smollm2_path, n_threads=2, n_ctx=64) as model:
        n = len(model.tokenize("Q: Hi, said Ann! A:", special=True))
    template = "Q: {{ messages[-1]['content'] }}{% if who is defined %}, said {{ who }}{% endif %}! A:"
    args = ("run", "-m", str(smollm2_path), "--chat-template", template, "--chat", "-p", "Hi", "-n", "1")
    out = turbosparse(*args, "--chat-template-kwargs", '{"who": "Ann"}')
    assert out.returncode == 0 and f"prompt: {n} tokens" in out.stderr, out.stderr
    refused = (("{who: Ann}", "not JSON"), ('["Ann"]', "a JSON object is expected"),
               ('{"enable_thinking": "false"}', "true or false"), ('{"messages": []}', "cannot be named"))  # fmt: skip
    for bad, why in refused:
        out = turbosparse(*args, "--chat-template-kwargs", bad)
        assert out.returncode == 2 and why in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_run_prompt_cache(tmp_path, smollm2_path) -> None:
    """llama-cli's --prompt-cache: the first run writes the prompt's state; a run whose prompt starts with it
    evaluates only the rest (the very prompt again nothing), -ro leaves the file as it is, and a file
    of another cache type is named and the prompt evaluated whole; a file that is not a state is refused, untouched."""
    cache = tmp_path / "prompt.cache"
    story = "Once upon a time, in a small village by the sea, there lived an old fisherman and his three daughters."
    base = ["run", "-m", str(smollm2_path), "-t", "2", "-n", "4", "--temp", "0", "--prompt-cache", str(cache)]

    def evaluated(out: subprocess.CompletedProcess[str]) -> int:
        assert out.returncode == 0, out.stderr
        return int(re.search(r"prompt: (\d+) tokens", out.stderr).group(1))

    first = turbosparse(*base, "-p", story)
    assert "no file yet" in first.stderr and evaluated(first) > 20 and cache.stat().st_size > 0
    written = cache.read_bytes()
    again = turbosparse(*base, "-p", story + " One day", "--prompt-cache-ro")
    assert f"{evaluated(first)} of the prompt's" in again.stderr and 0 < evaluated(again) <= 3, again.stderr
    assert cache.read_bytes() == written
    same = turbosparse(*base, "-p", story)
    assert same.stdout == first.stdout and evaluated(same) == 0  # the prompt's last logits came along
    shorter = turbosparse(*base, "-p", story.split(" by")[0])  # held whole: not written again (it would shrink)
    assert evaluated(shorter) <= 1 and cache.read_bytes() == written
    other_type = turbosparse(*base, "-p", story, "-ctk", "q8_0", "-fa", "on")  # ours, of another cache: written anew
    assert "cache is K f16" in other_type.stderr and evaluated(other_type) == evaluated(first)
    fresh = tmp_path / "fresh.cache"  # an empty file (mktemp's) is a cache not written yet, as llama-cli's
    fresh.touch()
    empty = turbosparse(*base[:-1], str(fresh), "-p", story)
    assert "no file yet" in empty.stderr and fresh.read_bytes() == written
    notes = tmp_path / "notes.txt"  # a file that is no prompt cache (a typo for -f): refused, left as it is
    notes.write_text("my notes")
    foreign = turbosparse(*base[:-1], str(notes), "-p", story)
    assert foreign.returncode == 1 and "holds something other than a turbosparse prompt cache" in foreign.stderr
    assert notes.read_text() == "my notes"
    refused = turbosparse(*base, "-cnv")
    assert refused.returncode != 0 and "not with -cnv" in refused.stderr


def test_llama_server_command_lines_run_as_they_are(smollm2_path, tmp_path, capsys, caplog) -> None:
    """llama-server's sampling flags become each request's defaults (its own fields win: n_predict and
    max_completion_tokens too); its flags that change nothing here are taken, each named in a note."""
    import logging

    from fastapi.testclient import TestClient

    from turbosparse.cli import build_parser, hyphenated
    from turbosparse.cli.llama_server_flags import note_no_effect, sampling_defaults
    from turbosparse.cli.serve_cmd import _api_keys
    from turbosparse.errors import InvalidArgumentError, TurboSparseError
    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    with pytest.raises(SystemExit):  # llama.cpp's samplers not implemented here: refused unless off
        build_parser().parse_args(["serve", "-m", str(smollm2_path), "--xtc-probability", "0.5"])
    assert "0.5: XTC sampling is not implemented here" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "-m", str(smollm2_path), "--jinja", "-ngl", "99", "-ub", "256",
                                      "--no-mmap", "--metrics", "--temp", "0", "--top-k", "1", "-n", "5",
                                      "-s", "-1", "--mirostat", "0", "--typical", "1"])  # fmt: skip
    with caplog.at_level(logging.INFO):
        note_no_effect(args)
    noted = [r.getMessage().split(": ")[1] for r in caplog.records]
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "INFO", "WARNING", "INFO"]  # -ngl, --no-mmap
    flags = ("--jinja", "--n-gpu-layers", "--ubatch-size", "--no-mmap", "--metrics")
    assert noted == [f"{flag} has no effect here" for flag in flags]
    defaults = sampling_defaults(args)
    assert defaults == {"temperature": 0.0, "top_k": 1, "max_tokens": 5, "seed": -1}
    config = ServerConfig(str(smollm2_path), n_ctx=512, n_threads=2, sampling_defaults=defaults)
    assert config.sampling_defaults["seed"] is None  # -1 as a request's -1: a fresh random seed
    no_cb = build_parser().parse_args(["serve", "-m", "x", "-nocb", "-np", "2"])
    assert no_cb.llama_server_no_cont_batching and no_cb.parallel == 2
    with pytest.raises(SystemExit):  # no abbreviations, as llama-server takes none
        build_parser().parse_args(["serve", "-m", "x", "--thread", "2"])
    # values as llama.cpp reads them: a negative temperature greedy, top-k <= 0 none, its default seed a random one
    odd = build_parser().parse_args(["serve", "-m", "x", "--temperature", "-1", "--top-k", "-1", "-s", "4294967295"])
    assert sampling_defaults(odd) == {"temperature": 0.0, "top_k": 0, "seed": -1}
    # long options with underscores, as llama.cpp's tools take them; llama.cpp's multi-letter short flags
    assert hyphenated(["serve", "--ctx_size", "64", "--chat_template_kwargs={\"a_b\": 1}", "-p", "--- my_doc",
                       "--", "--x_y"]) == ["serve", "--ctx-size", "64", "--chat-template-kwargs={\"a_b\": 1}", "-p",
                                           "--- my_doc", "--", "--x_y"]  # fmt: skip
    keys = tmp_path / "keys.txt"
    keys.write_text("k1\n\nk2\n")
    with_file = build_parser().parse_args(["serve", "-m", "x", "--api-key", "a,b", "--api-key-file", str(keys)])
    assert _api_keys(with_file) == "a,b,k1,k2"
    assert _api_keys(build_parser().parse_args(["serve", "-m", "x", "--api-key", ""])) is None  # as llama.cpp: none
    with pytest.raises(TurboSparseError, match="holds no key"):  # ServerConfig's check of the keys given
        ServerConfig(
            str(smollm2_path), api_key=_api_keys(build_parser().parse_args(["serve", "-m", "x", "--api-key", ","]))
        )
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(TurboSparseError, match=r"empty\.txt holds no key"):  # a secret left unfilled: no open server
        _api_keys(build_parser().parse_args(["serve", "-m", "x", "--api-key-file", str(tmp_path / "empty.txt")]))
    for spelling, value in (("off", "off"), ("false", "off"), ("1", "on"), ("auto", "auto")):
        assert build_parser().parse_args(["serve", "-m", "x", "-rea", spelling]).reasoning == value
    bare = build_parser().parse_args(["serve", "-m", "x", "--log-colors", "--fit", "-np", "2"])  # optional values
    assert (bare.llama_server_log_colors, bare.llama_server_fit, bare.parallel) == (True, True, 2)
    short = build_parser().parse_args(["serve", "-m", "x", "-sm", "none", "-mg", "0", "-dev", "none", "-v"])
    assert (short.model, short.device, short.verbose, short.llama_server_split_mode) == ("x", "cpu", True, "none")
    messages = [{"role": "user", "content": "Tell me a story."}]
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        first = client.post("/v1/chat/completions", json={"messages": messages}).json()
        again = client.post("/v1/chat/completions", json={"messages": messages}).json()
        assert first["usage"]["completion_tokens"] == 5 and first["choices"] == again["choices"]  # greedy, 5
        own = client.post("/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 3}).json()
        assert own["usage"]["completion_tokens"] == 3
        more = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 50}).json()
        assert more["usage"]["completion_tokens"] == 5  # -n is a limit too, as llama-server's
        # a limit under a name the route does not read leaves the default
        other = client.post("/v1/chat/completions", json={"messages": messages, "n_predict": 3}).json()
        assert other["usage"]["completion_tokens"] == 5
        response = client.post("/v1/responses", json={"input": "Tell me a story."}).json()
        assert (response["max_output_tokens"], response["usage"]["output_tokens"]) == (5, 5)
        native = client.post("/completion", json={"prompt": "Once upon a time", "n_predict": 2}).json()
        assert native["tokens_predicted"] == 2
        for form in ("application/x-www-form-urlencoded", "text/plain; charset=utf-8"):  # `curl -d`: as llama-server
            sent = client.post("/tokenize", content='{"content": "Hello"}', headers={"content-type": form})
            assert sent.status_code == 200 and sent.json()["tokens"] == [19556], sent.text
        params = client.get("/props").json()["default_generation_settings"]["params"]  # what requests get
        assert (params["temperature"], params["top_k"], params["n_predict"]) == (0.0, 1, 5)
        assert (
            client.post("/v1/completions", json={"prompt": "Once upon a time"}).json()["usage"]["completion_tokens"]
            == 5
        )
    with pytest.raises(InvalidArgumentError, match="the default temperature"):
        ServerConfig(str(smollm2_path), sampling_defaults={"temperature": -1.0})

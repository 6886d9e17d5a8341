"""Bad model files give a ModelLoadError naming the file and what is wrong, never a crash."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import ModelLoadError
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.errors import ContextOverflowError, InvalidArgumentError

from tinymodel import TinyConfig, random_weights, spm_tokens, write_gguf

CFG = TinyConfig()


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.gguf"
    write_gguf(path, CFG, random_weights(CFG))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        NativeModel(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_good_file_loads(good: Path) -> None:
    assert NativeModel(good).info.n_layer == CFG.n_layer


def test_missing_and_empty_files(tmp_path: Path) -> None:
    assert "cannot open" in load_error(tmp_path / "nope.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert "truncated" in load_error(tmp_path / "empty.gguf")
    assert "not a regular file" in load_error(tmp_path)


def test_wrong_magic(good: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + good.read_bytes()[4:])
    assert "not a GGUF file: magic is 'GGML'" in load_error(bad)


def test_a_format_version_that_is_not_an_integer(tmp_path: Path) -> None:
    """It was taken as absent, skipping the check that refuses files newer than this turbosparse."""
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"turbosparse.format_version": "9"})
    assert "turbosparse.format_version" in load_error(path)


def test_unsupported_version(good: Path, tmp_path: Path) -> None:
    data = bytearray(good.read_bytes())
    data[4:8] = struct.pack("<I", 1)
    (tmp_path / "v1.gguf").write_bytes(bytes(data))
    assert "version 1 is not supported" in load_error(tmp_path / "v1.gguf")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated(good: Path, tmp_path: Path, keep: float) -> None:
    data = good.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: int(len(data) * keep)])
    assert "truncated" in load_error(bad)


def test_missing_tensor(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), skip=("blk.1.attn_q.weight",))
    assert "missing tensor 'blk.1.attn_q.weight'" in load_error(path)


@pytest.mark.parametrize("part", ["fc1", "fc2"])
def test_a_missing_predictor_tensor_is_named_as_the_file_names_its_predictors(tmp_path: Path, part: str) -> None:
    """(fc2 was named by PowerInfer's name, blk.0.fc2.weight, in a file of ours; a missing fc1 was a rank mismatch.)"""
    path = tmp_path / "m.gguf"
    ranks = {"turbosparse.predictor_ranks": [16] * CFG.n_layer}  # as convert writes them
    write_gguf(
        path, CFG, random_weights(CFG, predictor_rank=16), extra_kv=ranks, skip=(f"blk.0.ffn_pred_{part}.weight",)
    )
    assert f"missing tensor 'blk.0.ffn_pred_{part}.weight'" in load_error(path)


def test_wrong_shape(tmp_path: Path) -> None:
    weights = random_weights(CFG)
    weights["blk.0.ffn_up.weight"] = weights["blk.0.ffn_up.weight"][:-32]
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights)
    message = load_error(path)
    assert "tensor 'blk.0.ffn_up.weight' has shape [64, 128, 1, 1], expected [64, 160, 1, 1]" in message


def test_unknown_architecture(tmp_path: Path) -> None:
    cfg = TinyConfig(arch="phi2")
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_weights(cfg))
    assert "unsupported architecture 'phi2'" in load_error(path)


GEMMA3 = TinyConfig(arch="gemma3", act="geglu", n_swa=4, tied=True)


@pytest.mark.parametrize(
    ("extra", "skip", "message"),
    [
        ({}, ("blk.1.post_ffw_norm.weight",), "missing tensor 'blk.1.post_ffw_norm.weight'"),
        ({}, ("blk.0.attn_k_norm.weight",), "missing tensor 'blk.0.attn_k_norm.weight'"),
        ({"gemma3.attention.sliding_window_pattern": [True, True, False]}, (),
         "'gemma3.attention.sliding_window_pattern' has 3 elements, expected 2"),
        ({"gemma3.attention.sliding_window_pattern": "six"}, (), "'gemma3.attention.sliding_window_pattern'"),
        ({"gemma3.final_logit_softcapping": -1.0}, (), "final_logit_softcapping = -1 must be finite and >= 0"),
        ({"gemma3.rope.freq_base_swa": 0.0}, (), "gemma3.rope.freq_base_swa must be positive"),
        ({"turbosparse.ffn_activation": "gelu"}, (), "'gelu' is unknown (expected swiglu, reglu, drelu or geglu)"),
    ],
)  # fmt: skip
def test_bad_gemma3_files(tmp_path: Path, extra: dict, skip: tuple[str, ...], message: str) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, GEMMA3, random_weights(GEMMA3), extra_kv=extra, skip=skip)
    assert message in load_error(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("rope.scaling.attn_factor", math.nan), ("rope.scaling.attn_factor", 0.0), ("rope.scaling.factor", math.nan),
     ("rope.scaling.factor", -2.0), ("rope.scaling.factor", math.inf)],
)  # fmt: skip
def test_rope_scaling_that_is_not_a_positive_number(tmp_path: Path, key: str, value: float) -> None:
    """(an attn_factor of NaN loaded, every logit NaN; a factor of NaN or -2 was taken for no scaling)"""
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={f"llama.{key}": value})
    assert f"llama.{key} must be finite and positive" in load_error(path)


def test_a_gemma2_cap_of_zero(tmp_path: Path) -> None:
    """llama.cpp divides Gemma 2's scores and logits by their caps whatever they are: 0 is refused, not run uncapped."""
    cfg = TinyConfig(arch="gemma2", act="geglu", tied=True)
    path = tmp_path / "m.gguf"
    write_gguf(path, cfg, random_weights(cfg), extra_kv={"gemma2.attn_logit_softcapping": 0.0})
    assert "gemma2.attn_logit_softcapping = 0 must be finite and > 0" in load_error(path)


@pytest.mark.parametrize("alignment", [1, 4, 48])
def test_alignment_below_eight_or_not_a_power_of_two(tmp_path: Path, alignment: int) -> None:
    """GGUF asks general.alignment to be a multiple of 8: at 1 or 4 an F32 tensor can start at an address its floats
    cannot be read from (a fuzzed PowerInfer file did, found by UBSan in the act node's bias read)."""
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"general.alignment": alignment})
    assert f"general.alignment must be a power of two of at least 8, got {alignment}" in load_error(path)


def test_a_vocabulary_holding_a_token_twice(tmp_path: Path) -> None:
    """llama.cpp's vocabulary loader aborts the process on a repeated token (an assertion): said first, by name."""
    path = tmp_path / "m.gguf"
    tokens = [f"t{i}" for i in range(CFG.n_vocab)]
    tokens[7] = tokens[3]
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"tokenizer.ggml.tokens": tokens})
    assert "tokenizer.ggml.tokens holds the same text twice (tokens 3 and 7)" in load_error(path)
    tokens[7] = "t3 "
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"tokenizer.ggml.tokens": tokens})
    NativeModel(path)


def test_a_sentencepiece_vocabulary_without_byte_tokens(tmp_path: Path) -> None:
    """llama.cpp's SentencePiece tokenizer falls back to the byte tokens <0x00>..<0xFF> for text outside the
    vocabulary and aborts the process where one is missing: refused at load, by name."""
    path = tmp_path / "m.gguf"
    tokens = [f"t{i}" for i in range(CFG.n_vocab)]
    tokens[3 : 3 + 256] = [f"<0x{b:02X}>" for b in range(256)]
    write_gguf(
        path, CFG, random_weights(CFG), extra_kv={"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens}
    )
    NativeModel(path)
    tokens[3 + 0x41] = "<0x41 >"
    write_gguf(
        path, CFG, random_weights(CFG), extra_kv={"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens}
    )
    assert "tokenizer.ggml.tokens has no byte token <0x41> (1 of the 256 missing)" in load_error(path)
    write_gguf(
        path, CFG, random_weights(CFG), extra_kv={"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens}
    )
    NativeModel(path)  # byte-level BPE vocabularies spell bytes otherwise


def test_a_vocabulary_that_does_not_match_the_embedding_rows(tmp_path: Path) -> None:
    """llama.cpp refuses such a file; a warning at load let a generation fail at its first token past the vocabulary
    (or the prompt at one past the embedding rows) without naming the file."""
    from turbosparse import Model

    path = tmp_path / "m.gguf"
    for n_tokens in (CFG.n_vocab - 1, CFG.n_vocab + 1):
        vocab = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": spm_tokens(n_tokens)}
        write_gguf(path, CFG, random_weights(CFG), extra_kv=vocab)
        with pytest.raises(ModelLoadError, match=f"has {n_tokens} tokens but token_embd has {CFG.n_vocab} rows"):
            Model(path, n_ctx=64, n_threads=1)
    vocab = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": spm_tokens(CFG.n_vocab)}
    write_gguf(path, CFG, random_weights(CFG), extra_kv=vocab)
    with Model(path, n_ctx=64, n_threads=1) as model:
        assert model.tokenizer.n_vocab == CFG.n_vocab


def test_one_file_of_a_split_model_says_so(tmp_path: Path) -> None:
    """llama-gguf-split's files (model-00002-of-00003.gguf): a file without the rest of the tensors is not "missing
    tensor ...", it is one of several, loaded from the first (test_split_gguf.py)."""
    path = tmp_path / "m-00002-of-00003.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"split.count": 3, "split.no": 1})
    message = load_error(path)
    assert "file 2 of a model split into 3 files (split.no): load the first, the file named ...-00001-of-" in message
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"split.count": 1, "split.no": 0})
    NativeModel(path)  # a split of one is the whole model


def test_a_predictor_threshold_that_is_nan(tmp_path: Path, good: Path) -> None:
    """The context takes NaN for "the file's threshold": a file's own NaN is refused, and so is a caller's."""
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"turbosparse.predictor_threshold": float("nan")})
    assert "turbosparse.predictor_threshold is NaN" in load_error(path)
    model = NativeModel(good)
    kwargs = {"n_ctx": 16, "n_threads": 1, "n_batch": 4, "sparse_mode": SparseMode.OFF}
    with pytest.raises(InvalidArgumentError, match="threshold must be a number, got nan"):
        NativeContext(model, threshold=float("nan"), **kwargs)
    ctx = NativeContext(model, threshold=None, **kwargs)
    with pytest.raises(InvalidArgumentError, match="threshold must be a number"):
        ctx.threshold = float("nan")


def test_a_key_or_tensor_name_that_occurs_twice(good: Path, tmp_path: Path) -> None:
    """GGUF keys and tensor names are unique (llama.cpp and gguf-py refuse such files): the reader had taken the
    first of the two, and `convert` then met gguf-py's KeyError."""
    from dataclasses import replace

    from turbosparse.convert import ConvertError, convert

    from fuzzing import parse, write

    layout = parse(good.read_bytes())
    key, name = layout.kvs[1], layout.tensors[1]
    cases = [
        (replace(layout, kvs=[*layout.kvs, key]), f"the key '{key.key.decode()}'"),
        (replace(layout, tensors=[*layout.tensors, name]), f"the tensor name '{name.name.decode()}'"),
    ]
    for bad, what in cases:
        path = tmp_path / "twice.gguf"
        path.write_bytes(write(bad)[0])
        assert f"corrupt file: {what} occurs twice" in load_error(path)
        with pytest.raises(ConvertError, match="not a readable GGUF file"):
            convert(path, tmp_path / "out.gguf", outtype="q8_0")


def test_missing_hparam_and_bad_activation(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), extra_kv={"turbosparse.ffn_activation": "gelu"})
    assert "turbosparse.ffn_activation 'gelu' is unknown" in load_error(path)


def _patch_tensor_type(path: Path, name: str, type_id: int) -> None:
    """Rewrites the ggml type id in a tensor's header entry."""
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))


def test_unsupported_types(good: Path) -> None:
    _patch_tensor_type(good, "blk.0.attn_norm.weight", 1)  # F16 norm
    assert "tensor 'blk.0.attn_norm.weight' has type f16, expected F32" in load_error(good)
    _patch_tensor_type(good, "blk.0.attn_norm.weight", 4)  # the removed Q4_2
    assert "tensor 'blk.0.attn_norm.weight' has unknown or removed ggml type id 4" in load_error(good)
    _patch_tensor_type(good, "blk.0.attn_norm.weight", 9999)
    assert "unknown or removed ggml type id 9999" in load_error(good)


def test_a_dimension_whose_product_overflows(tmp_path: Path) -> None:
    """Q4_0 [64, 3e17]: 36 bytes a row fit size_t 3e17 times, but 64 * 3e17 elements overflow int64 (the check must
    come before the product: under UBSan the old loop's multiplication was the report, found by fuzzing a PowerInfer
    file)."""
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG), gguf.GGMLQuantizationType.Q4_0)
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len("blk.0.ffn_up.weight")) + b"blk.0.ffn_up.weight"
    at = data.index(key) + len(key)
    struct.pack_into("<Q", data, at + 4 + 8, 3 * 10**17)  # n_dims, then ne[0], ne[1]
    path.write_bytes(bytes(data))
    assert f"tensor 'blk.0.ffn_up.weight' of shape [64, {3 * 10**17}, 1, 1] is too large" in load_error(path)


def test_random_header_corruption_never_crashes(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    header_end = data.index(b"output_norm.weight") + 200
    rng = np.random.default_rng(0)
    bad = tmp_path / "corrupt.gguf"
    outcomes = {"error": 0, "loaded": 0}
    for _ in range(300):
        mutated = bytearray(data)
        for pos in rng.integers(0, header_end, 3):
            mutated[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        try:
            NativeModel(bad)
            outcomes["loaded"] += 1
        except ModelLoadError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100


def test_bad_tokens_and_context_overflow(good: Path) -> None:
    ctx = NativeContext(NativeModel(good), n_ctx=16, n_threads=1, n_batch=8, sparse_mode=SparseMode.OFF, threshold=None)
    with pytest.raises(InvalidArgumentError, match="token 384 at index 1 is out of the vocabulary"):
        ctx.eval([1, CFG.n_vocab], dense_ffn=True, logits_all=False)
    with pytest.raises(InvalidArgumentError, match="out of the vocabulary"):
        ctx.eval([-1], dense_ffn=True, logits_all=False)
    ctx.eval(list(range(10)), dense_ffn=True, logits_all=False)
    with pytest.raises(ContextOverflowError, match="10 cached \\+ 7 new tokens exceed n_ctx = 16"):
        ctx.eval(list(range(7)), dense_ffn=True, logits_all=False)
    assert ctx.n_past == 10
    # what is not an int32 id is refused, not truncated (1.5 -> 1, True -> 1) or wrapped (2**32 + 1 -> 1)
    for bad in ([1.5], np.array([2**32 + 1]), [2**70], [True], np.array([1.0])):
        with pytest.raises(InvalidArgumentError, match="integers that fit int32"):
            ctx.eval(bad, dense_ffn=True, logits_all=False)
        with pytest.raises(InvalidArgumentError, match="integers that fit int32"):
            ctx.decode_batch([0], bad)
    with pytest.raises(InvalidArgumentError, match="1-D"):
        ctx.eval([[1, 2]], dense_ffn=True, logits_all=False)
    assert ctx.n_past == 10


def test_a_tensor_type_newer_than_the_gguf_package_is_named(tmp_path: Path) -> None:
    """calibrate, bench and convert read tensors through gguf-py, which refuses llama.cpp's newest types (Q2_0 is
    42): they say so, where a traceback said "np.uint32(42) is not a valid GGMLQuantizationType"."""
    from turbosparse.errors import ModelLoadError
    from turbosparse.gguf_reader import read_gguf

    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, random_weights(CFG))
    data = bytearray(path.read_bytes())
    name = b"output_norm.weight"
    at = data.find(name) + len(name)  # then n_dims (u32), its dims (u64 each), the type (u32)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    assert int.from_bytes(data[type_at : type_at + 4], "little") == 0  # F32
    data[type_at : type_at + 4] = (42).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="a tensor of ggml type 42, newer than the gguf package"):
        read_gguf(path)


def test_gguf_py_on_a_damaged_file_is_one_error(good: Path, tmp_path: Path) -> None:
    """calibrate, bench, convert and relufy read through gguf-py, which trips in many ways on a file cut short
    (IndexError, struct.error, numpy's errors): each is the reader's ModelLoadError naming the file; and a FIFO is
    refused, not read (it blocked)."""
    from turbosparse.gguf_reader import read_gguf

    data = good.read_bytes()
    header_end = data.index(b"output_norm.weight") + 200  # past the tensor infos' start
    cut = tmp_path / "cut.gguf"
    for end in range(24, header_end, 5):
        cut.write_bytes(data[:end])
        with pytest.raises(ModelLoadError, match=r"cut\.gguf: not a readable GGUF file"):
            read_gguf(cut)
    os.mkfifo(tmp_path / "fifo.gguf")
    with pytest.raises(ModelLoadError, match=r"fifo\.gguf: not a regular file"):
        read_gguf(tmp_path / "fifo.gguf")
    with pytest.raises(ModelLoadError, match=r"fifo\.gguf: not a regular file"):
        NativeModel(tmp_path / "fifo.gguf")


def test_a_context_past_int32_is_refused(good: Path) -> None:
    """Its KV cells (rounded up to 256) wrapped to a negative count."""
    model = NativeModel(good)
    with pytest.raises(InvalidArgumentError, match=r"n_ctx = 2147483647: at most 268435456 tokens per sequence"):
        NativeContext(model, n_ctx=2**31 - 1, n_threads=1, n_batch=4, sparse_mode=SparseMode.OFF, threshold=None)


@pytest.mark.skipif(
    Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1", reason="memory always overcommitted: no failure"
)
@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""), reason="AddressSanitizer ends the process at a huge allocation"
)
def test_a_kv_cache_past_memory_names_its_size(smollm2_path: Path) -> None:
    """The error says what the cache would take and what makes it smaller (it said only sequences x tokens)."""
    from turbosparse import TurboSparseError

    model = NativeModel(smollm2_path)
    with pytest.raises(TurboSparseError, match=r"1 sequence\(s\) x 268435456 tokens \(\d+\.\d\d GiB, f16 keys and f16 "
                       r"values\): a smaller context, or a quantized cache"):  # fmt: skip
        NativeContext(model, n_ctx=2**28, n_threads=1, n_batch=4, sparse_mode=SparseMode.OFF, threshold=None)


def _smollm2_with(tmp_path: Path, smollm2_path: Path, name: str, key: str, value: str) -> Path:
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    out = tmp_path / name
    reader = gguf.GGUFReader(str(smollm2_path))
    writer = gguf.GGUFWriter(str(out), arch=reader.fields["general.architecture"].contents())
    copy_with_new_metadata(reader, writer, {key: MetadataDetails(gguf.GGUFValueType.STRING, value)}, [])
    return out


def test_llama_cpps_reasons_are_said_and_its_log_left_as_it_was(tmp_path: Path, smollm2_path: Path) -> None:
    """A vocabulary llama.cpp refuses is refused with llama.cpp's reason, the right one for each of two files
    loading at once; an application's own log callback stays installed and gets every line meanwhile."""
    import ctypes
    import threading

    import llama_cpp
    from llama_cpp import _logger

    from turbosparse.tokenizer import Tokenizer

    causes = {
        _smollm2_with(
            tmp_path, smollm2_path, "a.gguf", "general.file_type", "q4"
        ): "key general.file_type has wrong type",
        _smollm2_with(tmp_path, smollm2_path, "b.gguf", "tokenizer.ggml.model", "bogus"): "unknown tokenizer: 'bogus'",
    }
    wrong: list[str] = []

    def load_each(path: Path) -> None:
        for _ in range(10):
            try:
                Tokenizer(str(path))
            except ModelLoadError as exc:
                if causes[path] not in str(exc):
                    wrong.append(str(exc))
            else:
                wrong.append(f"{path} loaded")

    lines: list[bytes] = []
    ours = llama_cpp.llama_log_callback(lambda level, text, data: lines.append(text))
    llama_cpp.llama_log_set(ours, ctypes.c_void_p(0))
    try:
        threads = [threading.Thread(target=load_each, args=(path,)) for path in causes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        Tokenizer(str(smollm2_path)).close()
        installed = llama_cpp.llama_log_callback()
        llama_cpp.llama_log_get(ctypes.byref(installed), ctypes.byref(ctypes.c_void_p()))
        assert ctypes.cast(installed, ctypes.c_void_p).value == ctypes.cast(ours, ctypes.c_void_p).value
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    assert wrong == []
    assert any(b"wrong type" in line for line in lines) and any(b"print_info" in line for line in lines)


def test_every_error_class_the_readme_names_is_importable_from_turbosparse() -> None:
    import re

    import turbosparse

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    sentence = readme[readme.index("Every failure is a `turbosparse.TurboSparseError`") :].split(". The CLI")[0]
    names = set(re.findall(r"`(\w+Error)`", sentence)) - {"ValueError"}
    assert {"ConvertError", "CalibrationError", "TrainingError", "GrammarError"} <= names
    for name in names:
        assert issubclass(getattr(turbosparse, name), turbosparse.TurboSparseError), name


def test_a_threshold_no_predictor_reads_is_said(smollm2_path: Path, caplog) -> None:
    """--threshold was taken without a word in exact and dense modes (perplexity moved by none of 0, 0.5, 5)."""
    import logging

    from turbosparse import Model

    with caplog.at_level(logging.WARNING), Model(smollm2_path, n_ctx=32, sparse="off", threshold=0.5):
        pass
    assert "the predictor threshold 0.5 has no effect in off mode" in caplog.text


def test_head_counts_given_per_layer(tmp_path: Path) -> None:
    """llama.cpp reads head_count and head_count_kv as a number or an array with one entry per layer (as
    feed_forward_length): equal entries are the number; entries that differ are refused by name."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    source = tmp_path / "m.gguf"
    write_gguf(source, CFG, random_weights(CFG))

    def per_layer(name: str, **counts: list[int]) -> Path:
        reader, out = gguf.GGUFReader(str(source)), tmp_path / name
        writer = gguf.GGUFWriter(str(out), arch="llama")
        array = gguf.GGUFValueType.ARRAY
        changes = {f"llama.attention.{k}": MetadataDetails(array, v, sub_type=gguf.GGUFValueType.UINT32)
                   for k, v in counts.items()}  # fmt: skip
        copy_with_new_metadata(reader, writer, changes, [])
        return out

    n = CFG.n_layer
    same = NativeModel(str(per_layer("same.gguf", head_count=[CFG.n_head] * n, head_count_kv=[CFG.n_head_kv] * n)))
    assert (same.info.n_head, same.info.n_head_kv) == (CFG.n_head, CFG.n_head_kv)
    differing = per_layer("differing.gguf", head_count_kv=[CFG.n_head_kv] * (n - 1) + [1])
    assert f"'llama.attention.head_count_kv' differs between layers ({CFG.n_head_kv} vs 1)" in load_error(differing)

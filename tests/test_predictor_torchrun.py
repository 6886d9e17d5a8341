"""`relufy` and `train-predictors` under torchrun: two CPU ranks (gloo) give what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from turbosparse.predictor_train.export import save_bamboo

from tinytorch import save_word_tokenizer, tiny_drelu, tiny_swiglu, word_text

pytestmark = pytest.mark.slow


def turbosparse(args: list[str], ranks: int) -> dict:
    """The CLI as one process, or under torchrun with `ranks` processes on this machine; the summary it printed (the
    first rank's: ranks leave without the interpreter's finalization, so this checks that they flushed first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "turbosparse"]
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                  "-m", "turbosparse"]  # fmt: skip
    done = subprocess.run([*launch, *args, "--threads", "1"], env=env, capture_output=True, text=True, timeout=600)
    # both ends of stderr: a rank's own error comes first, torchrun's summary of the failed ranks last
    assert done.returncode == 0, done.stderr[:3000] + "\n[...]\n" + done.stderr[-3000:]
    return json.loads(done.stdout)


def assert_same_tensors(a: Path, b: Path, atol: float) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.allclose(ta[name], tb[name], atol=atol), f"{name}: max diff {(ta[name] - tb[name]).abs().max()}"


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text(word_text(3000, seed=3))
    return path


def test_relufy_two_ranks_equal_one(tmp_path: Path, calib: Path) -> None:
    src = tmp_path / "swiglu"
    tiny_swiglu(init=0.2).save_pretrained(src)
    save_word_tokenizer(src)
    common = ["relufy", str(src), "--data", str(calib), "--tokens", "2048", "--seq-len", "32", "--layerwise-seqs",
              "48", "--max-active", "0.2", "--finetune-steps", "6", "--finetune-batch", "6"]  # fmt: skip
    one = turbosparse([*common, "--out", str(tmp_path / "one")], ranks=1)
    two = turbosparse([*common, "--out", str(tmp_path / "two")], ranks=2)
    assert (one["out"], two["out"]) == (str(tmp_path / "one"), str(tmp_path / "two"))
    assert one.keys() == two.keys()
    assert_same_tensors(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors", atol=2e-4)


def test_train_predictors_two_ranks_equal_one(tmp_path: Path, calib: Path) -> None:
    model_dir = tmp_path / "model"
    save_bamboo(tiny_drelu(init=0.2), None, model_dir)
    save_word_tokenizer(model_dir)
    common = ["train-predictors", str(model_dir), "--data", str(calib), "--tokens", "1024", "--seq-len", "32",
              "--ranks", "4", "8", "--steps", "30", "--format", "bamboo"]  # fmt: skip
    one = turbosparse([*common, "--out", str(tmp_path / "one")], ranks=1)
    two = turbosparse([*common, "--out", str(tmp_path / "two")], ranks=2)
    assert (one["out"], two["out"]) == (str(tmp_path / "one"), str(tmp_path / "two"))
    assert one.keys() == two.keys()
    assert_same_tensors(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors", atol=1e-6)

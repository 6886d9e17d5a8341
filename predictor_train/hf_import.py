"""Loading a model for training: an HF checkpoint folder as is, or a llama-family GGUF through transformers'
GGUF reader (dequantized to float32), saved as an HF checkpoint folder with its tokenizer."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from turbosparse.constants import ARCHITECTURE, OTHER_DENSE_FAMILIES
from turbosparse.convert.copy import copy_with_keys
from turbosparse.errors import TrainingError
from turbosparse.gguf_reader import architecture, read_splits
from turbosparse.predictor_train.modeling import load_causal_lm


def gguf_to_hf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Writes gguf (a split model: its files together) as an HF checkpoint (config.json, model.safetensors,
    tokenizer.json, ...) in out_dir."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    splits = read_splits(gguf, TrainingError)  # a damaged file said in one line (transformers' ends in a traceback)
    arch = architecture(splits[0])
    if arch != ARCHITECTURE:  # said before the whole file is dequantized for nothing
        raise TrainingError(
            f"{gguf}: general.architecture {arch!r}: relufy, imatrix and train-predictors read GGUFs of llama.cpp's "
            f"llama architecture (Llama, Mistral, SmolLM); other dense GGUFs ({OTHER_DENSE_FAMILIES}) decode sparsely "
            "without training through `turbosparse calibrate`"
        )
    out_dir = Path(out_dir)
    if len(splits) > 1:  # transformers reads one file, silently: the split model's files as one
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
            return _write_hf(copy_with_keys(gguf, Path(tmp) / gguf.name, {}), out_dir)
    return _write_hf(gguf, out_dir)


def _write_hf(gguf: Path, out_dir: Path) -> Path:
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized float32 now; drop the GGUF "quantization" so that the model can be saved
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    tmp.replace(out_dir)
    return out_dir


def load_model(model_dir: str | Path) -> LlamaForCausalLM:
    """The torch model of an HF checkpoint folder (Llama / ReLU-Llama / bamboo), float32."""
    return load_causal_lm(model_dir).eval()


def load_tokenizer(model_dir: str | Path):
    path = Path(model_dir)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many kinds; say which folder, and keep the cause
        raise TrainingError(f"{path}: transformers cannot load the tokenizer ({type(exc).__name__}: {exc})") from exc

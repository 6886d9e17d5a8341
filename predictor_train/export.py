"""Writing trained predictors: embedded in a bamboo checkpoint, or as a PowerInfer-style predictor folder.

Our GGUF has one global threshold (turbosparse.predictor_threshold). Each layer's own threshold t_l (< 0) is
folded into its predictor: fc2 is scaled by s_l = GLOBAL_THRESHOLD / t_l > 0, so that
s_l * logit >= GLOBAL_THRESHOLD  <=>  logit >= t_l, exactly (the predictor has no biases; scaling its output
changes no decision). The stored threshold is GLOBAL_THRESHOLD.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from turbosparse.constants import HF_BAMBOO_ARCHITECTURE, HF_BAMBOO_MODEL_TYPE, PREDICTOR_INPUTS
from turbosparse.errors import TrainingError
from turbosparse.predictor_train.modeling import DReluMLP, Predictor, read_config
from turbosparse.predictor_train.select import GLOBAL_THRESHOLD

POWERINFER_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model")  # fmt: skip


@dataclass(frozen=True)
class PredictorSet:
    """Per layer predictors (already folded to the global threshold) and what the engine needs to run them."""

    predictors: list[Predictor]
    threshold: float
    input_kind: str
    activation_rates: list[float] | None = None
    predicted_rates: list[float] | None = None

    def __post_init__(self) -> None:
        if self.input_kind not in PREDICTOR_INPUTS:
            raise ValueError(f"predictor input {self.input_kind!r} is not one of {PREDICTOR_INPUTS}")
        n = len(self.predictors)
        for name in ("activation_rates", "predicted_rates"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} entries for {n} layers")


def fold_thresholds(
    predictors: Sequence[Predictor], thresholds: Sequence[float], global_threshold: float = GLOBAL_THRESHOLD
) -> list[Predictor]:
    """Copies of the predictors whose decisions at global_threshold equal the originals' at their own
    per-layer thresholds (fc2 scaled by global_threshold / t)."""
    if len(predictors) != len(thresholds):
        raise ValueError(f"{len(predictors)} predictors but {len(thresholds)} thresholds")
    out = []
    for i, (p, t) in enumerate(zip(predictors, thresholds, strict=True)):
        scale = global_threshold / t if t != 0 else 0.0
        if scale <= 0 or not torch.isfinite(torch.tensor(scale)):
            raise ValueError(f"layer {i}: threshold {t} cannot be folded into the global {global_threshold} "
                             "(it must be non-zero with the same sign)")  # fmt: skip
        q = copy.deepcopy(p)
        with torch.no_grad():
            q.fc2.weight.mul_(scale)
        out.append(q)
    return out


def _check_shapes(model: LlamaForCausalLM, predictors: Sequence[Predictor]) -> None:
    c = model.config
    if len(predictors) != c.num_hidden_layers:
        raise ValueError(f"{len(predictors)} predictors for a model of {c.num_hidden_layers} layers")
    for i, p in enumerate(predictors):
        rank = p.fc1.weight.shape[0]
        if p.fc1.weight.shape != (rank, c.hidden_size) or p.fc2.weight.shape != (c.intermediate_size, rank):
            raise ValueError(
                f"layer {i}: predictor fc1 {tuple(p.fc1.weight.shape)} / fc2 {tuple(p.fc2.weight.shape)} do not fit "
                f"hidden {c.hidden_size}, n_ff {c.intermediate_size}"
            )


def save_bamboo(
    model: LlamaForCausalLM, preds: PredictorSet | None, out_dir: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """A dReLU model (MLPs are DReluMLP) as a bamboo checkpoint: config.json + model.safetensors, written to a
    temporary file then renamed. With preds, those predictors embedded (mlp.predictor.fc1/fc2) and the config's
    "turbosparse" block filled; plus the tokenizer files found in tokenizer_dir."""
    from safetensors.torch import save_file

    if not all(isinstance(layer.mlp, DReluMLP) for layer in model.model.layers):
        raise TrainingError("a bamboo checkpoint needs dReLU FFNs (relufy the model first)")
    config = model.config.to_dict()
    config.update(model_type=HF_BAMBOO_MODEL_TYPE, architectures=[HF_BAMBOO_ARCHITECTURE], hidden_act="relu")
    if preds is not None:
        _check_shapes(model, preds.predictors)
        model = copy.deepcopy(model)
        for layer, p in zip(model.model.layers, preds.predictors, strict=True):
            layer.mlp.predictor = copy.deepcopy(p).to(layer.mlp.gate_proj.weight.dtype)
        block: dict = {"predictor_threshold": preds.threshold, "predictor_input": preds.input_kind}
        if preds.activation_rates is not None:
            block["activation_rates"] = [float(r) for r in preds.activation_rates]
        if preds.predicted_rates is not None:
            block["predicted_rates"] = [float(r) for r in preds.predicted_rates]
        config["turbosparse"] = block
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copyfile(src, out_dir / name)
    return out_dir


def load_bamboo_predictors(model_dir: str | Path) -> PredictorSet:
    """The predictors and turbosparse block of a bamboo checkpoint written by save_bamboo."""
    from turbosparse.predictor_train.modeling import load_causal_lm

    config = read_config(Path(model_dir))
    block = config.get("turbosparse")
    if block is None:
        raise TrainingError(f"{model_dir}/config.json has no 'turbosparse' block")
    model = load_causal_lm(model_dir)
    preds = []
    for i, layer in enumerate(model.model.layers):
        if getattr(layer.mlp, "predictor", None) is None:
            raise TrainingError(f"{model_dir}: layer {i} has no predictor")
        preds.append(layer.mlp.predictor)
    return PredictorSet(preds, float(block["predictor_threshold"]), block.get("predictor_input", "residual"),
                        block.get("activation_rates"), block.get("predicted_rates"))  # fmt: skip


def save_powerinfer(preds: PredictorSet, out_dir: str | Path) -> Path:
    """PowerInfer's predictor folder: model_{i}.pt (state dict fc1.weight / fc2.weight) per layer and a
    config.json with sparse_threshold (and our predictor_input, which PowerInfer's own tools ignore)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(preds.predictors):
        state = {"fc1.weight": p.fc1.weight.detach().clone(), "fc2.weight": p.fc2.weight.detach().clone()}
        torch.save(state, out_dir / f"model_{i}.pt")
    config = {"sparse_threshold": preds.threshold, "predictor_input": preds.input_kind,
              "ranks": [int(p.fc1.weight.shape[0]) for p in preds.predictors]}  # fmt: skip
    if preds.activation_rates is not None:
        config["activation_rates"] = [float(r) for r in preds.activation_rates]
    if preds.predicted_rates is not None:
        config["predicted_rates"] = [float(r) for r in preds.predicted_rates]
    (out_dir / POWERINFER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def load_powerinfer(pred_dir: str | Path) -> PredictorSet:
    pred_dir = Path(pred_dir)
    cfg_path = pred_dir / POWERINFER_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a predictor folder (no config.json)")
    config = json.loads(cfg_path.read_text())
    if "sparse_threshold" not in config:
        raise TrainingError(f"{cfg_path}: no sparse_threshold")
    files = sorted(pred_dir.glob("model_*.pt"), key=lambda f: int(f.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"{pred_dir}: no model_{{i}}.pt files")
    preds = []
    for i, f in enumerate(files):
        if f.name != f"model_{i}.pt":
            raise FileNotFoundError(f"{pred_dir}: model_{i}.pt is missing (found {f.name})")
        state = torch.load(f, map_location="cpu", weights_only=True)
        fc1, fc2 = state.get("fc1.weight"), state.get("fc2.weight")
        if fc1 is None or fc2 is None:
            raise TrainingError(f"{f}: needs fc1.weight and fc2.weight, has {sorted(state)}")
        if fc1.ndim != 2 or fc2.ndim != 2 or fc2.shape[1] != fc1.shape[0]:
            raise TrainingError(f"{f}: fc1 {tuple(fc1.shape)} and fc2 {tuple(fc2.shape)} do not chain")
        p = Predictor(fc1.shape[1], fc1.shape[0], fc2.shape[0])
        p.load_state_dict({"fc1.weight": fc1.float(), "fc2.weight": fc2.float()})
        preds.append(p.eval())
    return PredictorSet(preds, float(config["sparse_threshold"]), config.get("predictor_input", "residual"),
                        config.get("activation_rates"), config.get("predicted_rates"))  # fmt: skip

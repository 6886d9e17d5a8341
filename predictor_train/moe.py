"""Predictors for mixture-of-experts checkpoints (TurboSparse-Mixtral): one predictor per expert, trained on the
tokens the router sends to that expert, each with its own rank and threshold.

The checkpoint (Mixtral layout, dReLU experts relu(w1 z) * relu(w3 z), see convert/arch/mixtral.py) runs in
transformers' Mixtral with its experts' activation made dReLU. While it runs over calibration text, hooks record
per layer the residual before the FFN norm (what the predictor reads) and, for every expert a token is routed to,
which of that expert's neurons are non-zero. Examples are kept in memory (small models: a real 47B checkpoint does
not reach this machine).

A layer's experts share one stacked predictor tensor in the GGUF, so an expert whose chosen rank is below the
layer's largest is padded with zero rows of fc1 and zero columns of fc2 (which add nothing to its logits); each
expert's threshold is folded into its fc2 (export.fold_thresholds), leaving one global threshold.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.models.mixtral.modeling_mixtral import MixtralExperts

from turbosparse.errors import TrainingError
from turbosparse.predictor_train.data import read_text, tokenize_text
from turbosparse.predictor_train.export import TOKENIZER_FILES, fold_thresholds
from turbosparse.predictor_train.hf_import import load_tokenizer
from turbosparse.predictor_train.modeling import Predictor, read_config
from turbosparse.predictor_train.pipeline import PredictorTrainConfig, train_layer
from turbosparse.predictor_train.select import GLOBAL_THRESHOLD, Choice, CostModel
from turbosparse.predictor_train.train import LayerData

log = logging.getLogger(__name__)

MIN_TOKENS = 16  # an expert routed fewer calibration tokens than this gets no predictor (an error: more text needed)


class DReluExperts(MixtralExperts):
    """transformers' stacked Mixtral experts computing relu(gate) * relu(up) (TurboSparse-Mixtral's dReLU)."""

    def activation(self, e: int, z: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(z, self.gate_up_proj[e]).chunk(2, dim=-1)
        return torch.relu(gate) * torch.relu(up)

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for e in range(self.num_experts):
            token, slot = torch.where(top_k_index == e)
            if len(token):
                y = F.linear(self.activation(e, hidden[token]), self.down_proj[e])
                out.index_add_(0, token, y * top_k_weights[token, slot, None])
        return out


def _checkpoint_state(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= load_file(str(f))
    return state


def load_drelu_mixtral(model_dir: Path) -> MixtralForCausalLM:
    """The checkpoint as a float32 transformers Mixtral with dReLU experts (its predictors, if any, left out)."""
    config = read_config(model_dir)
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "turbosparse", "hidden_act")}
    model = MixtralForCausalLM(MixtralConfig(**fields)).float().eval()
    n_expert, n_layer = model.config.num_local_experts, model.config.num_hidden_layers
    state = {k: v.float() for k, v in _checkpoint_state(model_dir).items() if ".predictor." not in k}
    ours: dict[str, torch.Tensor] = {}
    for layer in range(n_layer):
        src, dst = f"model.layers.{layer}.block_sparse_moe.", f"model.layers.{layer}.mlp."
        ours[dst + "gate.weight"] = state.pop(src + "gate.weight")
        w = {p: [state.pop(f"{src}experts.{e}.{p}.weight") for e in range(n_expert)] for p in ("w1", "w2", "w3")}
        gate_up = [torch.cat([g, u]) for g, u in zip(w["w1"], w["w3"], strict=True)]
        ours[dst + "experts.gate_up_proj"] = torch.stack(gate_up)
        ours[dst + "experts.down_proj"] = torch.stack(w["w2"])
    model.load_state_dict(state | ours, strict=not model.config.tie_word_embeddings)
    for layer in model.model.layers:
        layer.mlp.experts.__class__ = DReluExperts
    return model


@dataclass
class ExpertExamples:
    """Per layer and expert: the residuals of the tokens routed to it and its active masks."""

    residual: list[list[list[torch.Tensor]]]
    mask: list[list[list[torch.Tensor]]]

    def data(self, layer: int, expert: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.residual[layer][expert], self.mask[layer][expert]
        if not x:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), bool)
        return torch.cat(x).numpy(), torch.cat(y).numpy()


@torch.no_grad()
def collect_experts(model: MixtralForCausalLM, seqs: np.ndarray) -> ExpertExamples:
    n_layer, n_expert = model.config.num_hidden_layers, model.config.num_local_experts
    ex = ExpertExamples([[[] for _ in range(n_expert)] for _ in range(n_layer)],
                        [[[] for _ in range(n_expert)] for _ in range(n_layer)])  # fmt: skip
    residual: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):

        def keep_residual(module, args, i=i):
            residual[i] = args[0].reshape(-1, args[0].shape[-1])

        def record(module, args, i=i):
            z = args[0].reshape(-1, args[0].shape[-1])
            _, _, chosen = module.gate(z)
            for e in range(n_expert):
                token = torch.where((chosen == e).any(-1))[0]
                if len(token):
                    ex.residual[i][e].append(residual[i][token].half())
                    ex.mask[i][e].append(module.experts.activation(e, z[token]) != 0)

        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(keep_residual))
        hooks.append(layer.mlp.register_forward_pre_hook(record))
    try:
        for row in tqdm(seqs, desc="collect", unit="seq"):
            model(torch.as_tensor(row)[None])
    finally:
        for h in hooks:
            h.remove()
    return ex


def pad_rank(pred: Predictor, rank: int) -> Predictor:
    """pred with zero rows of fc1 / zero columns of fc2 up to rank (the same logits)."""
    r, hidden, n_ff = pred.fc1.weight.shape[0], pred.fc1.weight.shape[1], pred.fc2.weight.shape[0]
    out = Predictor(hidden, rank, n_ff)
    with torch.no_grad():
        out.fc1.weight.zero_()
        out.fc2.weight.zero_()
        out.fc1.weight[:r] = pred.fc1.weight
        out.fc2.weight[:, :r] = pred.fc2.weight
    return out.eval()


@dataclass(frozen=True)
class MoeTrainOptions:
    out: Path
    tokens: int = 32768
    seq_len: int = 256
    predictors: PredictorTrainConfig = field(default_factory=PredictorTrainConfig)


def train_moe_predictors(model_dir: Path, data: Path, opts: MoeTrainOptions) -> dict:
    """Collect, train one predictor per expert (rank and threshold chosen per expert), export the checkpoint with
    its predictors embedded and a report; returns the report."""
    model_dir = Path(model_dir)
    t0 = time.perf_counter()
    model = load_drelu_mixtral(model_dir)
    seqs = tokenize_text(load_tokenizer(model_dir), read_text(data), opts.seq_len, opts.tokens)
    ex = collect_experts(model, seqs)
    t1 = time.perf_counter()
    c = model.config
    cfg = opts.predictors
    cost = CostModel(c.hidden_size, c.intermediate_size, cfg.quant)
    layers: list[list[tuple[Predictor, Choice, int]]] = []
    for i in range(c.num_hidden_layers):
        experts = []
        for e in range(c.num_local_experts):
            x, y = ex.data(i, e)
            if len(x) < MIN_TOKENS:
                raise TrainingError(f"layer {i} expert {e}: {len(x)} calibration tokens routed (at least {MIN_TOKENS} "
                                 f"needed): give more text (--tokens)")  # fmt: skip
            n = len(x) if cfg.max_tokens is None else min(cfg.max_tokens, len(x))
            split = LayerData.split(x[:n], y[:n], cfg.val_fraction, cfg.train.input_kind, seed=cfg.train.seed + i)
            pred, choice, _ = train_layer(split.to(cfg.train.device), cfg, cost)
            log.info("layer %d expert %d: %d tokens, rank %d threshold %.3f recall %.3f predicted %.3f true %.3f", i,
                     e, len(x), choice.rank, choice.threshold, choice.recall, choice.predicted_rate,
                     choice.true_rate)  # fmt: skip
            experts.append((fold_thresholds([pred.cpu()], [choice.threshold], GLOBAL_THRESHOLD)[0], choice, len(x)))
        layers.append(experts)
    t2 = time.perf_counter()
    report = _report(layers, cfg.recall_target, {"collect": t1 - t0, "train": t2 - t1})
    _export(model_dir, layers, cfg.train.input_kind, opts.out, report)
    return report


def _report(layers: list[list[tuple[Predictor, Choice, int]]], recall_target: float, seconds: dict) -> dict:
    rows = [
        {"layer": i, "expert": e, "tokens": n, **{k: v for k, v in asdict(ch).items() if k != "cost_bytes"}}
        for i, experts in enumerate(layers)
        for e, (_, ch, n) in enumerate(experts)
    ]
    routed = sum(r["tokens"] for r in rows)
    totals = {
        "recall_target": recall_target,
        "experts_meeting_target": sum(r["met_target"] for r in rows),
        "experts": len(rows),
        # token-weighted: what a routed token sees
        "true_active": sum(r["true_rate"] * r["tokens"] for r in rows) / routed,
        "predicted_active": sum(r["predicted_rate"] * r["tokens"] for r in rows) / routed,
        "recall": sum(r["recall"] * r["true_rate"] * r["tokens"] for r in rows)
        / max(sum(r["true_rate"] * r["tokens"] for r in rows), 1e-12),
    }
    return {"experts": rows, "totals": totals, "seconds": seconds}


def _export(
    model_dir: Path, layers: list[list[tuple[Predictor, Choice, int]]], input_kind: str, out: Path, report: dict
) -> None:
    """The checkpoint again, its experts' predictors embedded (padded to each layer's largest rank), config.json's
    "turbosparse" block filled (token-weighted rates per layer), tokenizer files and report.json beside."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in _checkpoint_state(model_dir).items() if ".predictor." not in k}
    true_rates, predicted_rates = [], []
    for i, experts in enumerate(layers):
        rank = max(p.fc1.weight.shape[0] for p, _, _ in experts)
        for e, (pred, _, _) in enumerate(experts):
            padded = pad_rank(pred, rank)
            prefix = f"model.layers.{i}.block_sparse_moe.experts.{e}.predictor."
            state[prefix + "fc1.weight"] = padded.fc1.weight.detach().contiguous().clone()
            state[prefix + "fc2.weight"] = padded.fc2.weight.detach().contiguous().clone()
        n = sum(t for _, _, t in experts)
        true_rates.append(sum(ch.true_rate * t for _, ch, t in experts) / n)
        predicted_rates.append(sum(ch.predicted_rate * t for _, ch, t in experts) / n)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = read_config(model_dir)
    config["turbosparse"] = {"predictor_threshold": GLOBAL_THRESHOLD, "predictor_input": input_kind,
                             "activation_rates": true_rates, "predicted_rates": predicted_rates}  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

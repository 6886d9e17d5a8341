"""An importance matrix for a Llama-family or bamboo checkpoint, measured in torch: for every weight matrix, the sum
of its input columns' squared activations over calibration sequences, written in llama.cpp's GGUF imatrix format
(convert/imatrix.py) under the GGUF tensor names `turbosparse convert` writes. `convert --imatrix` (and llama.cpp's
`llama-quantize --imatrix`, for the standard tensors) then quantizes with it.

A bamboo checkpoint's embedded predictors are measured too, on the input the engine gives them (the
`turbosparse.predictor_input` of its config, else the residual as the converter assumes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from turbosparse.constants import TENSOR_PRED_FC1, TENSOR_PRED_FC2
from turbosparse.convert.hparams import read_config
from turbosparse.convert.imatrix import write_imatrix
from turbosparse.convert.neuron_order import layer_of
from turbosparse.predictor_train.evaluate import predictor_input
from turbosparse.predictor_train.modeling import DReluMLP, load_causal_lm


@dataclass
class ImatrixSums:
    """Per GGUF matrix name: squared input activations summed over `counts` tokens (float64)."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        squares = (rows * rows).sum(0).numpy()
        if name in self.sums:
            self.sums[name] += squares
        else:
            self.sums[name] = squares
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]


@contextmanager
def _hooks(model: nn.Module, acc: ImatrixSums, predictor_kind: str | None) -> Iterator[None]:
    """Hooks on every decoder-layer matrix, named as the converter names it (gguf-py's Llama map), and, where
    predictor_kind is given, on each FFN norm's input for the layer's embedded predictor."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    handles = []

    def on_input(name: str):
        return lambda module, args: acc.add(name, args[0])

    def on_residual(layer: int, predictor: nn.Module, kind: str):
        def hook(module, args):
            x = predictor_input(args[0], kind)
            acc.add(TENSOR_PRED_FC1.format(layer), x)
            acc.add(TENSOR_PRED_FC2.format(layer), torch.relu(predictor.fc1(x)))

        return hook

    try:
        for path, module in model.named_modules():
            name = name_map.get_name(path)
            if name is None or not name.startswith("blk."):
                continue
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_pre_hook(on_input(name + ".weight")))
            elif name.endswith(".ffn_norm") and predictor_kind is not None:
                layer = layer_of(name)
                mlp = model.get_submodule(f"model.layers.{layer}.mlp")
                if isinstance(mlp, DReluMLP) and mlp.predictor is not None:
                    handles.append(module.register_forward_pre_hook(on_residual(layer, mlp.predictor, predictor_kind)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_imatrix(model: nn.Module, sequences: np.ndarray, *, predictor_kind: str | None = None,
                    batch: int = 8) -> ImatrixSums:  # fmt: skip
    """Runs model over sequences [n, seq_len] of token ids and sums every matrix's squared inputs."""
    acc = ImatrixSums()
    model.eval()
    with _hooks(model, acc, predictor_kind):
        for i in range(0, len(sequences), batch):
            model(torch.as_tensor(sequences[i : i + batch], dtype=torch.long))
    return acc


def write_checkpoint_imatrix(
    model_dir: str | Path, sequences: np.ndarray, out: str | Path, *, dataset: str, batch: int = 8
) -> Path:
    """The importance matrix of checkpoint model_dir over sequences, written to out (llama.cpp's GGUF format)."""
    model = load_causal_lm(model_dir)
    # the converter's default where the config names no predictor input (convert/arch/sparse.py)
    predictor_kind = (read_config(Path(model_dir)).get("turbosparse") or {}).get("predictor_input") or "residual"
    acc = collect_imatrix(model, sequences, predictor_kind=predictor_kind, batch=batch)
    return write_imatrix(
        out,
        {name: s[None, :] for name, s in acc.sums.items()},
        {name: np.array([c]) for name, c in acc.counts.items()},
        datasets=[dataset],
        chunk_count=len(sequences),
        chunk_size=int(sequences.shape[1]),
    )

"""Collecting predictor training data: per layer, the residual before the FFN norm and the FFN's active mask.

An HF causal LM runs over calibration sequences; forward hooks record, per layer and token,
- `residual`: h, the input of post_attention_layernorm (llama.cpp's `ffn_inp`), float16 [n_tokens, hidden];
- `mask`: which FFN neurons have a non-zero activation (down_proj's input != 0; for dReLU that is
  relu(gate)*relu(up) != 0), bit-packed along the neuron axis (numpy packbits, little bit order)
  [n_tokens, ceil(n_ff / 8)];
- optionally `ffn_in` (the normed FFN input) and `ffn_out` (the FFN output), float16 [n_tokens, hidden].
Everything streams into np.memmap files under a work dir, batch by batch; manifest.json is written last and
marks the collection complete, so an interrupted run is recollected and a complete one is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from turbosparse.errors import TrainingError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CollectConfig:
    batch_size: int = 8  # sequences per forward pass
    device: str = "cpu"
    ffn_io: bool = False  # also record FFN inputs and outputs


@dataclass(frozen=True)
class Manifest:
    n_tokens: int
    n_layer: int
    hidden: int
    n_ff: int
    seq_len: int
    ffn_io: bool
    version: int = FORMAT_VERSION
    source: str = ""  # _source_fingerprint: which model and tokens (collections written before it: "", never reused)


def _file(work_dir: Path, layer: int, kind: str) -> Path:
    return work_dir / f"layer{layer:03d}.{kind}.bin"


def _shape(m: Manifest, kind: str) -> tuple[int, int]:
    return (m.n_tokens, (m.n_ff + 7) // 8) if kind == "mask" else (m.n_tokens, m.hidden)


def _dtype(kind: str) -> np.dtype:
    return np.dtype(np.uint8) if kind == "mask" else np.dtype(np.float16)


def _kinds(m: Manifest) -> tuple[str, ...]:
    return ("residual", "mask", "ffn_in", "ffn_out") if m.ffn_io else ("residual", "mask")


def pack_mask(active: torch.Tensor) -> np.ndarray:
    """bool [..., n_ff] -> uint8 [..., ceil(n_ff / 8)]."""
    return np.packbits(active.cpu().numpy(), axis=-1, bitorder="little")


def unpack_mask(packed: np.ndarray, n_ff: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=n_ff, bitorder="little").astype(bool)


class Collection:
    """A complete collection on disk, validated on open (files present, sizes as the manifest says)."""

    def __init__(self, work_dir: str | Path) -> None:
        self.dir = Path(work_dir)
        path = self.dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no collection here (missing or interrupted; run collect first)")
        fields = json.loads(path.read_text())
        if fields.get("version") != FORMAT_VERSION:
            raise TrainingError(f"{path}: collection format {fields.get('version')}, expected {FORMAT_VERSION}")
        self.manifest = Manifest(**fields)
        for i in range(self.manifest.n_layer):
            for kind in _kinds(self.manifest):
                f = _file(self.dir, i, kind)
                rows, cols = _shape(self.manifest, kind)
                want = rows * cols * _dtype(kind).itemsize
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: missing from the collection")
                if f.stat().st_size != want:
                    raise TrainingError(f"{f}: {f.stat().st_size} bytes, the manifest implies {want}")

    def array(self, layer: int, kind: str) -> np.memmap:
        if not 0 <= layer < self.manifest.n_layer:
            raise IndexError(f"layer {layer} out of range (0..{self.manifest.n_layer - 1})")
        if kind not in _kinds(self.manifest):
            raise KeyError(f"{kind!r} was not collected (have {_kinds(self.manifest)})")
        return np.memmap(_file(self.dir, layer, kind), dtype=_dtype(kind), mode="r", shape=_shape(self.manifest, kind))

    def residual(self, layer: int) -> np.memmap:
        return self.array(layer, "residual")

    def mask(self, layer: int, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        return unpack_mask(np.asarray(self.array(layer, "mask")[rows]), self.manifest.n_ff)


def _source_fingerprint(model: LlamaForCausalLM, seqs: np.ndarray) -> str:
    """The token ids and the model's weights (a float64 sum per parameter), hashed: another model or text collected
    into the same folder (a relufy run again, new data) is not taken for this one."""
    digest = hashlib.sha256(np.ascontiguousarray(seqs).tobytes())
    with torch.no_grad():
        for name, p in model.named_parameters():
            digest.update(name.encode())
            chunks = p.detach().flatten().split(1 << 22)  # a float64 copy of a chunk at a time, not of the matrix
            digest.update(np.float64(sum(c.sum(dtype=torch.float64).item() for c in chunks)).tobytes())
    return digest.hexdigest()


def collect(
    model: LlamaForCausalLM, seqs: np.ndarray, work_dir: str | Path, cfg: CollectConfig = CollectConfig()
) -> Collection:
    """Runs model over token sequences seqs [n_seq, seq_len] and writes the collection to work_dir (reused
    when a complete collection of the same model and tokens is there)."""
    seqs = np.asarray(seqs)
    if seqs.ndim != 2 or seqs.shape[1] < 1:
        raise ValueError(f"seqs must be [n_seq, seq_len], got shape {seqs.shape}")
    work_dir = Path(work_dir)
    c = model.config
    manifest = Manifest(int(seqs.size), c.num_hidden_layers, c.hidden_size, c.intermediate_size, seqs.shape[1],
                        cfg.ffn_io, source=_source_fingerprint(model, seqs))  # fmt: skip
    try:
        existing = Collection(work_dir)
        if existing.manifest == manifest:
            return existing
    except (FileNotFoundError, ValueError):
        pass
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / MANIFEST).unlink(missing_ok=True)
    arrays = {
        (i, kind): np.memmap(_file(work_dir, i, kind), dtype=_dtype(kind), mode="w+", shape=_shape(manifest, kind))
        for i in range(manifest.n_layer)
        for kind in _kinds(manifest)
    }
    offset = [0]

    def put(i: int, kind: str, t: torch.Tensor) -> None:
        t = t.detach().flatten(0, -2)
        data = pack_mask(t != 0) if kind == "mask" else t.to(torch.float16).cpu().numpy()
        arrays[(i, kind)][offset[0] : offset[0] + len(data)] = data

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda _m, args, i=i: put(i, "residual", args[0])))  # fmt: skip
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, args, i=i: put(i, "mask", args[0])))
        if cfg.ffn_io:
            handles.append(layer.mlp.register_forward_pre_hook(lambda _m, args, i=i: put(i, "ffn_in", args[0])))
            handles.append(layer.mlp.register_forward_hook(lambda _m, _a, out, i=i: put(i, "ffn_out", out)))
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(seqs), cfg.batch_size), desc="collect", unit="batch"):
                batch = torch.as_tensor(seqs[start : start + cfg.batch_size], device=cfg.device)
                model.model(batch, use_cache=False)  # hidden states only: the lm_head is not needed
                offset[0] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    for arr in arrays.values():
        arr.flush()
    (work_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    return Collection(work_dir)

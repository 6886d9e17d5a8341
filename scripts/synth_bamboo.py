"""Writes a synthetic bamboo (TurboSparse-Mistral layout) checkpoint of any shape: BF16 safetensors in ~2 GB shards
with model.safetensors.index.json, random weights, embedded predictors; the tokenizer files are copied from
--tokenizer-from (any HF tokenizer directory; config vocab_size pads it).

For measuring the converter's peak memory and time on a Mistral-7B-shaped model without downloading one:
    python scripts/synth_bamboo.py /tmp/bamboo7b --tokenizer-from TOKDIR
    /usr/bin/time -v turbosparse convert /tmp/bamboo7b -o 7b.gguf --outtype q4_0
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Shape:
    n_layer: int = 32
    hidden: int = 4096
    n_ff: int = 14336
    n_head: int = 32
    n_head_kv: int = 8
    vocab: int = 32000
    rank: int = 1024
    shard_bytes: int = 2 << 30


def tensor_shapes(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    hd = s.hidden // s.n_head
    out = [("model.embed_tokens.weight", (s.vocab, s.hidden))]
    for i in range(s.n_layer):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (s.hidden,)),
            (p + "self_attn.q_proj.weight", (s.n_head * hd, s.hidden)),
            (p + "self_attn.k_proj.weight", (s.n_head_kv * hd, s.hidden)),
            (p + "self_attn.v_proj.weight", (s.n_head_kv * hd, s.hidden)),
            (p + "self_attn.o_proj.weight", (s.hidden, s.n_head * hd)),
            (p + "post_attention_layernorm.weight", (s.hidden,)),
            (p + "mlp.gate_proj.weight", (s.n_ff, s.hidden)),
            (p + "mlp.up_proj.weight", (s.n_ff, s.hidden)),
            (p + "mlp.down_proj.weight", (s.hidden, s.n_ff)),
            (p + "mlp.predictor.fc1.weight", (s.rank, s.hidden)),
            (p + "mlp.predictor.fc2.weight", (s.n_ff, s.rank)),
        ]
    return [*out, ("model.norm.weight", (s.hidden,)), ("lm_head.weight", (s.vocab, s.hidden))]


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], pool: np.ndarray, rng) -> None:
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, shape in tensors:
            count = int(np.prod(shape))
            start = int(rng.integers(0, pool.size - count)) if count < pool.size else 0
            reps = -(-count // pool.size)
            data = np.tile(pool, reps)[:count] if reps > 1 else pool[start : start + count]
            data.tofile(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokenizer-from", type=Path, required=True, help="directory with tokenizer.model / .json")
    args = ap.parse_args()
    s = Shape(n_layer=args.layers)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # a pool of BF16 bit patterns (N(0, 0.02) rounded), sliced at random offsets: fast, finite, not constant
    pool = (rng.standard_normal(64 << 20, dtype=np.float32) * 0.02).view(np.uint32)
    pool = ((pool + 0x8000) >> 16).astype(np.uint16)
    shards, current, size = [], [], 0
    for name, shape in tensor_shapes(s):
        n = int(np.prod(shape)) * 2
        if current and size + n > s.shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    weight_map = {}
    for k, tensors in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_shard(args.out / file, tensors, pool, rng)
        weight_map |= {name: file for name, _ in tensors}
    index = {"metadata": {}, "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "model_type": "bamboo",
        "architectures": ["BambooForCausalLM"],
        "hidden_size": s.hidden,
        "intermediate_size": s.n_ff,
        "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head,
        "num_key_value_heads": s.n_head_kv,
        "vocab_size": s.vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "relu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (args.tokenizer_from / name).is_file():
            shutil.copy(args.tokenizer_from / name, args.out / name)


if __name__ == "__main__":
    main()

"""A GPU device against float64 and the CPU, on a real model: what `tests/test_devices.py` cannot show where the suite
cannot be installed (a lent GPU machine without a package registry; README, "On an NVIDIA GPU").

    python scripts/gpu_check.py MODEL.gguf [--tokens DIR]

MODEL is a turbosparse file with neuron groups, e.g. the default model's checkpoint converted with `--groups 32`
(README, "Neuron groups"); DIR holds the default model build's held-out token files eval-{macbeth,news,encyclopedia}.npy
(default: the build's directory). Prints, on the first GPU ggml has (the CPU where it has none): teacher-forced logits
of the dense and grouped routes against a float64 forward pass over the stored weights and against the CPU, one
layer's grouped FFN against float64, decoding token by token, perplexity, decode speed and a greedy generation.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from turbosparse import Model, devices
from turbosparse.assets import default_model_dir
from turbosparse.bench.engines import TurbosparseEngine, bench_model
from turbosparse.binding import NativeContext, NativeModel, SparseMode
from turbosparse.perplexity import perplexity

from tinymodel import chosen_groups, ffn_activation, ffn_down, ffn_gate_up, read_gguf, reference_logits, rms_norm

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", type=Path)
parser.add_argument("--tokens", type=Path, default=default_model_dir())
args = parser.parse_args()
path = args.model
T = 128  # teacher-forced positions per genre
texts = {n: [int(t) for t in np.load(args.tokens / f"eval-{n}.npy")] for n in ("macbeth", "news", "encyclopedia")}
print("devices:", [(d.name, d.description, d.memory_total) for d in devices()], flush=True)
gpu = next((d for d in devices() if not d.is_cpu), devices()[0])
cfg, weights, keys = read_gguf(path)


def compare(a: np.ndarray, b: np.ndarray) -> str:
    """Argmax agreement and max |difference| over max |logit| of b against a ([T, n_vocab] each)."""
    agreement, rel_diff = np.mean(a.argmax(1) == b.argmax(1)), np.abs(a - b).max() / np.abs(a).max()
    return f"agree {agreement:.3f} maxrel {rel_diff:.4f}"


def model(sparse: str, device: str, every_group: bool, n_ctx: int = 1100) -> Model:
    m = Model(path, n_threads=2, n_ctx=n_ctx, sparse=sparse, device=gpu.name if device == "gpu" else device)
    if every_group:
        m.group_top_k = [m.info.n_ff // m.info.group_size] * m.info.n_layer
    return m


# 1. teacher-forced logits, 128 tokens of each genre: GPU and CPU against float64 over the stored weights
for name, toks in texts.items():
    toks = toks[:T]
    t0 = time.time()
    ref = reference_logits(cfg, weights, toks)
    print(f"[{name}] float64 reference {time.time() - t0:.1f} s", flush=True)
    for route, every in (("off", False), ("groups", True)):
        g = model(route, "gpu", every).eval_logits(toks)
        c = model(route, "cpu", every).eval_logits(toks)
        label = f"{route}{' (every group)' if every else ''}"
        print(f"[{name}] {label}: {gpu.name} vs float64 {compare(ref, g)} | CPU vs float64 {compare(ref, c)} | "
              f"GPU vs CPU {compare(c, g)}", flush=True)  # fmt: skip
    g = model("groups", "gpu", False).eval_logits(toks)
    c = model("groups", "cpu", False).eval_logits(toks)
    print(f"[{name}] groups at the file's k: GPU vs CPU {compare(c, g)}", flush=True)

# 2. one layer's grouped FFN at the file's k on the GPU against float64 on the same inputs
native = NativeModel(str(path), device=gpu.name)
ctx = NativeContext(native, n_ctx=64, n_threads=2, n_batch=64, sparse_mode=SparseMode.GROUPS, threshold=None)
w = {k: v.astype(np.float64) for k, v in weights.items()}
h = np.random.default_rng(0).standard_normal((64, cfg.n_embd)).astype(np.float32)
x = h.astype(np.float64)
for layer in range(0, cfg.n_layer, 5):
    gate, up = ffn_gate_up(w, layer, rms_norm(x, w[f"blk.{layer}.ffn_norm.weight"], cfg.rms_eps))
    kept = chosen_groups(w, layer, x, keys["turbosparse.predictor_input"], cfg.rms_eps, ctx.group_top_k[layer])
    ref = ffn_down(w, layer, ffn_activation(cfg.act, gate, up) * kept)
    out = ctx.eval_ffn(layer, h, dense_ffn=False)
    rel = np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print(
        f"layer {layer} k={ctx.group_top_k[layer]}: grouped FFN on {gpu.name} vs float64 max rel {rel.max():.2e}",
        flush=True,
    )
del ctx, native

# 3. token by token on the GPU (the scheduler reusing its graph), every group: against float64
toks = texts["news"][:48]
ref = reference_logits(cfg, weights, toks)
m = model("groups", "gpu", True, n_ctx=64)


class User:  # a sequence's owner (Model.evaluate tracks them by weak reference)
    pass


u = User()
m.evaluate(u, toks[:1])
steps = np.stack([m.evaluate(u, toks[: i + 1]) for i in range(1, len(toks))])
print(f"token by token on {gpu.name}, every group: vs float64 {compare(ref[1:], steps)}", flush=True)
del m

# 4. perplexity (the library's windows of 512 with the BOS prefix, 4 per genre): dense and grouped at the file's k
for device in ("gpu", "cpu"):
    for route in ("off", "groups"):
        m = model(route, device, False, n_ctx=600)
        line = [
            f"{name} {perplexity(m, m.detokenize(toks), 512, max_windows=4).perplexity:.2f}"
            for name, toks in texts.items()
        ]
        print(f"perplexity {device} {route}: " + ", ".join(line), flush=True)
        del m

# 5. decode speed of this small model: 64 greedy tokens after a 64-token prompt, median of 5
for device, mode in (("gpu", "dense"), ("gpu", "groups"), ("cpu", "dense"), ("cpu", "groups"), ("cpu", "predictor")):
    dev = gpu.name if device == "gpu" else "CPU"
    e = TurbosparseEngine(bench_model(path, mode, dev), mode, 2, 256)
    logits = e.decode(e.prefill(texts["macbeth"][:64]), 4)
    runs = []
    for _ in range(5):
        logits = e.prefill(texts["macbeth"][:64])
        t0 = time.perf_counter()
        e.decode(logits, 64)
        runs.append(64 / (time.perf_counter() - t0))
    print(f"decode {dev} {mode}: {np.median(runs):.1f} tok/s (runs {', '.join(f'{r:.0f}' for r in runs)})", flush=True)
    del e

# 6. a greedy generation on the GPU, grouped route
print(repr(model("groups", "gpu", False, 256).generate("Once upon a time", max_tokens=40, temperature=0)), flush=True)

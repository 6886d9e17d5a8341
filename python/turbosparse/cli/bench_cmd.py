"""`turbosparse bench`: decode and prefill speed beside llama.cpp, same file shapes, quant and threads.

Dense engines (llama.cpp, turbosparse dense) run the dense-equivalent GGUF; the sparse modes run the
turbosparse file. Rounds alternate between engines; medians and ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import gguf

from turbosparse._library import set_llama_log_verbosity
from turbosparse.assets import smollm2_gguf
from turbosparse.bench.batch import bench_batch
from turbosparse.bench.engines import (
    Attention,
    Engine,
    LlamaCppEngine,
    TurbosparseEngine,
    bench_mode,
    bench_model,
)
from turbosparse.bench.ffn_layer import bench_ffn_layer, copy_bandwidth_gb_s, format_table
from turbosparse.bench.generate import bench_generate
from turbosparse.bench.runner import (
    BenchConfig,
    Measurement,
    TensorBytes,
    calibrated_sparsity,
    check_agreement,
    kv_bytes_per_token,
    machine_stamp,
    measured_sparse_bytes,
    run,
    tensor_bytes,
)
from turbosparse.bench.synthetic import (
    SHAPES,
    SyntheticSpec,
    calibrated_twin,
    moe_arithmetic,
    synthetic_pair,
    with_layers,
)
from turbosparse.binding import (
    SPARSE_MODES,
    DeviceInfo,
    NativeModel,
    SparseMode,
    devices,
    find_device,
    memory_available,
)
from turbosparse.calibrate.thresholds import MAX_SPARSITY
from turbosparse.cli.checks import at_least
from turbosparse.cli.run_cmd import add_attention_args, attention_kwargs
from turbosparse.default import default_model
from turbosparse.errors import EvalError, InvalidArgumentError

QUANTS = {q.name.lower(): q for q in gguf.GGMLQuantizationType}
AGREEMENT_TOKENS = 16  # the prompt llama.cpp and turbosparse dense must agree on before any timing
AGREEMENT_TOLERANCE = 1e-3  # max |logit| difference between llama.cpp and turbosparse dense on the same file
# On a GPU the two graphs reach ggml's kernels through each one's own fusions and kernel choices, so the sums round
# differently: there the bound is relative to the largest logit.
GPU_AGREEMENT_TOLERANCE = 1e-2


def _quant_list(text: str) -> list[gguf.GGMLQuantizationType]:
    """--ffn-layer's comma-separated ggml types."""
    names = [q.strip().lower() for q in text.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUANTS]
    if unknown or not names:
        what = f"unknown type {unknown[0]!r}" if unknown else f"expected types such as q4_0,q8_0, got {text!r}"
        raise argparse.ArgumentTypeError(f"{what}; ggml's: {', '.join(QUANTS)}")
    return [QUANTS[q] for q in names]


def _count_list(text: str) -> list[int]:
    """--batch's comma-separated numbers of sequences."""
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of sequences >= 1 such as 1,2,4, got {text!r}")
    return sizes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed beside llama.cpp (decode and prefill tokens/s)", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-m", "--model", help="turbosparse GGUF ('default' = the README's default model)")
    src.add_argument("--synthetic", choices=sorted(SHAPES), help="generate (and cache) a model of this shape")
    src.add_argument(
        "--ffn-layer",
        metavar="QUANTS",
        type=_quant_list,
        help="kernel benchmark: one Mistral-7B FFN layer per listed type (e.g. q4_0,q8_0,q4_k,f16), predictor + "
        "sparse FFN vs ggml's dense FFN, with effective bandwidths",
    )
    p.add_argument(
        "--generate", action="store_true",
        help="whole greedy generations of -n tokens: Model.generate beside llama-cpp-python's create_completion on "
        "the dense file (per-token overhead included)",
    )  # fmt: skip
    p.add_argument(
        "--batch", metavar="SIZES", type=_count_list,
        help="batched decoding: tokens/s and FFN rows read with these numbers of sequences decoded together in one "
        "forward pass (e.g. 1,2,4), per mode in --modes",
    )  # fmt: skip
    p.add_argument("--dense", help="dense-equivalent GGUF for the dense engines (default: -m itself, or for "
                   "'default' the original SmolLM2)")  # fmt: skip
    p.add_argument("--quant", default=None, choices=sorted(QUANTS), help="synthetic: matrix type (default q4_0)")
    p.add_argument(
        "--active", type=float, default=None,
        help="synthetic: predicted active share of neurons (of each chosen expert's for mixtral; default 0.10, mixtral "
        "0.15, the paper's figure)",
    )  # fmt: skip
    p.add_argument("--layers", type=int, default=None, help="synthetic: layers (default: the shape's; mixtral 8)")
    p.add_argument("--rank", type=int, default=None, help="synthetic: predictor rank (default 1024)")
    p.add_argument(
        "--pred-quant", default=None, choices=sorted(QUANTS), help="synthetic: predictor type (default q4_0)"
    )
    p.add_argument(
        "--groups",
        type=int,
        default=None,
        metavar="G",
        help="synthetic: add the grouped route (neuron groups of G, top-k = the active share) for --modes groups",
    )
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="synthetic: calibrate the dense twin to this share of up/down rows skipped (turbosparse calibrate on "
        "random token ids, cached) and run exact mode on it instead of the dReLU model",
    )
    p.add_argument(
        "--modes", default="dense,predictor,exact", help="turbosparse modes to run (comma-separated; also groups)"
    )
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp")
    p.add_argument(
        "--device", default="cpu",
        help="where the engines run: cpu, gpu (the first GPU ggml has) or a ggml device name; on a GPU llama.cpp "
        "holds every layer on that one device and the sparse mode is groups (the only one a GPU runs)",
    )  # fmt: skip
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("-p", "--prompt-tokens", type=int, default=64)
    p.add_argument("-n", "--decode-tokens", type=int, default=32)
    p.add_argument("-r", "--rounds", type=int, default=5)
    p.add_argument("--context", type=int, default=0, help="tokens in the context before decoding is measured")
    add_attention_args(p, default_flash_attn="off")  # for llama.cpp and turbosparse alike
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run_bench)


# what shapes the model --synthetic makes (flag, Namespace name, default); --ffn-layer reads --active, --rank and
# --pred-quant too
SYNTHETIC_OPTIONS = (("--quant", "quant", "q4_0"), ("--active", "active", None), ("--layers", "layers", None),
                     ("--rank", "rank", 1024), ("--pred-quant", "pred_quant", "q4_0"), ("--groups", "groups", 0),
                     ("--sparsity", "sparsity", None))  # fmt: skip
FFN_LAYER_OPTIONS = ("--active", "--rank", "--pred-quant")


def _synthetic_options(args: argparse.Namespace) -> None:
    """The options that shape a synthetic model, refused where they would change nothing (-m's file is what it
    is), then their defaults filled in."""
    given = [flag for flag, name, _ in SYNTHETIC_OPTIONS if getattr(args, name) is not None]
    dropped = [f for f in given if f not in FFN_LAYER_OPTIONS] if args.ffn_layer else [] if args.synthetic else given
    if dropped:
        where = "--ffn-layer's layers are Mistral-7B's" if args.ffn_layer else f"-m {args.model} is the file it is"
        raise InvalidArgumentError(f"{', '.join(dropped)} shape(s) a --synthetic model: {where}")
    if args.synthetic and args.dense:
        raise InvalidArgumentError("--dense names -m's dense original: --synthetic makes its own dense twin")
    for _, name, default in SYNTHETIC_OPTIONS:
        if getattr(args, name) is None:
            setattr(args, name, default)


def _check_counts(args: argparse.Namespace) -> None:
    """Counts and shares the benchmark divides by or loops over: refused in one line, not a traceback later."""
    at_least((("-t/--threads", args.threads, 1), ("-p/--prompt-tokens", args.prompt_tokens, 1),
              ("-n/--decode-tokens", args.decode_tokens, 1), ("-r/--rounds", args.rounds, 1),
              ("--context", args.context, 0), ("--layers", args.layers, 1), ("--groups", args.groups, 0)))  # fmt: skip
    if args.active is not None and not 0.0 < args.active < 1.0:
        raise InvalidArgumentError(f"--active must be in (0, 1), got {args.active}")
    if args.rank % 2 or args.rank < 2:  # the synthetic predictor's rank splits in two halves
        raise InvalidArgumentError(f"--rank must be even and >= 2, got {args.rank}")


def _files(args: argparse.Namespace) -> tuple[Path, Path, float | None]:
    """(sparse file, dense-equivalent file, configured active share or None)."""
    if args.synthetic:
        shape = SHAPES[args.synthetic]
        if args.layers is not None:
            shape = with_layers(shape, args.layers)
        active = args.active if args.active is not None else (0.15 if shape.n_expert else 0.10)
        block = gguf.GGML_QUANT_SIZES[QUANTS[args.pred_quant]][0]
        if args.rank % block:  # fc2's rows are rank long
            raise InvalidArgumentError(f"--rank {args.rank} is not a multiple of {args.pred_quant}'s block of {block}")
        if args.groups and shape.n_ff % args.groups:
            raise InvalidArgumentError(f"--groups {args.groups} does not divide the FFN's {shape.n_ff} neurons")
        spec = SyntheticSpec(shape, QUANTS[args.quant], active, args.rank, QUANTS[args.pred_quant], groups=args.groups)
        if shape.n_expert:
            print(moe_arithmetic(spec), file=sys.stderr)
        sparse, dense = synthetic_pair(spec)
        if args.sparsity is not None:
            return calibrated_twin(dense, args.sparsity, args.threads), dense, None
        return sparse, dense, active
    model = Path(default_model() if args.model == "default" else args.model)
    if args.dense:
        dense = Path(args.dense)
    elif args.model == "default":
        dense = smollm2_gguf()
    else:
        dense = model
    return model, dense, None


# "dense" is the benchmark's name for off; auto is refused (a row names the mode it ran)
BENCH_MODES = ("dense", *(name for name in SPARSE_MODES if name not in ("off", "auto")))


def mode_names(text: str) -> list[str]:
    """--modes' names, checked (said before a synthetic model is built)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in BENCH_MODES for m in modes):
        raise InvalidArgumentError(f"--modes {text}: modes are {', '.join(BENCH_MODES)}")
    return modes


def _modes(args: argparse.Namespace, sparse: Path, device: DeviceInfo) -> list[str]:
    """The modes in --modes that the sparse file can run on the device (the C library decides, on a metadata-only
    load); on a GPU "predictor" is the grouped route, so only modes that run as asked are kept."""
    modes = mode_names(args.modes)
    if all(m == "dense" for m in modes):
        return modes  # the sparse file is not read
    probe = NativeModel(str(sparse), metadata_only=True)
    kept = [m for m in modes if m == "dense" or _runs_as_asked(probe, bench_mode(m), device.is_cpu)]
    if len(kept) < len(modes):
        hint = "" if device.is_cpu else " (a GPU runs dense and groups: --modes dense,groups)"
        skipped = ", ".join(m for m in modes if m not in kept)
        print(f"bench: skipped {skipped}: {sparse.name} does not run as asked on {device.name}{hint}", file=sys.stderr)
    return kept


def _runs_as_asked(model: NativeModel, mode: SparseMode, on_cpu: bool) -> bool:
    try:
        return model.sparse_mode(mode, on_cpu=on_cpu) == mode
    except InvalidArgumentError:
        return False


def _mem_available() -> int | None:
    """Bytes of memory the OS can hand out now, or None where unknown (the C library's reading, which decides the
    huge-page copies too)."""
    return memory_available()


def _check_memory(modes: list[str], with_llama_cpp: bool, sparse: Path, dense: Path, device: DeviceInfo) -> None:
    """Each engine holds its own copy of its file's weights (llama.cpp's and ours repacked, the sparse rows in huge
    pages; predictor and groups share one): a run whose copies exceed the memory available (the device's, on a GPU)
    is refused before the kernel's OOM killer or a failed device allocation ends it."""
    held = (dense.stat().st_size if with_llama_cpp else 0) + (dense.stat().st_size if "dense" in modes else 0)
    held += sparse.stat().st_size * (bool({"predictor", "groups"} & set(modes)) + ("exact" in modes))
    available = _mem_available() if device.is_cpu else (device.memory_total or None)  # 0: the device did not say
    where = "memory available" if device.is_cpu else f"memory of {device.name}"
    if available is not None and held > available:
        raise InvalidArgumentError(
            f"the engines asked for hold {held / 1e9:.1f} GB of weights, more than the {available / 1e9:.1f} GB of "
            f"{where}: drop modes (--modes), llama.cpp (--no-llama-cpp) or layers (--layers)"
        )


def _engines(
    args: argparse.Namespace, sparse: Path, dense: Path, n_ctx: int, device: DeviceInfo, attention: Attention
) -> list[Engine]:
    modes = _modes(args, sparse, device)
    if not modes and args.no_llama_cpp:
        raise InvalidArgumentError(f"nothing to measure: no mode of --modes {args.modes} runs here, and --no-llama-cpp")
    if dense != sparse and (not args.no_llama_cpp or "dense" in modes):
        _check_same_vocabulary(sparse, dense)
    _check_memory(modes, not args.no_llama_cpp, sparse, dense, device)
    engines: list[Engine] = []
    if not args.no_llama_cpp:
        try:
            engines.append(LlamaCppEngine(dense, args.threads, n_ctx, gpu=_gpu_index(device), attention=attention))
        except ValueError as exc:
            if "Failed to load model" not in str(exc):
                raise
            raise InvalidArgumentError(
                f"llama.cpp cannot load {dense} ({exc}; a turbosparse file with its sparse tensors?): name the dense "
                "original with --dense FILE, or skip llama.cpp with --no-llama-cpp"
            ) from None
    rows_model: NativeModel | None = None  # one model behind the modes that read the same layout (a Mixtral holds GBs)
    for mode in modes:
        if mode in ("predictor", "groups"):
            rows_model = rows_model or bench_model(sparse, mode, device.name)
            model = rows_model
        else:
            model = bench_model(dense if mode == "dense" else sparse, mode, device.name)
        engines.append(TurbosparseEngine(model, mode, args.threads, n_ctx, attention))
    return engines


def _check_same_vocabulary(sparse: Path, dense: Path) -> None:
    """Both engines are fed the same prompt tokens: the dense file is the sparse one's model (said before any load,
    not as a token out of the vocabulary after every engine is up)."""
    sizes = [NativeModel(str(f), metadata_only=True).info.n_vocab for f in (sparse, dense)]
    if sizes[0] != sizes[1]:
        raise InvalidArgumentError(
            f"--dense {dense}: a vocabulary of {sizes[1]} tokens where {sparse} has {sizes[0]}: the dense file must be "
            "the same model (its original, or the file itself)"
        )


def _gpu_index(device: DeviceInfo) -> int | None:
    """The device's index among ggml's GPUs (llama.cpp's main_gpu), None for the CPU."""
    return None if device.is_cpu else [d.name for d in devices() if not d.is_cpu].index(device.name)


def run_ffn_layer(args: argparse.Namespace) -> int:
    set_llama_log_verbosity(args.verbose)  # ggml's line per repacked tensor otherwise
    rounds = max(args.rounds, 10)
    args.active = args.active if args.active is not None else 0.10
    results = [
        bench_ffn_layer(
            q,
            active=args.active,
            rank=args.rank,
            pred_quant=QUANTS[args.pred_quant],
            n_threads=args.threads,
            rounds=rounds,
        )
        for q in args.ffn_layer
    ]
    copy = copy_bandwidth_gb_s()
    machine = machine_stamp()
    if args.json:
        rows = [{**r.__dict__, "dense_gb_s": r.dense_gb_s, "sparse_gb_s": r.sparse_gb_s} for r in results]
        print(json.dumps({"copy_gb_s": copy, "machine": machine, "results": rows}, indent=2))
    else:
        spec = (
            f"# Mistral-7B FFN layers (4096 x 14336), {args.threads} threads, predicted active {args.active}, "
            f"predictor rank {args.rank} {args.pred_quant}, "
            f"medians of {4 * rounds} alternating calls over 4 layers"
        )
        print(format_table(results, copy, spec, machine))
    return 0


def run_generate(args: argparse.Namespace, dense: Path) -> int:
    r = bench_generate(dense, n_threads=args.threads, n_tokens=args.decode_tokens, rounds=args.rounds, sparse="off")
    machine = machine_stamp()
    if args.json:
        ratios = {"ratio": r.ratio, "ratio_new_prompt": r.ratio_new_prompt}
        print(json.dumps({"file": str(dense), "machine": machine, **r.__dict__, **ratios}, indent=2))
        return 0
    print(
        f"# {dense}: {r.tokens} greedy tokens per call, {args.threads} threads, medians of {r.rounds} alternating "
        f"rounds | {machine['cpu']} [{machine['cpu_flags']}] load {machine['load']} | THP {machine['huge_pages']} "
        f"| commit {machine['commit']}"
    )
    rows = (
        ("same prompt: turbosparse Model.generate", r.turbosparse_s),
        ("same prompt: llama-cpp-python create_completion", r.llama_cpp_s),
        ("new prompt: turbosparse Model.generate", r.turbosparse_new_prompt_s),
        ("new prompt: llama-cpp-python create_completion", r.llama_cpp_new_prompt_s),
    )
    for name, seconds in rows:
        print(f"{name:<48} {seconds * 1000:8.1f} ms  {r.tokens / seconds:7.1f} tok/s")
    print(
        f"ratio (turbosparse speed / llama-cpp-python's): same prompt {r.ratio:.3f}x, new prompt "
        f"{r.ratio_new_prompt:.3f}x; same text: {r.same_text}"
    )
    return 0


def run_batch(args: argparse.Namespace, sparse: Path, dense: Path) -> int:
    report = []
    for mode in _modes(args, sparse, find_device("cpu")):
        path = dense if mode == "dense" else sparse
        rows = bench_batch(path, mode=mode, n_threads=args.threads, batches=args.batch, steps=args.decode_tokens,
                           rounds=args.rounds)  # fmt: skip
        report += [{"mode": mode, "file": str(path), **r.__dict__} for r in rows]
    machine = machine_stamp()
    if args.json:
        print(json.dumps({"machine": machine, "results": report}, indent=2))
        return 0
    print(f"# {args.threads} threads, {args.decode_tokens} steps, medians of {args.rounds} alternating rounds | "
          f"{machine['cpu']} [{machine['cpu_flags']}] load {machine['load']} | THP {machine['huge_pages']} "
          f"| commit {machine['commit']}")  # fmt: skip
    first = f"x batch {args.batch[0]}"
    print(f"{'mode':<10} {'batch':>5} {'tok/s':>8} {first:>9} {'step ms':>8} {'rows read':>9} {'rows/token':>10}")
    for r in report:
        base = next(b for b in report if b["mode"] == r["mode"] and b["batch"] == args.batch[0])
        print(f"{r['mode']:<10} {r['batch']:>5} {r['tok_s']:>8.1f} {r['tok_s'] / base['tok_s']:>8.2f}x "
              f"{r['step_ms']:>8.1f} {r['rows_read']:>9.3f} {r['rows_per_token']:>10.3f}")  # fmt: skip
    return 0


def run_bench(args: argparse.Namespace) -> int:
    device = find_device(args.device)
    if not device.is_cpu and (args.ffn_layer or args.generate or args.batch or args.sparsity is not None):
        raise InvalidArgumentError(
            f"--device {args.device} runs the decode and prefill benchmark only: --ffn-layer, --generate, --batch and "
            "--sparsity measure the CPU's sparse kernels"
        )
    attention = Attention(**attention_kwargs(args))
    if (args.ffn_layer or args.generate or args.batch) and attention != Attention():
        raise InvalidArgumentError(
            "-fa / -ctk / -ctv set the decoding benchmark's attention; --ffn-layer, --generate and --batch take none"
        )
    _synthetic_options(args)
    mode_names(args.modes)
    if args.ffn_layer:
        return run_ffn_layer(args)
    _check_counts(args)
    if args.sparsity is not None and not (args.synthetic and 0.0 < args.sparsity <= MAX_SPARSITY):
        raise InvalidArgumentError(
            f"--sparsity needs --synthetic and a value in (0, {MAX_SPARSITY}], got {args.sparsity}"
        )
    sparse, dense, active = _files(args)
    if args.generate:
        return run_generate(args, dense)
    if args.batch:
        return run_batch(args, sparse, dense)
    # the bytes per token are read off each file's tensors, before the rounds: a file gguf-py cannot read fails now
    dense_tb, sparse_tb = tensor_bytes(dense), tensor_bytes(sparse)
    cfg = BenchConfig(
        args.threads, args.prompt_tokens, args.decode_tokens, args.rounds, args.context, attention=attention
    )
    # with a context, decoding continues round after round (see bench.runner.run)
    n_ctx = cfg.context + cfg.prompt_tokens + 2 + cfg.decode_tokens * (cfg.rounds if cfg.context else 1) + 8
    n_ctx = max(n_ctx, AGREEMENT_TOKENS + 8)  # the agreement check's prompt below
    engines = _engines(args, sparse, dense, n_ctx, device, cfg.attention)
    vocab = NativeModel(str(dense), metadata_only=True).info.n_vocab
    # correctness first: turbosparse dense must compute what llama.cpp computes on the same file
    llama = next((e for e in engines if e.name == "llama.cpp"), None)
    ours = next((e for e in engines if e.name == "turbosparse" and e.mode == "dense"), None)
    agreement = None
    if llama is not None and ours is not None:
        prompt = list(range(300, 300 + min(AGREEMENT_TOKENS, vocab - 300)))
        agreement = check_agreement(llama, ours, prompt, relative=not device.is_cpu)
        if agreement > (AGREEMENT_TOLERANCE if device.is_cpu else GPU_AGREEMENT_TOLERANCE):
            raise EvalError(
                f"turbosparse dense and llama.cpp disagree on {dense} on {device.name} (max |logit diff| "
                f"{agreement:.3g}{' of max |logit|' if not device.is_cpu else ''})"
            )
    results = run(engines, cfg, vocab)
    report = _report(engines, results, cfg, sparse, dense, (sparse_tb, dense_tb), active, agreement, device)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return 0


def _report(
    engines: list[Engine],
    results: list[Measurement],
    cfg: BenchConfig,
    sparse: Path,
    dense: Path,
    tensor_bytes_of: tuple[TensorBytes, TensorBytes],  # (sparse, dense), read before the rounds
    active: float | None,
    agreement: float | None,
    device: DeviceInfo,
) -> dict[str, object]:
    sparse_tb, dense_tb = tensor_bytes_of
    decoded = cfg.decode_tokens * (cfg.rounds if cfg.context else 1)
    n_kv = cfg.context + cfg.prompt_tokens + decoded // 2  # mean cells a decoded token attends over
    kv = kv_bytes_per_token(dense, n_kv, cfg.attention.type_k, cfg.attention.type_v)
    rows = []
    for e, m in zip(engines, results, strict=True):
        if isinstance(e, TurbosparseEngine) and e.mode != "dense":
            reads = measured_sparse_bytes(sparse_tb, e)
            weights, m.active_fraction, m.kept_fraction = reads.bytes_per_token, reads.active, reads.kept
        else:
            weights = dense_tb.dense()
        m.bytes_per_token = weights + kv
        decode = m.decode_tok_s(cfg.decode_tokens)
        rows.append(
            {
                "engine": m.engine,
                "mode": m.mode,
                "decode_tok_s": decode,
                "prefill_tok_s": m.prefill_tok_s(cfg.prompt_tokens),
                "bytes_per_token": m.bytes_per_token,
                "gb_s": m.bytes_per_token * decode / 1e9,
                "active_fraction": m.active_fraction,
                "kept_fraction": m.kept_fraction,
            }
        )
    base = next((r for r in rows if r["engine"] == "llama.cpp"), None)
    ratios: dict[str, float] = {}
    if base is not None:
        for r in rows:
            if r is not base:
                ratios[f"{r['engine']}/{r['mode']}"] = r["decode_tok_s"] / base["decode_tok_s"]
                ratios[f"{r['engine']}/{r['mode']}/prefill"] = r["prefill_tok_s"] / base["prefill_tok_s"]
    pred = next((r for r in rows if r["mode"] == "predictor"), None)
    share = active if active is not None else (pred["active_fraction"] if pred else None)
    ceiling = None
    calibrated = calibrated_sparsity(sparse)
    if calibrated is not None:  # exact mode on a calibrated file: the whole gate and down, the computed up rows
        exact = next((r for r in rows if r["mode"] == "exact"), None)
        share = exact["active_fraction"] if exact is not None else 1.0 - calibrated
        ceiling = (dense_tb.dense() + kv) / (sparse_tb.exact_ceiling(share) + kv)
    elif share is not None and sum(sparse_tb.predictor):
        ceiling = (dense_tb.dense() + kv) / (sparse_tb.sparse_ceiling(share) + kv)
    return {
        "config": {**asdict(cfg), "sparse_model": str(sparse), "dense_model": str(dense), "active": share},
        "machine": machine_stamp(device),
        "agreement_max_abs_logit_diff": agreement,
        "agreement_relative": not device.is_cpu,  # on a GPU: over the largest |logit| (GPU_AGREEMENT_TOLERANCE)
        "results": rows,
        "ratios": ratios,
        "bytes_ceiling": ceiling,
    }


def _print_table(report: dict[str, object]) -> None:
    cfg, machine = report["config"], report["machine"]
    attention = cfg["attention"]
    print(f"# sparse: {cfg['sparse_model']}\n# dense:  {cfg['dense_model']}")
    print(
        f"# threads {cfg['n_threads']}, prompt {cfg['prompt_tokens']}, decode {cfg['decode_tokens']}, "
        f"context {cfg['context']}, rounds {cfg['rounds']} (medians), flash attention "
        f"{'on' if attention['flash_attn'] else 'off'}, KV {attention['type_k']}/{attention['type_v']} | "
        f"{machine['cpu']} [{machine['cpu_flags']}] "
        f"kernels {machine['kernel_isas']} device {machine['device']} "
        f"load {machine['load']} | THP {machine['huge_pages']} | commit {machine['commit']}"
    )
    print(
        f"{'engine':<12} {'mode':<10} {'decode tok/s':>12} {'prefill tok/s':>13} "
        f"{'MB/token':>9} {'GB/s':>6} {'active':>7} {'kept':>6}"
    )
    for r in report["results"]:
        active = f"{r['active_fraction']:.3f}" if r["active_fraction"] is not None else "-"
        kept = f"{r['kept_fraction']:.3f}" if r["kept_fraction"] is not None else "-"
        print(
            f"{r['engine']:<12} {r['mode']:<10} {r['decode_tok_s']:>12.2f} {r['prefill_tok_s']:>13.1f} "
            f"{r['bytes_per_token'] / 1e6:>9.1f} {r['gb_s']:>6.1f} {active:>7} {kept:>6}"
        )
    print(
        "(active: share of FFN neurons computed; kept: share of up and down rows kept, read where the file stores its"
        " down by neuron; a file with only the standard down matrix reads that one whole)"
    )
    for name, value in report["ratios"].items():
        print(f"ratio {name} vs llama.cpp: {value:.2f}x")
    if report["bytes_ceiling"] is not None:
        print(
            f"bytes ceiling (dense bytes / sparse bytes per token, predictor or whole gate included): "
            f"{report['bytes_ceiling']:.2f}x"
        )
    sys.stdout.flush()

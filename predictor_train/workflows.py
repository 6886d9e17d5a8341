"""The two end-user workflows behind `turbosparse train-predictors` and `turbosparse relufy`."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from turbosparse.constants import SWIGLU_EXPERTS_DENSE_ONLY
from turbosparse.convert.arch.relu_llama import ReluLlama
from turbosparse.convert.hparams import read_config
from turbosparse.errors import InvalidArgumentError
from turbosparse.predictor_train.collect import CollectConfig, Collection, collect
from turbosparse.predictor_train.data import read_text, tokenize_text
from turbosparse.predictor_train.distributed import SINGLE, Dist
from turbosparse.predictor_train.evaluate import EvalConfig, activation_rates, perplexity, predictor_masks
from turbosparse.predictor_train.export import PredictorSet, save_bamboo, save_powerinfer
from turbosparse.predictor_train.hf_import import gguf_to_hf, load_model, load_tokenizer
from turbosparse.predictor_train.modeling import has_experts, is_bamboo
from turbosparse.predictor_train.pipeline import PredictorTrainConfig, TrainedPredictors, train_all
from turbosparse.predictor_train.relufy import RelufyConfig, Targets, relufy
from turbosparse.predictor_train.report import build_report, write_report
from turbosparse.predictor_train.select import CostModel

log = logging.getLogger(__name__)

FORMATS = ("bamboo", "powerinfer")


@dataclass(frozen=True)
class TrainPredictorsOptions:
    out: Path
    format: str = "bamboo"
    tokens: int = 32768  # calibration tokens collected
    seq_len: int = 256
    work_dir: Path | None = None  # collection folder (default: OUT/collect)
    eval_text: Path | None = None  # if given: dense and predictor-masked perplexity on this text
    collect: CollectConfig = field(default_factory=CollectConfig)
    predictors: PredictorTrainConfig = field(default_factory=PredictorTrainConfig)


def evaluate_predictors(model, preds: PredictorSet, ids: list[int], cfg: EvalConfig) -> dict:
    """Dense and predictor-masked perplexity, and the rates measured while the masks were applied."""
    dense = perplexity(model, ids, cfg)
    with predictor_masks(model, preds.predictors, preds.threshold, preds.input_kind) as stats:
        masked = perplexity(model, ids, cfg)
    rates = stats.rates()
    return {
        "eval": asdict(cfg),
        "ppl_dense": dense,
        "ppl_predictor": masked,
        "ppl_ratio": masked / dense,
        "eval_true_active": float(np.mean(rates["true_active"])),
        "eval_predicted_active": float(np.mean(rates["predicted_active"])),
        "eval_recall": float(stats.hits.sum() / max(stats.true_active.sum(), 1)),
        "eval_per_layer": rates,
    }


def export_predictors(model, trained: TrainedPredictors, fmt: str, out: Path, tokenizer_dir: Path | None) -> Path:
    if fmt == "bamboo":
        return save_bamboo(model, trained.predictors, out, tokenizer_dir)
    if fmt == "powerinfer":
        return save_powerinfer(trained.predictors, out)
    raise InvalidArgumentError(f"unknown format {fmt!r} (one of {FORMATS})")


def check_export_format(model_dir: Path, fmt: str) -> None:
    """The checkpoint's FFN has zeros to predict and the format can carry its predictors (said before the
    collection, the long step): a bamboo (dReLU) checkpoint takes either format (PowerInfer's folder is what
    PowerInfer's own converter reads), a ReLU Llama's predictors go to a PowerInfer folder, which `turbosparse convert
    --predictors` reads (bamboo would need a dReLU FFN)."""
    config = read_config(model_dir)
    if is_bamboo(config):
        return
    if has_experts(config):
        raise InvalidArgumentError(f"{model_dir}: {SWIGLU_EXPERTS_DENSE_ONLY}")
    if not ReluLlama.matches(config):
        raise InvalidArgumentError(
            f"{model_dir}: hidden_act {config.get('hidden_act', 'silu')!r} is not a ReLU-family FFN, so there are no "
            "zeros to predict: run `turbosparse relufy` first (it writes a dReLU bamboo checkpoint)"
        )
    if fmt == "bamboo":
        raise InvalidArgumentError(
            f"{model_dir}: a ReLU Llama (hidden_act {config.get('hidden_act')!r}) takes --format powerinfer: its "
            f"predictors go to a folder that `turbosparse convert {model_dir} --predictors DIR` reads"
        )


def train_predictors(model_dir: Path, data: Path, opts: TrainPredictorsOptions, dist: Dist = SINGLE) -> dict | None:
    """Collect, train, choose, export and report; returns the report (None on ranks other than 0 under torchrun:
    rank 0 collects, the layers' training is shared out, rank 0 exports)."""
    if opts.format not in FORMATS:
        raise InvalidArgumentError(f"unknown format {opts.format!r} (one of {FORMATS})")
    check_export_format(model_dir, opts.format)
    t0 = time.perf_counter()
    model = load_model(model_dir)
    tok = load_tokenizer(model_dir)
    work_dir = opts.work_dir or opts.out / "collect"
    if dist.is_main:
        seqs = tokenize_text(tok, read_text(data), opts.seq_len, opts.tokens)
        collect(model.to(opts.collect.device), seqs, work_dir, opts.collect)
        model.to("cpu")
    dist.barrier()
    coll = Collection(work_dir)
    t1 = time.perf_counter()
    trained = train_all(coll, opts.predictors, dist)
    t2 = time.perf_counter()
    if not dist.is_main:
        return None
    extra: dict = {"seconds": {"collect": t1 - t0, "train": t2 - t1}}
    if opts.eval_text is not None:
        ids = tok(read_text(opts.eval_text), add_special_tokens=False)["input_ids"]
        extra.update(evaluate_predictors(model, trained.predictors, ids, EvalConfig()))
    out = export_predictors(model, trained, opts.format, opts.out, model_dir)
    m = coll.manifest
    cost = CostModel(m.hidden, m.n_ff, opts.predictors.quant)
    report = build_report(trained.choices, cost, opts.predictors.recall_target, extra)
    write_report(report, out, trained.frontiers)
    return report


@dataclass(frozen=True)
class RelufyOptions:
    out: Path
    tokens: int = 65536
    seq_len: int = 256
    eval_text: Path | None = None
    device: str = "cpu"
    relufy: RelufyConfig = field(default_factory=RelufyConfig)


def relufy_to_bamboo(
    teacher: LlamaForCausalLM,
    seqs: np.ndarray,
    cfg: RelufyConfig,
    out: Path,
    *,
    targets: tuple[Targets, int] | None = None,
    dist: Dist = SINGLE,
) -> tuple[LlamaForCausalLM, dict] | None:
    """relufy (see relufy.relufy), then on rank 0 the dReLU model written as a bamboo checkpoint at out (no
    predictors); returns it (on the CPU) and the run's summary: config, seconds, per-layer fits, end-to-end KL.
    None on the other ranks under torchrun."""
    student, result = relufy(teacher, seqs, cfg, targets=targets, dist=dist)
    if not dist.is_main:
        return None
    student = student.to("cpu")
    save_bamboo(student, None, out)
    summary = {"config": asdict(cfg), "seconds": result.seconds, "layers": [asdict(f) for f in result.layers],
               "finetune_kl": result.finetune_losses}  # fmt: skip
    return student, summary


def relufy_checkpoint(source: Path, data: Path, opts: RelufyOptions, dist: Dist = SINGLE) -> dict | None:
    """SwiGLU GGUF or HF folder -> dReLU bamboo checkpoint (no predictors) with tokenizer; returns a summary
    (None on ranks other than 0 under torchrun, where every rank fits its share and rank 0 writes)."""
    source = Path(source)
    if source.is_file():
        hf_dir = opts.out.with_name(opts.out.name + ".hf")
        # an earlier run's folder is reused only for the same GGUF (path, size, modification time)
        stamp = json.dumps({"gguf": str(source.resolve()), "size": source.stat().st_size,
                            "mtime_ns": source.stat().st_mtime_ns})  # fmt: skip
        stamp_file = hf_dir / "turbosparse_source.json"
        if dist.is_main and not (stamp_file.is_file() and stamp_file.read_text() == stamp):
            if hf_dir.exists():
                shutil.rmtree(hf_dir)
            gguf_to_hf(source, hf_dir)
            stamp_file.write_text(stamp)
        dist.barrier()
        source = hf_dir
    teacher = load_model(source).to(opts.device)
    tok = load_tokenizer(source)
    seqs = tokenize_text(tok, read_text(data), opts.seq_len, opts.tokens)
    seqs = seqs[np.random.default_rng(opts.relufy.seed).permutation(len(seqs))]
    done = relufy_to_bamboo(teacher, seqs, opts.relufy, opts.out, dist=dist)
    if done is None:
        return None
    student, summary = done
    teacher = teacher.to("cpu")
    if opts.eval_text is not None:
        ids = tok(read_text(opts.eval_text), add_special_tokens=False)["input_ids"]
        cfg = EvalConfig()
        summary.update(ppl_original=perplexity(teacher, ids, cfg), ppl_drelu=perplexity(student, ids, cfg),
                       active_rates=activation_rates(student, ids, cfg))  # fmt: skip
    tok.save_pretrained(opts.out)
    (opts.out / "relufy.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)

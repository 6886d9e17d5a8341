"""`turbosparse calibrate`: thresholds from samples, the copy with keys, and the real SmolLM2 calibrated on plays."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse.binding import FfnActivation, FfnScales, NativeModel
from turbosparse.calibrate import CalibrateConfig, Calibration, CollectConfig, Planner, calibrate, write_calibrated
from turbosparse.calibrate.collect import LayerSamples, activations
from turbosparse.calibrate.pipeline import spread
from turbosparse.calibrate.thresholds import Option, dense_calibration, layer_options, layer_weights
from turbosparse.convert.copy import copy_with_keys
from turbosparse.errors import CalibrationError, ConvertError

from tinymodel import TinyConfig, random_weights, write_gguf

GATE_KEY, ACT_KEY = "turbosparse.gate_thresholds", "turbosparse.act_thresholds"


def synthetic_samples(n_layer: int = 4, n: int = 20000, seed: int = 0) -> list[LayerSamples]:
    """Gate and up values like an FFN's, layers of different spread (so allocation has something to allocate)."""
    rng = np.random.default_rng(seed)
    out = []
    for layer in range(n_layer):
        gate = rng.standard_normal(n).astype(np.float32) * (1 + layer)
        up = rng.standard_normal(n).astype(np.float32)
        g, a = activations(FfnActivation.SWIGLU, gate, up)
        out.append(LayerSamples(np.abs(g), np.abs(a), a * a, np.arange(n, dtype=np.int32) % 64))
    return out


def kept_on(samples: LayerSamples, gate: float, act: float) -> tuple[float, float]:
    up = samples.gate >= gate
    return float(up.mean()), float((up & (samples.value >= act)).mean())


# ---- thresholds from samples -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gate", "gate+act"])
@pytest.mark.parametrize("allocation", ["uniform", "weighted", "weighted-tiny"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_thresholds_reach_the_target_on_the_samples(method: str, allocation: str, sparsity: float) -> None:
    samples = synthetic_samples()
    planner = Planner(samples, method)  # type: ignore[arg-type]
    weights = [1, 3, 0.5, 2] if allocation == "weighted" else [1e-25, 3e-25, 5e-26, 2e-25]  # at any scale
    chosen = planner.uniform(sparsity) if allocation == "uniform" else planner.allocated(sparsity, weights)
    c = Calibration.of(sparsity, chosen)
    shares = [kept_on(s, g, a) for s, g, a in zip(samples, c.thresholds.gate, c.thresholds.act, strict=True)]
    kept = np.mean([(u + d) / 2 for u, d in shares])
    assert 1 - sparsity - 0.03 <= kept <= 1 - sparsity + 1e-3
    np.testing.assert_allclose([u for u, _ in shares], c.up_rates, atol=2e-3)
    np.testing.assert_allclose([d for _, d in shares], c.down_rates, atol=2e-3)
    if method == "gate":
        assert c.thresholds.act == [0.0] * len(samples) and c.up_rates == c.down_rates
    if allocation == "uniform":
        assert len(set(c.up_rates)) == 1 and len(set(c.down_rates)) == 1


def test_allocation_follows_the_weights_and_thresholding_what_reaches_down_pays() -> None:
    samples = synthetic_samples()

    def summed(chosen, weights=(1, 1, 1, 1)) -> float:
        return sum(w * o.error for w, o in zip(weights, chosen, strict=True))

    both, gate_only = Planner(samples, "gate+act"), Planner(samples, "gate")
    assert summed(both.uniform(0.5)) < summed(gate_only.uniform(0.5))
    assert summed(both.allocated(0.5, [1, 1, 1, 1])) <= summed(both.uniform(0.5)) + 1e-9
    weights = [100.0, 1.0, 1.0, 1.0]  # the first layer matters most: it keeps more than the others
    chosen = both.allocated(0.5, weights)
    assert chosen[0].kept > max(o.kept for o in chosen[1:])
    assert summed(chosen, weights) <= summed(both.uniform(0.5), weights) + 1e-9


def test_options_error_is_the_dropped_energy_share() -> None:
    s = synthetic_samples(1)[0]
    for o in layer_options(s, "gate+act")[::37]:
        up = s.gate >= o.gate_threshold
        kept = up & (s.value >= o.act_threshold)
        assert o.error == pytest.approx(float(s.energy[~kept].sum() / s.energy.sum()), rel=1e-4, abs=1e-9)


def test_layer_weights() -> None:
    opts = [Option(0.7, 0.5, 0.1, 0.1, e) for e in (0.1, 0.2, 0.0, 0.4)]
    # effect / error; a near-zero effect counts as a twentieth of the mean; an option that dropped nothing gets the max
    weights = layer_weights(opts, [0.02, 0.02, 0.0, 1e-9])
    mean = np.mean([0.02, 0.02, 0.0, 1e-9])
    assert weights == pytest.approx([0.2, 0.1, 0.2, 0.05 * mean / 0.4])
    assert layer_weights([Option(1, 1, 0, 0, 0.0)], [0.1]) is None


def test_calibration_windows_spread_over_the_text() -> None:
    windows = [[i] for i in range(10)]
    assert spread(windows, 20) == windows
    picked = spread(windows, 4)
    assert picked[0] == [0] and picked[-1] == [9] and len({w[0] for w in picked}) == 4
    assert spread(windows, 1) == [[0]]


def test_zero_and_bad_sparsities() -> None:
    planner = Planner(synthetic_samples(2))
    for bad in (-0.1, 1.0):
        with pytest.raises(CalibrationError, match="sparsity must be in"):
            planner.uniform(bad)
    with pytest.raises(ValueError, match="non-negative layer weights"):
        planner.allocated(0.4, [1.0])
    assert dense_calibration(2).thresholds.gate == [0.0, 0.0] and dense_calibration(2).kept == 1.0


def test_weighted_scores_scale_by_down_norm_and_mean_up() -> None:
    from turbosparse.calibrate.scores import score_scales

    rng = np.random.default_rng(1)
    norms, mean_up = rng.uniform(0.5, 2.0, (3, 64)), rng.uniform(0.1, 1.0, (3, 64))
    assert score_scales("plain", norms, mean_up) == FfnScales()
    weighted = score_scales("weighted", norms, mean_up)
    np.testing.assert_allclose(weighted.act.mean(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(weighted.act * norms.mean(axis=1, keepdims=True), norms, rtol=1e-5)
    gate = norms * mean_up
    np.testing.assert_allclose(weighted.gate * gate.mean(axis=1, keepdims=True), gate, rtol=1e-5)
    s = synthetic_samples(1)[0]
    scaled = s.scaled(np.arange(64, dtype=np.float32), np.full(64, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(scaled.gate, s.gate * (s.neuron % 64).astype(np.float32))
    np.testing.assert_array_equal(scaled.value, 2 * s.value)
    np.testing.assert_array_equal(scaled.energy, s.energy)  # what a dropped neuron costs does not change


# ---- the copy ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dense llama SwiGLU GGUF with a vocabulary (the synthetic benchmark's twin, Q4_0)."""
    from turbosparse.bench.synthetic import SHAPES, SyntheticSpec, synthetic_pair

    return synthetic_pair(SyntheticSpec(SHAPES["tiny"], rank=64), tmp_path_factory.mktemp("tiny"))[1]


def test_copy_with_keys_keeps_every_tensor_and_key(tmp_path: Path, tiny_twin: Path) -> None:
    out = tmp_path / "calibrated.gguf"
    keys = {GATE_KEY: [0.1, 0.2], ACT_KEY: [0.0, 0.0], "turbosparse.calibrated_sparsity": 0.4}
    copy_with_keys(tiny_twin, out, keys)
    src, dst = gguf.GGUFReader(str(tiny_twin)), gguf.GGUFReader(str(out))
    assert [t.name for t in src.tensors] == [t.name for t in dst.tensors]
    for a, b in zip(src.tensors, dst.tensors, strict=True):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.shape, b.shape)
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name
    for key, field in src.fields.items():
        if not key.startswith("GGUF."):
            assert dst.fields[key].types == field.types and dst.fields[key].contents() == field.contents(), key
    np.testing.assert_allclose(dst.fields[GATE_KEY].contents(), [0.1, 0.2], rtol=1e-6)
    assert dst.fields["turbosparse.format_version"].contents() == 1
    assert NativeModel(out).info.has_ffn_thresholds


def test_copy_is_atomic_and_refuses_its_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TinyConfig()
    src = tmp_path / "m.gguf"
    write_gguf(src, cfg, random_weights(cfg))
    with pytest.raises(ConvertError, match="writing into the input file itself"):
        copy_with_keys(src, src, {})
    calls = []

    def failing_write(self, tensor) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        original(self, tensor)

    original = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing_write)
    with pytest.raises(ConvertError, match=r"out\.gguf: writing failed \(disk full\)"):
        copy_with_keys(src, tmp_path / "out.gguf", {GATE_KEY: [0.0] * cfg.n_layer})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# ---- the real model ------------------------------------------------------------------------------------


def play(name: str, start: int = 5000) -> str:
    from turbosparse.assets import shakespeare_text

    return shakespeare_text(name)[start:]


@pytest.fixture(scope="module")
def smollm2_calibrated(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path):
    """SmolLM2 calibrated on 2 windows of Hamlet at 40 %, measured on 2 windows of Macbeth."""
    cfg = CalibrateConfig(collect=CollectConfig(n_ctx=256, max_tokens=512), allocation="uniform", eval_tokens=512)
    dense, results = calibrate(smollm2_path, play("hamlet_gut.txt"), [0.4], held_out=[play("macbeth_gut.txt")], cfg=cfg)
    out = write_calibrated(smollm2_path, results[0].calibration, tmp_path_factory.mktemp("cal") / "smollm2-s40.gguf",
                           scales=results[0].scales)  # fmt: skip
    return dense[0], results[0], out


def test_kept_share_on_held_out_text_matches_the_target(smollm2_calibrated) -> None:
    dense, result, _ = smollm2_calibrated
    q = result.quality[0]
    assert abs(result.calibration.kept - 0.6) <= 0.01
    assert abs(q.kept - 0.6) <= 0.05, f"rows read on held-out text {q.kept:.3f} for a target of 0.6"
    assert q.down_rate < q.up_rate <= 1.0
    assert dense.perplexity < q.perplexity < 1.5 * dense.perplexity
    # gate, up and down are the same size here; the gate and (standard-only) down are read whole on the CPU
    assert q.ffn_bytes == pytest.approx((2 + q.up_rate) / 3, rel=1e-6)


def test_calibrated_file_runs_exact_by_default(smollm2_calibrated) -> None:
    """Our engine decodes the calibrated SmolLM2 sparsely; llama.cpp still runs it (dense): only keys were added."""
    from llama_cpp import Llama

    from turbosparse import Model

    _, _, path = smollm2_calibrated
    llm = Llama(str(path), n_ctx=64, verbose=False)
    assert float(llm.metadata["turbosparse.calibrated_sparsity"]) == pytest.approx(0.4)  # arrays are not listed
    assert llm.create_completion("The", max_tokens=2)["choices"]
    native = NativeModel(path)
    info = native.info
    assert info.has_ffn_thresholds
    assert native.ffn_scales.gate.shape == native.ffn_scales.act.shape == (info.n_layer, info.n_ff)  # weighted scores
    model = Model(path, n_threads=2, n_ctx=256)
    assert model.sparse_mode.name == "EXACT"
    text = model.generate("The capital of France is", max_tokens=6, temperature=0)
    assert isinstance(text, str) and text
    stats = model.stats()
    assert stats["sparse_mode"] == "exact"
    assert 0.4 <= stats["mean_kept_fraction"] <= 0.8
    assert len(stats["kept_fraction"]) == info.n_layer


# ---- the command -------------------------------------------------------------------------------------------


def turbosparse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "turbosparse", *args], capture_output=True, text=True, timeout=600)


def test_command_table_and_files(tmp_path: Path, tiny_twin: Path) -> None:
    text = tmp_path / "plays.txt"
    text.write_text(play("othello_gut.txt")[:20000])
    out = tmp_path / "tiny.gguf"
    args = ["calibrate", "-m", str(tiny_twin), "-f", str(text), "--sparsity", "0.3,0.5", "-o", str(out), "-c", "128",
            "--tokens", "512", "--eval-tokens", "256", "--json"]  # fmt: skip
    res = turbosparse(*args)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert [r["sparsity"] for r in report["results"]] == [0.3, 0.5]
    assert report["written"] == [str(tmp_path / "tiny.s30.gguf"), str(tmp_path / "tiny.s50.gguf")]
    for r, target in zip(report["results"], (0.7, 0.5), strict=True):
        assert abs(r["held_out"][0]["kept"] - target) <= 0.05
        assert 2 / 3 < r["held_out"][0]["ffn_bytes"] < 1.0  # the whole gate and down, a share of up
    assert report["dense"][0]["perplexity"] > 0
    reader = gguf.GGUFReader(report["written"][1])
    assert reader.fields["turbosparse.calibrated_sparsity"].contents() == pytest.approx(0.5)
    info = NativeModel(out.with_name("tiny.s50.gguf")).info
    for key in ("turbosparse.ffn_gate_scales", "turbosparse.ffn_act_scales"):  # the weighted scores' scales
        assert len(reader.fields[key].contents()) == info.n_layer * info.n_ff
    # calibrated again with plain scores: the old scales are not carried over
    again = tmp_path / "again.gguf"
    res = turbosparse("calibrate", "-m", report["written"][1], "-f", str(text), "--sparsity", "0.4", "-o", str(again),
                      "-c", "128", "--tokens", "256", "--eval-tokens", "0", "--scores", "plain")  # fmt: skip
    assert res.returncode == 0, res.stderr
    fields = gguf.GGUFReader(str(again)).fields
    assert "turbosparse.ffn_gate_scales" not in fields and "turbosparse.ffn_act_scales" not in fields
    assert fields["turbosparse.calibrated_sparsity"].contents() == pytest.approx(0.4)
    table = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(text), "--sparsity", "0.5,0.6", "-c", "128",
                        "--tokens", "256", "--eval-tokens", "128")  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "ppl" in table.stdout and "dense" in table.stdout and "0.60" in table.stdout


def test_command_errors(tmp_path: Path, tiny_twin: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    out = str(tmp_path / "x.gguf")
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.4", "-o", out)
    assert res.returncode == 1
    assert "calibrate: error:" in res.stderr and "fewer than one window" in res.stderr
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.4")
    assert res.returncode == 1 and "-o/--outfile is required" in res.stderr
    for above in ("1.2", "0.3,0.98"):  # 0.98: refused after the collection before (the grid keeps >= 0.025)
        res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", above, "-o", out)
        assert res.returncode == 2 and "sparsities must be in [0, 0.975]" in res.stderr
    missing = tmp_path / "missing.txt"
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(missing), "--sparsity", "0.4", "-o", out)
    assert res.returncode == 1 and str(missing) in res.stderr
    res = turbosparse("calibrate", "-m", str(missing), "-f", str(short), "--sparsity", "0.4", "-o", out)
    assert res.returncode == 1 and str(missing) in res.stderr
    # an output that can never be a file is said before the calibration (the short text's error comes after it)
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.4", "-o", str(tmp_path))
    assert res.returncode == 1 and "is a directory" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]
    # the input itself, or two sparsities named alike (.s30), said before the calibration too
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.4", "-o", str(tiny_twin))
    assert res.returncode == 1 and "is an input file itself" in res.stderr
    split_first = tmp_path / "tw-00001-of-00002.gguf"
    shutil.copy(tiny_twin, split_first)
    for own in (short, tmp_path / "tw-00002-of-00002.gguf"):  # the text (an -o typo), another file of a split model
        own.touch()
        res = turbosparse("calibrate", "-m", str(split_first), "-f", str(short), "--sparsity", "0.4", "-o", str(own))
        assert res.returncode == 1 and "is an input file itself" in res.stderr, res.stderr
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.301,0.299", "-o", out)
    assert res.returncode == 1 and "--sparsity 0.301: another sparsity is written to" in res.stderr
    res = turbosparse(
        "calibrate", "-m", str(tiny_twin), "-f", str(short), "--sparsity", "0.4", "-o", out, "--tokens", "0"
    )
    assert res.returncode == 1 and "--tokens must be >= 1, got 0" in res.stderr


def test_a_text_too_short_once_the_evaluation_is_held_out_says_so(tmp_path: Path, tiny_twin: Path) -> None:
    """Its count was the tokens left (0) and "4 evaluation windows held out" whatever was; now the text's count, what
    was held out, and how to keep it."""
    text = tmp_path / "text.txt"
    text.write_text(play("macbeth_gut.txt")[:1200])
    out = str(tmp_path / "x.gguf")
    res = turbosparse("calibrate", "-m", str(tiny_twin), "-f", str(text), "--sparsity", "0.4", "-o", out, "-c", "512")
    assert res.returncode == 1
    assert re.search(r"the calibration text has (\d+) tokens; its last \1 are held out for the quality measurement "
                     r"\(--eval-tokens 2048; or give --eval-file, or --eval-tokens 0\), leaving 0: fewer than one "
                     r"window of 512", res.stderr), res.stderr  # fmt: skip

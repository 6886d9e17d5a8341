"""The default-model recipe: cached, resumable steps; held-out Macbeth; a clear error at the convert step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from turbosparse.predictor_train import default_model
from turbosparse.predictor_train.corpora import prompt_lines
from turbosparse.predictor_train.default_model import Recipe, Steps, build_gguf, cache_dir


def test_steps_run_once_and_resume_after_a_failure(tmp_path: Path) -> None:
    calls: list[str] = []
    steps = Steps(tmp_path)
    steps.run("a", lambda: calls.append("a"))

    def boom() -> None:
        calls.append("b")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        steps.run("b", boom)
    again = Steps(tmp_path)
    again.run("a", lambda: calls.append("a"))
    again.run("b", lambda: calls.append("b2"))
    assert calls == ["a", "b", "b2"]
    assert set(again.times) == {"a", "b"}


def test_cache_dir_is_keyed_by_the_recipe_version(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TURBOSPARSE_CACHE", str(tmp_path))
    assert cache_dir(Recipe()) == tmp_path / "default-model" / default_model.RECIPE_VERSION
    assert cache_dir(Recipe(version="other")) == tmp_path / "default-model" / "other"


def test_evaluation_texts_and_prompts_are_held_out_of_the_build() -> None:
    """Macbeth, the news and encyclopedia texts and the evaluation prompts never reach calibration or samples."""
    calib = default_model.calibration_text()
    assert len(calib) > 3_000_000 and "Enter Hamlet" in calib
    for name, text in default_model.EVAL_TEXTS.items():
        held_out = text()
        assert len(held_out) > 20_000, name
        assert held_out[1000:1200] not in calib, name
    assert "Enter Macbeth" not in calib and "Enter Macbeth" in default_model.EVAL_TEXTS["macbeth"]()
    build_prompts = set(prompt_lines("chat_prompts")) | set(prompt_lines("openings"))
    eval_prompts = set(prompt_lines("eval_prompts"))
    assert len(eval_prompts) >= 30 and not eval_prompts & build_prompts
    assert "Write a short poem about the sea." in eval_prompts  # the README's main job is a held-out prompt


def test_convert_step_writes_the_gguf_once(tmp_path: Path, monkeypatch) -> None:
    """The last steps measure the checkpoint's importance matrix on the calibration rows and hand both to the
    converter (SmolLM2's pre-tokenizer, both down layouts)."""
    import turbosparse.convert
    import turbosparse.predictor_train.imatrix as imatrix_module

    calls, measured = [], []

    def fake_convert(src, out, **options):
        calls.append((src, options))
        Path(out).write_bytes(b"GGUF")
        return Path(out)

    def fake_imatrix(model_dir, sequences, out, **options):
        measured.append((model_dir, sequences.shape))
        Path(out).write_bytes(b"GGUF")
        return Path(out)

    np.save(tmp_path / "calib.npy", np.zeros((3, 8), dtype=np.int64))
    monkeypatch.setattr(default_model, "build_checkpoint", lambda recipe, root: root / "bamboo")
    monkeypatch.setattr(turbosparse.convert, "convert", fake_convert)
    monkeypatch.setattr(imatrix_module, "write_checkpoint_imatrix", fake_imatrix)
    out = build_gguf(Recipe(), tmp_path)
    assert out == default_model.gguf_path(Recipe(), tmp_path) and out.is_file()
    assert measured == [(tmp_path / "bamboo", (3, 8))]
    assert calls == [(tmp_path / "bamboo", {"outtype": "q4_0", "pred_type": "q4_0", "vocab_pre": "smollm",
                                            "down_layout": "both", "imatrix": tmp_path / "imatrix.gguf",
                                            "progress": True})]  # fmt: skip
    assert build_gguf(Recipe(), tmp_path) == out and len(calls) == 1  # cached

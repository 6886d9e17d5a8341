"""The default-model recipe: cached, resumable steps; held-out Macbeth; a clear error at the convert step."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbosparse.errors import TrainingError
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


def test_a_step_whose_output_is_gone_runs_again_and_so_do_the_ones_after_it(tmp_path: Path) -> None:
    """A marker alone is not a finished step (a user who deleted a folder to free space, a marker written as the
    disk filled): the step runs again, and every later one, which read what it wrote."""
    calls: list[str] = []

    def build() -> Steps:
        steps = Steps(tmp_path)
        for name in "abc":
            steps.run(name, lambda name=name: (calls.append(name), (tmp_path / name).write_text(name)), outputs=[name])
        return steps

    build()
    build()
    assert calls == ["a", "b", "c"]
    (tmp_path / "b").unlink()
    build()
    assert calls == ["a", "b", "c", "b", "c"]
    (tmp_path / ".done-a").write_text("")  # cut short: read as not done, not a JSONDecodeError
    build()
    assert calls == ["a", "b", "c", "b", "c", "a", "b", "c"]
    assert not list(tmp_path.glob("*.partial"))


def test_one_build_at_a_time_and_what_a_killed_one_left_is_removed(tmp_path: Path, monkeypatch) -> None:
    """A second process (serve beside run) waits for the first's build, then takes its GGUF; partial files a killed
    build left are removed first; a folder that cannot be written is said before any step."""
    import fcntl
    import threading

    out = default_model.gguf_path(Recipe(), tmp_path)
    built: list[Path] = []

    def fake_build(recipe, root, path):
        built.append(path)
        path.write_bytes(b"GGUF")
        return path

    monkeypatch.setattr(default_model, "_build", fake_build)
    (tmp_path / ".model.gguf.123.partial").write_bytes(b"x" * 10)
    (tmp_path / "hf.tmp").mkdir()
    with (tmp_path / ".lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: built.append(build_gguf(Recipe(), tmp_path)))
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive() and built == []  # it waits for the lock's holder
        out.write_bytes(b"GGUF")  # which built the model meanwhile
    waiting.join(timeout=30)
    assert built == [out]  # found, not built again
    out.unlink()
    assert build_gguf(Recipe(), tmp_path) == out and built[-1] == out
    assert not (tmp_path / ".model.gguf.123.partial").exists() and not (tmp_path / "hf.tmp").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(TrainingError, match=r"cannot hold the default model's build .*set TURBOSPARSE_CACHE"):
        build_gguf(Recipe(), tmp_path / "file" / "build")


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
    """The checkpoint and its importance matrix (the last steps) go to the converter (SmolLM2's pre-tokenizer, both
    down layouts)."""
    import turbosparse.convert

    calls = []

    def fake_convert(src, out, **options):
        calls.append((src, options))
        Path(out).write_bytes(b"GGUF")
        return Path(out)

    monkeypatch.setattr(default_model, "build_checkpoint", lambda recipe, root: root / "bamboo")
    monkeypatch.setattr(turbosparse.convert, "convert", fake_convert)
    out = build_gguf(Recipe(), tmp_path)
    assert out == default_model.gguf_path(Recipe(), tmp_path) and out.is_file()
    assert calls == [(tmp_path / "bamboo", {"outtype": "q4_0", "pred_type": "q4_0", "vocab_pre": "smollm",
                                            "down_layout": "both", "imatrix": tmp_path / "imatrix.gguf",
                                            "progress": True})]  # fmt: skip
    assert build_gguf(Recipe(), tmp_path) == out and len(calls) == 1  # cached


def test_a_damaged_cached_model_is_converted_again(tmp_path: Path, monkeypatch) -> None:
    """A GGUF cut short (a full disk, an interrupted copy) was used as it was, failing every run."""
    import sys

    from turbosparse import default as default_module
    from turbosparse.assets import default_model_dir, default_model_file
    from turbosparse.errors import TurboSparseError

    monkeypatch.setenv("TURBOSPARSE_CACHE", str(tmp_path))
    path = default_model_dir() / default_model_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(12))
    rebuilt = []
    monkeypatch.setattr(default_model, "build_gguf", lambda: rebuilt.append(path.exists()) or path)
    assert default_module.default_model() == str(path) and rebuilt == [False]  # removed, then built again
    monkeypatch.setitem(sys.modules, "turbosparse.predictor_train.default_model", None)  # no `train` extra
    wanted = r"needs the `train` extra \(torch\), which scripts/setup.sh installs: pip install .\.\[train\]."
    with pytest.raises(TurboSparseError, match=wanted):
        default_module.default_model()
    monkeypatch.setenv("TURBOSPARSE_CACHE", "~/somewhere")
    assert default_model_dir().is_absolute() and "~" not in str(default_model_dir())


def test_help_says_what_the_build_does_without_starting_it(monkeypatch, capsys) -> None:
    """(`--help` was ignored: the 30-40 minute build began)"""

    def no_build() -> Path:
        raise AssertionError("the build started")

    monkeypatch.setattr(default_model, "build_gguf", no_build)
    with pytest.raises(SystemExit) as info:
        default_model.main(["--help"])
    assert info.value.code == 0 and "Builds the default model once" in capsys.readouterr().out

"""The default thread count where os.sched_getaffinity is missing (macOS, Windows): a Model could not be made there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turbosparse import model


def fake_sysctl(folder: Path, answer: str) -> str:
    tool = folder / "sysctl"
    tool.write_text(f'#!/bin/sh\n[ "$*" = "-n hw.perflevel0.physicalcpu" ] && echo {answer} && exit 0\nexit 1\n')
    tool.chmod(0o755)
    return str(folder)


def test_linux_counts_the_cores_of_the_process_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert model.default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert model.default_threads() == 8


def test_macos_counts_its_performance_cores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 10)
    monkeypatch.setenv("PATH", fake_sysctl(tmp_path, "4"))
    assert model.default_threads() == 4


def test_without_that_sysctl_every_core_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.setenv("PATH", fake_sysctl(tmp_path, "not-a-number"))
    assert model.default_threads() == 6
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no sysctl at all (Windows)
    assert model.default_threads() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert model.default_threads() == 1

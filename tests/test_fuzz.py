"""A bounded fuzz run on the ASan/UBSan build (tests/fuzzing.py; the long run is in the README): mutated GGUF and
PWRI files, broken converter inputs, Model API misuse, malformed server requests and grammars end in a clean
turbosparse error (a 4xx error object) or a correct result, never in a crash, a hang, a 500, an oversized allocation
or a partial output file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzzing import KINDS, fuzz, prepare_inputs

CASES = {"gguf": 30, "pwri": 15, "convert": 5, "server": 60, "grammar": 100}  # the long run: README, "Fuzzing"
SEED = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory):
    return prepare_inputs(tmp_path_factory.mktemp("fuzz-inputs"), default_model=False)


def test_fuzzed_inputs_end_in_clean_errors(inputs, tmp_path: Path) -> None:
    report = fuzz(inputs, list(KINDS), CASES, SEED, tmp_path, sanitize=True, deadline_s=600)
    assert report["crashes"] == [], report["crashes"]
    assert report["hangs"] == [], report["hangs"]
    assert report["failures"] == [], report["failures"]
    assert report["cases"] == {**CASES, "api": report["cases"]["api"]}
    assert report["cases"]["api"] >= 20
    for kind in ("gguf", "pwri"):  # the mutations reach past the header checks: some files still load and run
        loaded = [k for k in report["outcomes"][kind] if k == "loaded" or k.startswith("loaded, ")]
        assert loaded, report["outcomes"]
    assert report["outcomes"]["server"].get("answered", 0) > 0, report["outcomes"]  # some requests reach the model
    assert report["outcomes"]["grammar"].get("sampled 4 tokens", 0) > 0, report["outcomes"]  # some grammars parse

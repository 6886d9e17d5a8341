"""HF checkpoint -> turbosparse GGUF (docs/gguf-format.md): `convert(model_dir, out_path, outtype=...)`.

One class per source architecture (arch/), a lazy tensor source (source.py), the vocabulary as llama.cpp writes it
(vocab.py), the type of each tensor (quant_policy.py), and one shared streaming, atomic writer (writer.py).
"""

from __future__ import annotations

from turbosparse.convert.pipeline import convert
from turbosparse.convert.quant_policy import OUTTYPES
from turbosparse.errors import ConvertError

__all__ = ["OUTTYPES", "ConvertError", "convert"]

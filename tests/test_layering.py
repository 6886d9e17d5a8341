"""The dependency direction DESIGN.md states: the runtime (every module at the top of the turbosparse package)
imports neither torch nor the converter nor the trainer; assets.py imports nothing of turbosparse; the one
runtime -> trainer edge is default.default_model(), which builds the default model when it is not cached."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "turbosparse"
RUNTIME = sorted(f"turbosparse.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))

BLOCK_AND_IMPORT = """
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch" or name.startswith(("turbosparse.convert", "turbosparse.predictor_train")):
            raise ImportError(f"the runtime imported {name}")

sys.meta_path.insert(0, Blocked())
for name in sys.argv[1:]:
    importlib.import_module(name)
"""


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports (relative imports resolved against the turbosparse package)."""
    package = ".".join(("turbosparse", *path.relative_to(PACKAGE).parent.parts))
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            names.add(f"{base}.{node.module}" if node.level else str(node.module))
    return names


def test_the_runtime_imports_without_torch_the_converter_or_the_trainer() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCK_AND_IMPORT, "turbosparse", *RUNTIME], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def test_assets_is_a_leaf() -> None:
    assert not {n for n in imported_modules(PACKAGE / "assets.py") if n.startswith("turbosparse")}


def test_only_default_model_reaches_the_trainer() -> None:
    reaching = [p.name for p in PACKAGE.glob("*.py") if any("predictor_train" in n for n in imported_modules(p))]
    assert reaching == ["default.py"]

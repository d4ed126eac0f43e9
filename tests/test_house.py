"""The house rules a test can keep: the algorithm in rlthf/core imports nothing heavy and nothing outside core,
and no module imports another module's private name."""
import ast
import json
import subprocess
import sys
from pathlib import Path

RLTHF = Path(__file__).resolve().parent.parent / "rlthf"
HEAVY = ("ray", "torch", "flask", "transformers", "peft", "trl", "waitress", "matplotlib", "openai")


def test_core_imports_only_numpy_pandas_and_core_in_a_fresh_interpreter():
    modules = sorted(f"rlthf.core.{p.stem}" for p in (RLTHF / "core").glob("*.py") if p.stem != "__init__")
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    outside = [m for m in loaded if m.startswith("rlthf.") and not m.startswith("rlthf.core")]
    assert len(modules) >= 8 and not heavy and not outside, (heavy, outside)


def imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlthf"):
            for alias in node.names:
                yield node.module, alias.name


def test_no_private_name_crosses_modules():
    crossing = [(str(p.relative_to(RLTHF.parent)), module, name) for p in RLTHF.rglob("*.py")
                for module, name in imported_names(p) if name.startswith("_")]
    assert not crossing, crossing


def test_core_modules_import_only_core():
    for path in (RLTHF / "core").glob("*.py"):
        outside = [m for m, _ in imported_names(path) if not m.startswith("rlthf.core")]
        assert not outside, (path.name, outside)

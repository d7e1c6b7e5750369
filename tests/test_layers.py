"""Fast tier: the package's layering (no export, no framework import).

`lint-imports` (import-linter, run by `.ci/run`) enforces the layers and the
absence of import circles between them; this file checks what it cannot see:
an import of kexport's own modules inside a function hides the dependency
direction, so it is allowed only where it defers a heavy optional dependency,
with the reason on the line (`# deferred: ...`).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

SRC = Path(__file__).resolve().parents[1] / "src" / "kexport"
ROOT = SRC.parents[1]


def _local_kexport_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.level == 0:
                names = [sub.module or ""]
            elif isinstance(sub, ast.Import):
                names = [a.name for a in sub.names]
            else:
                continue
            if any(n == "kexport" or n.startswith("kexport.") for n in names):
                text = lines[sub.lineno - 1]
                if "# deferred:" not in text:
                    found.append((sub.lineno, text.strip()))
    return found


def test_no_hidden_function_local_imports_of_kexport_modules():
    offenders = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py"))
                 if (hits := sorted(set(_local_kexport_imports(p))))}
    assert not offenders, (
        "kexport modules imported inside functions without a '# deferred: <reason>' "
        f"comment (move them to the top of the file): {offenders}")


def _ambient_state(path: Path) -> list[str]:
    """``ContextVar(...)`` calls and ``global`` statements in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and "ContextVar" in (
                getattr(node.func, "attr", None), getattr(node.func, "id", None)):
            found.append(f"ContextVar at line {node.lineno}")
        if isinstance(node, ast.Global):
            found.append(f"global {', '.join(node.names)} at line {node.lineno}")
    return found


def test_export_options_travel_in_the_context_not_in_ambient_state():
    """Options reach each step through ``ExportContext``; the one context variable is the
    localiser's recorder, which Keras's ``Layer.__call__`` calls back into."""
    found = {str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py"))
             if (hits := _ambient_state(p))}
    callback = found.pop("check/probe.py", [])
    assert len(callback) == 1 and callback[0].startswith("ContextVar"), callback
    assert not found, f"module state outside ExportContext: {found}"


def test_the_checker_sees_a_hidden_import(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from kexport import api\n    import numpy\n"
                      "def g():\n    from kexport import runtime  # deferred: onnxruntime\n")
    assert _local_kexport_imports(sample) == [(2, "from kexport import api")]


def _lint_imports() -> Path | None:
    exe = Path(sys.executable).with_name("lint-imports")
    return exe if exe.exists() else None


@pytest.mark.skipif(_lint_imports() is None, reason="import-linter is not installed")
def test_layers_contract_holds():
    run = subprocess.run([str(_lint_imports()), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]

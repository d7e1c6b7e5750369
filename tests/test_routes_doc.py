"""docs/routes.md is generated from the route tables and must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_routes_doc", ROOT / "scripts" / "gen_routes_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_routes_doc_equals_generated():
    text = _generator().render()
    committed = (ROOT / "docs" / "routes.md").read_text()
    assert committed == text, "docs/routes.md is stale: run python scripts/gen_routes_doc.py"


def test_routes_doc_shows_every_cell_and_the_torch_saved_model_rehost():
    from kexport import artifact

    text = _generator().render()
    for b in artifact.BACKENDS:
        assert f"| {b} | " in text
    assert "### torch → `tf_saved_model`\n\n1. **rehost**: re-host on tensorflow" in text

"""Run in the fresh process: generation through ``kexport.load`` (the format's runtime, no model code)."""

from __future__ import annotations

import sys


def generate(path, requests):
    """``kexport.load(path).generate(**request)`` for each request; rows as lists."""
    import kexport

    artifact = kexport.load(path)
    out = {"format": artifact.format, "rows": []}
    for request in requests:
        rows = artifact.generate(request.pop("prompts"), **request)
        out["rows"].append([r.tolist() for r in rows])
    out["keras_hub_imported"] = "keras_hub" in sys.modules  # no model code
    out["endpoints"] = list(artifact.endpoints)
    return out

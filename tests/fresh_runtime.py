"""Fresh-process helpers for the runtime tests: only ``kexport.load``, no Keras."""

from __future__ import annotations


def load_and_run(path, calls):
    """Open ``path`` with kexport.load and run ``[(endpoint, inputs), ...]``."""
    import kexport

    art = kexport.load(path)
    info = {n: ([str(t) for t in e.inputs], [str(t) for t in e.outputs])
            for n, e in art.endpoints.items()}
    outs = [art.run(endpoint, inputs) for endpoint, inputs in calls]
    default = art(*[v for v in calls[0][1].values()]) if isinstance(calls[0][1], dict) else None
    return {"format": art.format, "default": art.default_endpoint, "endpoints": info,
            "outputs": outs, "default_out": default,
            "shared_initializers": getattr(art, "shared_initializers", None)}


def litert_clean_load(path, feeds_file, out_file, block_litert="0"):
    """Run as ``python -c`` in a new interpreter: open ``path`` with kexport.load
    and run its default endpoint on each batch in ``feeds_file`` (``.npz``, keys
    ``"<i>/<input>"``), recording every warning from ``import kexport`` on.

    ``block_litert="1"`` makes ``import ai_edge_litert`` fail first, as when the
    package is not installed. Writes the outputs (``"<i>/<output>"``) to
    ``out_file`` and prints nothing; returns nothing (see ``out_file + ".json"``).
    """
    import json
    import sys
    import warnings

    import numpy as np

    if block_litert == "1":
        sys.modules["ai_edge_litert"] = None  # the next import of it raises ImportError
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import kexport

        art = kexport.load(path)
        stored = np.load(feeds_file)
        batches: dict[str, dict] = {}
        for key in stored.files:
            i, _, name = key.partition("/")
            batches.setdefault(i, {})[name] = stored[key]
        outs = {f"{i}/{k}": v for i, feeds in batches.items() for k, v in art(feeds).items()}
    np.savez(out_file, **outs)
    with open(out_file + ".json", "w") as f:
        json.dump({"interpreter": getattr(art, "interpreter", None),
                   "ai_edge_litert_imported": bool(sys.modules.get("ai_edge_litert")),
                   "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}, f)

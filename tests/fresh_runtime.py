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

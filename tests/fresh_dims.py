"""Reload functions for tests/test_dims.py in a fresh process (no Keras, no kexport)."""

from __future__ import annotations

import numpy as np


def torch_ranges(path):
    """``{input name: [(lower, upper) or None per axis]}`` from a ``.pt2``'s range
    constraints (``None`` for a static axis; ``upper`` None when unbounded)."""
    import torch

    program = torch.export.load(path)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        axes = []
        for dim in nodes[spec.arg.name].meta["val"].shape:
            expr = getattr(getattr(dim, "node", None), "expr", None)
            if expr is None:
                axes.append(None)
                continue
            r = program.range_constraints[expr]
            try:
                upper = int(r.upper)
            except Exception:  # int_oo: no max
                upper = None
            axes.append((int(r.lower), upper if upper is not None and upper < 2**31 else None))
        out[spec.arg.name] = axes
    return out


def saved_model_calls(path, feeds):
    """``[outputs by name]`` of ``serving_default`` for each dict of ``feeds``."""
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    return [{k: v.numpy() for k, v in fn(**{n: tf.constant(np.asarray(a))
                                            for n, a in feed.items()}).items()}
            for feed in feeds]


def torch_outcomes(path, calls):
    """Each call of a ``.pt2``'s module on its flat inputs: ``["ok", [outputs]]`` or
    ``["error", type name, first line of the message]``."""
    import torch

    module = torch.export.load(path).module()
    out = []
    with torch.no_grad():
        for flat in calls:
            try:
                y = module(*[torch.from_numpy(np.asarray(x)) for x in flat])
            except Exception as e:  # the program's own refusal is the answer
                out.append(["error", type(e).__name__, str(e).strip().splitlines()[0]])
                continue
            out.append(["ok", [t.numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]])
    return out

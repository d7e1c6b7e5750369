"""Raw-input artifacts run in the fresh process with their format's own runtime only."""

from __future__ import annotations

import numpy as np


def onnx_run(path, feeds):
    """Run an ONNX file with ONNX Runtime on ``{name: array}`` (strings as object arrays);
    also return its input types and the operator domains it uses."""
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = session.run(None, {k: np.asarray(v, dtype=object) if np.asarray(v).dtype.kind in "OUS"
                              else np.asarray(v) for k, v in feeds.items()})
    model = onnx.load(path)
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in model.graph.node})
    return outs, [i.type for i in session.get_inputs()], ops

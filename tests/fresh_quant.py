"""Quantized ONNX artifacts reloaded in the fresh process (see conftest.FreshProcess).

Only NumPy, onnx and onnxruntime are imported: a quantized file is checked the
way a server without Keras or kexport would load it.
"""

from __future__ import annotations

import os

import numpy as np


def describe_and_run(path, arrays):
    """Check ``path`` (full_check), run ``arrays`` (one per graph input, in
    order) with ONNX Runtime and describe
    what the graph holds: operators, initializer dtypes, input/output dtypes,
    metadata, size on disk."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    graph = model.graph
    feeds = {i.name: a for i, a in zip(session.get_inputs(), arrays, strict=True)}
    name = onnx.helper.tensor_dtype_to_np_dtype
    return {
        "ops": sorted({n.op_type for n in graph.node}),
        "initializer_dtypes": sorted({np.dtype(name(t.data_type)).name
                                      for t in graph.initializer}),
        "io_dtypes": sorted({np.dtype(name(v.type.tensor_type.elem_type)).name
                             for v in [*graph.input, *graph.output]}),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "size": os.path.getsize(path) + (os.path.getsize(path + ".data")
                                         if os.path.exists(path + ".data") else 0),
        "outputs": [np.asarray(o) for o in session.run(None, feeds)],
    }

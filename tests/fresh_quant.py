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


def runtime_kernels(path):
    """What ONNX Runtime's CPU provider runs for ``path`` after its graph
    optimisations (level extended: the QDQ fusions, nothing CPU-specific):
    the operator counts of the optimised graph, the dtypes of the activation
    zero points, and the range of the int8 weight initializers."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    model = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = sorted({inits[n.input[2]].dtype.name for n in model.graph.node
                          if n.op_type == "QuantizeLinear" and len(n.input) > 2
                          and n.input[2] in inits})
    weights = [inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim > 1]
    return {"ops": dict(collections.Counter(n.op_type for n in optimized.graph.node)),
            "float_ops": dict(collections.Counter(n.op_type for n in model.graph.node)),
            "activation_zero_points": zero_points,
            "weight_range": [int(min(w.min() for w in weights)),
                             int(max(w.max() for w in weights))] if weights else None}

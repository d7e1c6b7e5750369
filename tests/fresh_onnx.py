"""ONNX reload functions for the fresh process (see conftest.FreshProcess).

Only NumPy, onnx and onnxruntime are imported here: artifacts are checked the
way a server without Keras, kexport or the model code would load them.
"""

from __future__ import annotations

import numpy as np


def _dims(value_info):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value
            for d in value_info.type.tensor_type.shape.dim]


def inspect_and_run(path, feeds_list):
    """Check ``path`` (full_check), describe it and run every feed dict in turn.

    Returns a dict with the graph's input/output names and dims, opsets,
    producer, metadata, node facts and one list of outputs per feed dict.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path, load_external_data=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = [[np.asarray(o) for o in session.run(None, feeds)] for feeds in feeds_list]
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n.name or n.op_type for n in graph.node if not any(o in used for o in n.output)]
    keys = [(n.op_type, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
            for n in graph.node]
    return {
        "inputs": [(i.name, _dims(i)) for i in graph.input],
        "outputs": [(o.name, _dims(o)) for o in graph.output],
        "session_inputs": [i.name for i in session.get_inputs()],
        "session_outputs": [o.name for o in session.get_outputs()],
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": (model.producer_name, model.producer_version),
        "metadata": {p.key: p.value for p in model.metadata_props},
        "ops": sorted({n.op_type for n in graph.node}),
        "dead_nodes": dead,
        "duplicate_nodes": len(keys) - len(set(keys)),
        "external": [t.name for t in graph.initializer
                     if t.data_location == onnx.TensorProto.EXTERNAL],
        "results": outputs,
    }


def run_many(jobs):
    """``{key: inspect_and_run(path, feeds)}`` for ``jobs = {key: (path, feeds_list)}``."""
    return {key: inspect_and_run(path, feeds) for key, (path, feeds) in jobs.items()}

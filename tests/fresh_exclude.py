"""Fresh-process side of tests/test_quantization_exclude.py: only onnx, no Keras or kexport."""

from __future__ import annotations

import numpy as np


def weight_ops(path):
    """Each weight-carrying node of the ONNX graph at ``path`` (in graph order):
    its operator and where its inputs come from (``"initializer <dtype>"``,
    ``"DequantizeLinear <dtype>"`` of an initializer, another operator, or a
    graph input), keyed by the weight's dims; and the graph's metadata."""
    import onnx

    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    dtype = onnx.helper.tensor_dtype_to_np_dtype

    def source(name):
        if name in inits:
            return f"initializer {np.dtype(dtype(inits[name].data_type)).name}", \
                tuple(sorted(inits[name].dims))
        node = producers.get(name)
        if node is None:
            return "graph input", None
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            t = inits[node.input[0]]
            return f"DequantizeLinear {np.dtype(dtype(t.data_type)).name}", tuple(sorted(t.dims))
        if node.op_type == "Cast" and node.input[0] in inits:  # float16 -> float32
            t = inits[node.input[0]]
            return f"Cast {np.dtype(dtype(t.data_type)).name}", tuple(sorted(t.dims))
        return node.op_type, None

    rows = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "Conv", "ConvInteger"):
            sources = [source(i) for i in node.input[:2]]
            dims = next((d for _, d in sources if d is not None and len(d) == 2), None)
            rows.append({"op": node.op_type, "dims": list(dims) if dims else None,
                         "inputs": [s for s, _ in sources]})
    return {"ops": rows, "metadata": {p.key: p.value for p in model.metadata_props}}

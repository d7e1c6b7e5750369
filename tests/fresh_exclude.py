"""Fresh-process side of tests/test_quantization_exclude.py: only onnx or openvino, no Keras
or kexport."""

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


def ir_weight_ops(xml):
    """Each MatMul / Convolution of the OpenVINO IR at ``xml``: its name, where
    its weights come from (the operations from it back to a Constant, the last
    one ``"Constant <element type>"``), the Constant's dims (sorted) and the
    operation feeding its activation; and the kexport manifest in its rt_info."""
    import json

    import openvino as ov

    model = ov.Core().read_model(xml)
    rows = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        chain, dims, node = [], None, op.input_value(1).get_node()
        while True:
            if node.get_type_name() == "Constant":
                chain.append(f"Constant {node.get_output_element_type(0).get_type_name()}")
                dims = sorted(int(d) for d in node.get_output_shape(0))
                break
            chain.append(node.get_type_name())
            if node.get_input_size() == 0:
                break
            node = node.input_value(0).get_node()
        rows.append({"op": op.get_friendly_name(), "dims": dims, "weights": chain,
                     "activation": op.input_value(0).get_node().get_type_name()})
    manifest = json.loads(model.get_rt_info(["kexport_manifest"]).astype(str))
    return {"ops": rows, "manifest": manifest}

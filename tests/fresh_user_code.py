"""Reload an artifact of any format in a fresh process, as a client would.

Only NumPy and the format's own runtime are imported here (no Keras, no
kexport). Every runner returns the inputs the artifact declares (name, dtype,
shape as the runtime reports it) and, per feed, the outputs by name (``.pt2``:
by position, ``"0"``, ``"1"``, ...).
"""

from __future__ import annotations

import numpy as np


def run(format, path, feeds):
    """``feeds``: a list of ``{input name: array}`` -> ``{"inputs": [...], "outputs": [...]}``."""
    return {"tf_saved_model": _saved_model, "onnx": _onnx, "litert": _litert,
            "openvino": _openvino, "torch": _torch}[format](path, feeds)


def _saved_model(path, feeds):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures["serving_default"]
    _, kw = fn.structured_input_signature
    inputs = [(k, s.dtype.name, str(s.shape.as_list())) for k, s in sorted(kw.items())]
    outs = [{k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in f.items()}).items()}
            for f in feeds]
    return {"inputs": inputs, "outputs": outs}


def _onnx(path, feeds):
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type, str(i.shape)) for i in session.get_inputs()]
    names = [o.name for o in session.get_outputs()]
    outs = [dict(zip(names, session.run(None, f), strict=True)) for f in feeds]
    return {"inputs": inputs, "outputs": outs}


def _litert(path, feeds):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    runner = it.get_signature_runner("serve")
    inputs = [(k, np.dtype(d["dtype"]).name, str(d["shape_signature"].tolist()))
              for k, d in sorted(runner.get_input_details().items())]
    outs = [{k: np.asarray(v) for k, v in runner(**f).items()} for f in feeds]
    return {"inputs": inputs, "outputs": outs}


def _openvino(path, feeds):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = [(p.get_any_name(), p.get_element_type().get_type_name(),
               str(p.get_partial_shape())) for p in compiled.inputs]
    outs = []
    for f in feeds:
        r = compiled(f)
        outs.append({p.get_any_name(): np.asarray(r[p]) for p in compiled.outputs})
    return {"inputs": inputs, "outputs": outs}


def _torch(path, feeds):
    import torch

    program = torch.export.load(path)
    module = program.module()
    names = [s.arg.name for s in program.graph_signature.input_specs
             if s.kind.name == "USER_INPUT"]
    inputs = [(n, "", "") for n in names]
    outs = []
    with torch.no_grad():
        for f in feeds:
            y = module(*[torch.from_numpy(np.asarray(v)) for v in f.values()])
            ys = list(y) if isinstance(y, (list, tuple)) else [y]
            outs.append({str(i): t.numpy() for i, t in enumerate(ys)})
    return {"inputs": inputs, "outputs": outs}

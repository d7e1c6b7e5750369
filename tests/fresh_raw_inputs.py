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


def openvino_run(path, feeds):
    """Compile an IR with ``openvino.Core`` (openvino-tokenizers imported: it registers
    the string operations) and run it on ``{name: array}`` (strings as unicode arrays);
    outputs by name, and the IR's input element types."""
    import openvino as ov
    import openvino_tokenizers  # noqa: F401

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({k: np.asarray(v).astype(str) if np.asarray(v).dtype.kind in "OUS"
                       else np.asarray(v) for k, v in feeds.items()})
    return ({o.get_any_name(): result[o] for o in compiled.outputs},
            [i.get_element_type().get_type_name() for i in compiled.inputs])


def load_without(package, path):
    """``kexport.load(path)`` where ``package`` cannot be imported: the error it raises."""
    import sys

    sys.modules[package] = None  # an import of it raises ImportError
    import kexport

    try:
        kexport.load(path)
    except Exception as e:
        return type(e).__name__, str(e)
    return None, None


def litert_run(path, feeds):
    """Run a ``.tflite`` file's ``serve`` signature with ai-edge-litert's interpreter
    (strings as object arrays of UTF-8 bytes); outputs by name, input dtypes."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("serve")
    out = runner(**{k: np.array([s.encode() for s in np.ravel(v)], dtype=object).reshape(
        np.shape(v)) if np.asarray(v).dtype.kind in "OU" else np.asarray(v)
        for k, v in feeds.items()})
    return out, {k: np.dtype(d["dtype"]).kind for k, d in runner.get_input_details().items()}


def litert_text_run(path, feeds):
    """Run a ``.tflite`` file holding TF Text ops with ai-edge-litert's
    ``InterpreterWithCustomOps`` and TF Text's registrar (strings as UTF-8 bytes)."""
    import tensorflow_text as tf_text
    from ai_edge_litert.interpreter import InterpreterWithCustomOps

    runner = InterpreterWithCustomOps(
        model_path=path, custom_op_registerers=tf_text.tflite_registrar.SELECT_TFTEXT_OPS
    ).get_signature_runner("serve")
    return runner(**{k: np.array([s.encode() for s in np.ravel(v)], dtype=object).reshape(
        np.shape(v)) for k, v in feeds.items()})

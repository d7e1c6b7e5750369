"""Run artifacts of Keras-quantized models in a fresh process (see conftest.FreshProcess).

Only NumPy and each format's own runtime are imported (no Keras, no kexport).
"""

from __future__ import annotations

import glob
import os

import numpy as np


def run(jobs):
    """``jobs``: ``[(format, path, ids)]`` -> the one output of each artifact on ``ids``."""
    results = []
    for fmt, path, ids in jobs:
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            out = session.run(None, {session.get_inputs()[0].name: ids})[0]
        elif fmt == "tf_saved_model":
            import tensorflow as tf

            loaded = tf.saved_model.load(path)  # kept alive while it runs
            out = loaded.serve(tf.constant(ids)).numpy()
        elif fmt == "openvino":
            import openvino as ov

            xml = glob.glob(os.path.join(path, "*.xml"))[0]
            compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            out = compiled(ids)[compiled.outputs[0]]
        elif fmt == "torch":
            import torch

            module = torch.export.load(path).module()
            with torch.no_grad():
                out = module(torch.from_numpy(ids))
            out = out[0] if isinstance(out, (list, tuple)) else out
            out = out.numpy()
        else:
            raise ValueError(fmt)
        results.append(np.asarray(out))
    return results

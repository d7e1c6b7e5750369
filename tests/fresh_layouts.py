"""Functions run in the fresh reload process for tests/test_layouts.py.

Nothing here imports Keras or kexport: a layout is read as its serving system
would, with TensorFlow, tensorflow-serving-api's protos and ONNX Runtime only.
"""

from __future__ import annotations

import numpy as np


def saved_model_signatures(path, inputs):
    """Load ``path`` with tf.saved_model.load; call every signature on ``inputs``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    out = {}
    for key, fn in loaded.signatures.items():
        result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        out[key] = {k: v.numpy() for k, v in result.items()}
    return out


def warmup_records(path):
    """Parse a TF-Serving warm-up file: one entry per record.

    Returns ``(model name, signature, {input: (dtype, shape)})`` per record,
    and the signatures of the SavedModel beside it with their input specs.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = []
    for raw in tf.data.TFRecordDataset(f"{path}/assets.extra/tf_serving_warmup_requests"):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        request = log.predict_log.request
        inputs = {k: (tf.make_ndarray(v).dtype.name, list(tf.make_ndarray(v).shape))
                  for k, v in request.inputs.items()}
        records.append((request.model_spec.name, request.model_spec.signature_name, inputs))
    loaded = tf.saved_model.load(path)
    signatures = {}
    for key, fn in loaded.signatures.items():
        _, kw = fn.structured_input_signature
        signatures[key] = {k: (s.dtype.name, s.shape.as_list()) for k, s in kw.items()}
    return records, signatures


def onnxruntime_run(path, feeds):
    """Run an ONNX file with ONNX Runtime; outputs by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in feeds.items()}),
                    strict=True))

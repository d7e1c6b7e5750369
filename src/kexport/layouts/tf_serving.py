"""The TF-Serving layout: ``<repo>/<name>/<VERSION>/`` holding the SavedModel.

The version folder is a copy of the kexport SavedModel (signatures, variables,
assets and kexport's own files in ``assets.extra/`` kept) plus
``assets.extra/tf_serving_warmup_requests``: one ``PredictionLog`` record per
serving signature, a ``PredictRequest`` whose inputs are sample tensors from
kexport's sample generator (:func:`kexport.check.samples.sample_inputs`) with
every dynamic dimension at size 1. TF-Serving runs these records when it loads
the version, so the first real request does not pay for graph compilation.
Signatures whose inputs cannot be generated (strings) get no record.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kexport.artifact import SERVING_DEFAULT
from kexport.check.samples import recorded_policy, sample_inputs
from kexport.errors import SignatureError
from kexport.layouts._place import choose_version, new_version
from kexport.layouts._repo import Layout
from kexport.runtime import Artifact, EndpointInfo, TensorInfo

__all__ = ["WARMUP_FILE", "serving_signatures", "warmup_requests", "write"]

#: Where TF-Serving looks for warm-up records, inside a version folder.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def serving_signatures(saved_model: Path) -> list[str]:
    """The signature keys of the ``serve`` MetaGraph of ``saved_model.pb``, sorted."""
    from tensorflow.core.protobuf import saved_model_pb2  # heavy: TensorFlow protos

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((saved_model / "saved_model.pb").read_bytes())
    keys: set[str] = set()
    for graph in proto.meta_graphs:
        if "serve" in graph.meta_info_def.tags:
            keys.update(k for k in graph.signature_def if not k.startswith("__"))
    return sorted(keys)


def _endpoint_of(artifact: Artifact, key: str) -> EndpointInfo | None:
    if key in artifact.endpoints:
        return artifact.endpoints[key]
    if key == SERVING_DEFAULT:  # an alias of the default endpoint
        return artifact.endpoints.get(artifact.default_endpoint)
    return None


def warmup_requests(artifact: Artifact, saved_model: Path, name: str) -> list[Any]:
    """One ``PredictionLog`` per serving signature whose inputs can be generated."""
    import tensorflow as tf  # heavy
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2  # heavy

    policy = recorded_policy(artifact.metadata)
    logs = []
    for key in serving_signatures(saved_model):
        info = _endpoint_of(artifact, key)
        if info is None:
            continue
        specs = [TensorInfo(t.name, tuple(1 if d is None else d for d in t.shape), t.dtype)
                 for t in info.inputs]
        try:
            arrays = sample_inputs(specs, 1, 0, endpoint=info.name, policy=policy)
        except SignatureError:
            continue  # e.g. string inputs: no made-up warm-up request
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = key
        for spec, array in zip(specs, arrays, strict=True):
            request.inputs[spec.name].CopyFrom(tf.make_tensor_proto(array))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_version(artifact: Artifact, source: Path, into: Path, name: str) -> None:
    """Fill the (empty) folder ``into`` with the SavedModel and its warm-up records."""
    import tensorflow as tf  # heavy

    shutil.copytree(source, into, dirs_exist_ok=True)
    logs = warmup_requests(artifact, source, name)
    if logs:
        (into / WARMUP_FILE).parent.mkdir(exist_ok=True)
        with tf.io.TFRecordWriter(os.fspath(into / WARMUP_FILE)) as writer:
            for log in logs:
                writer.write(log.SerializeToString())


def write(artifact: Artifact, source: Path, repo: Path, name: str,
          version: int | None) -> list[Layout]:
    """Write ``<repo>/<name>/<version>/`` (see the module doc)."""
    model_dir = repo / name
    chosen = choose_version([model_dir], version)
    with new_version(model_dir, chosen, [model_dir]) as tmp:
        write_version(artifact, source, tmp, name)
    return [Layout(name, chosen, os.fspath(model_dir / str(chosen)), "tf_saved_model")]

"""One default-endpoint rule for every archive format kexport writes.

``serving_default`` if an endpoint has that name, else the first endpoint
added: SavedModel and ONNX always did this; LiteRT, OpenVINO and ``.pt2``
manifests now record it and ``kexport.load`` follows it (their manifests are
written with sorted keys, so the order was lost and ``serve`` was guessed).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.artifact import manifest_default_endpoint

SPEC = [keras.InputSpec(shape=(None, 4), dtype="float32", name="x")]


def _archive():
    i = keras.Input((4,), name="x")
    model = keras.Model(i, keras.layers.Dense(2, name="y")(i))
    doubled = keras.Model(i, keras.layers.Rescaling(2.0, name="y2")(model(i)))
    archive = kexport.ExportArchive()
    archive.track(doubled)
    archive.track(model)
    # model methods / plain forwarding lambdas: every backend can carry them
    archive.add_endpoint("predict", lambda x: doubled(x, training=False), SPEC)
    archive.add_endpoint("serve", lambda x: model(x, training=False), SPEC)
    return archive, model


def _written_default_runs_predict(archive, model, path, fmt):
    archive.write_out(path, format=fmt, verbose=False)
    artifact = kexport.load(path)
    assert artifact.default_endpoint == "predict"
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    out = artifact(x)  # the default endpoint: "predict" doubles the model's output
    got = next(iter(out.values())) if isinstance(out, dict) else out
    np.testing.assert_allclose(got, 2.0 * keras.ops.convert_to_numpy(model(x)), atol=1e-5)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("fmt, name", [("litert", "a.tflite"), ("openvino", "ir"),
                                       ("onnx", "graphs")])
def test_first_added_endpoint_is_the_default_in_every_format(fmt, name, tmp_path):
    archive, model = _archive()
    assert archive.default_endpoint == "predict"
    _written_default_runs_predict(archive, model, tmp_path / name, fmt)


def test_recorded_default_wins_older_manifests_keep_their_rule():
    endpoints = {"encode": 1, "predict": 2, "serve": 3}
    assert manifest_default_endpoint({"default_endpoint": "predict"}, endpoints) == "predict"
    # older manifests: no record, sorted keys -> "serve", else the first listed
    assert manifest_default_endpoint({"endpoints": {"encode": {}, "serve": {}}}, endpoints) \
        == "serve"
    assert manifest_default_endpoint({"endpoints": {"encode": {}}}, {"encode": 1}) == "encode"
    # a record naming no endpoint here is ignored
    assert manifest_default_endpoint({"default_endpoint": "gone"}, {"serve": 1}) == "serve"


@pytest.mark.backends("torch")
def test_first_added_endpoint_is_the_default_of_pt2_archives(tmp_path):
    archive, model = _archive()
    _written_default_runs_predict(archive, model, tmp_path / "programs", "torch")

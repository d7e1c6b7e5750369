"""ONNX options and guarantees: opset, external data, archives, errors."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from kexport.errors import SignatureError, UnsupportedRouteError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = onnx_models.mlp()
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    return model, x, ref, tmp_path_factory.mktemp("onnx_features")


def test_opset_external_data_and_no_paths(small, fresh_process):
    model, x, ref, root = small
    path = root / "mlp17.onnx"
    ext = root / "mlp_ext.onnx"
    kexport.export_onnx(model, path, verbose=False, opset_version=17)
    kexport.export_onnx(model, ext, verbose=False, external_data_threshold=0)
    got = fresh_process("fresh_onnx:run_many", {
        "plain": (str(path), [{"features": x}]),
        "ext": (str(ext), [{"features": x}]),
    })
    assert got["plain"]["opset"]["ai.onnx"] == 17
    assert got["plain"]["external"] == []
    assert not (root / "mlp17.onnx.data").exists()
    # external data: one data file beside the graph, referenced by bare name
    assert (root / "mlp_ext.onnx.data").is_file()
    assert got["ext"]["external"]
    for key in ("plain", "ext"):
        np.testing.assert_allclose(got[key]["results"][0][0], ref, rtol=1e-5, atol=1e-6)
    for f in (path, ext, root / "mlp_ext.onnx.data"):
        data = f.read_bytes()
        for needle in (str(root), os.getcwd(), os.path.expanduser("~")):
            assert needle.encode() not in data


def test_bad_options_are_typed_errors(small):
    model, _, _, root = small
    with pytest.raises(SignatureError, match=r"Expected `opset_version` to be an int from 13 .*Received: opset_version=7"):
        kexport.export_onnx(model, root / "bad.onnx", opset_version=7)
    with pytest.raises(SignatureError, match=r"Unexpected keyword arguments .*\['bogus'\]"):
        kexport.export_onnx(model, root / "bad.onnx", bogus=1)
    with pytest.raises(SignatureError, match="external_data_threshold"):
        kexport.export_onnx(model, root / "bad.onnx", external_data_threshold=-1)
    with pytest.raises(SignatureError, match="Expected `input_signature` to match"):
        kexport.export_onnx(model, root / "bad.onnx",
                            input_signature=[keras.InputSpec(shape=(None, 8)),
                                             keras.InputSpec(shape=(None, 2))])
    assert not (root / "bad.onnx").exists()


def test_lookup_layer_is_refused_by_name(small):
    _, _, _, root = small
    i = keras.Input((1,), dtype="string", name="word")
    # Hashing (FarmHash) has no exact ONNX form on any backend; StringLookup is lowered on
    # TensorFlow (tests/test_raw_inputs.py)
    ids = keras.layers.Hashing(num_bins=4, name="vocab")(i)
    model = keras.Model(i, keras.layers.Embedding(4, 2)(ids))
    with pytest.raises(UnsupportedRouteError, match=r"Keras layer 'vocab' \(Hashing\) cannot be exported to ONNX.*Next steps"):
        kexport.export_onnx(model, root / "lookup.onnx")
    assert not (root / "lookup.onnx").exists()


def test_verbose_summary(small, capsys):
    model, _, _, root = small
    kexport.export_onnx(model, root / "v.onnx", verbose=True)
    out = capsys.readouterr().out
    assert "onnx" in out and "input  features: float32(None, 8)" in out
    assert "output probs" in out


def test_export_model_format_onnx(small, fresh_process):
    model, x, ref, root = small
    kexport.export_model(model, root / "via_export_model", format="onnx", verbose=False)
    got = fresh_process("fresh_onnx:run_many",
                        {"m": (str(root / "via_export_model"), [{"features": x}])})
    np.testing.assert_allclose(got["m"]["results"][0][0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.backends("tensorflow")
def test_archive_writes_shared_weights_once(small, fresh_process):
    model, x, ref, root = small
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda t: model(t, training=False),
                         [keras.InputSpec(shape=(None, 8), dtype="float32", name="features")])
    archive.add_endpoint("logits", lambda t: model.layers[-1](model.layers[1](t)),
                         [keras.InputSpec(shape=(None, 8), dtype="float32", name="features")])
    out = root / "archive"
    archive.write_out(out, format="onnx", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "logits.onnx", "manifest.json", "serve.onnx", "weights.data"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["endpoints"]["serve"]["file"] == "serve.onnx"
    assert manifest["weights"] == "weights.data"
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    big = sum(int(np.prod(v.shape)) * 4 for v in model.weights if np.prod(v.shape) * 4 >= 1024)
    size = (out / "weights.data").stat().st_size
    assert big <= size < weight_bytes + 1024  # stored once, not once per endpoint
    got = fresh_process("fresh_onnx:run_many", {
        "serve": (str(out / "serve.onnx"), [{"features": x}]),
        "logits": (str(out / "logits.onnx"), [{"features": x}]),
    })
    np.testing.assert_allclose(got["serve"]["results"][0][0], ref, rtol=1e-5, atol=1e-6)
    live = keras.ops.convert_to_numpy(model.layers[-1](model.layers[1](x)))
    np.testing.assert_allclose(got["logits"]["results"][0][0], live, rtol=1e-5, atol=1e-6)
    assert got["serve"]["metadata"]["kexport.endpoint"] == "serve"


@pytest.mark.backends("tensorflow")
def test_tf2onnx_numpy2_large_model_workaround():
    """tf2onnx's large-model path calls np.product (gone in NumPy 2); the compat fixes it."""
    import tensorflow as tf
    import tf2onnx

    from kexport.formats.onnx._tensorflow import convert_function

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(300)])

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
    def fn(x):
        return model(x)

    if not hasattr(np, "product"):
        with pytest.raises(AttributeError, match="product"):
            tf2onnx.convert.from_function(fn, input_signature=fn.input_signature,
                                          opset=18, large_model=True)
    proto = convert_function(fn, 18, large_model=True)
    sizes = sorted(len(t.raw_data) for t in proto.graph.initializer)
    assert sizes[-1] == 4 * 300 * 4  # kernel back inline, ready for kexport's writer
    assert not hasattr(np, "product") or np.__version__ < "2"  # NumPy itself untouched


@pytest.mark.backends("tensorflow")
def test_archive_every_weight_in_one_shared_file(tmp_path, fresh_process):
    """Small weights too: both graphs refer to weights.data, each tensor stored once."""
    import onnx

    keras.utils.set_random_seed(5)
    model = onnx_models.mlp()
    rng = np.random.default_rng(5)
    for v in model.weights:  # non-zero biases, so no weight is folded away
        v.assign(rng.normal(size=v.shape).astype("float32"))
    spec = [keras.InputSpec(shape=(None, 8), dtype="float32", name="features")]
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("logits", lambda t: model.layers[-1](model.layers[1](t)), spec)
    archive.add_endpoint("serve", lambda t: model(t, training=False), spec)
    out = tmp_path / "archive"
    archive.write_out(out, format="onnx", verbose=False)

    raw = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    size = (out / "weights.data").stat().st_size
    assert raw <= size <= raw + 64 * len(model.weights)  # once, not once per endpoint
    for name in ("logits", "serve"):
        assert (out / f"{name}.onnx").stat().st_size < 4096
        graph = onnx.load(str(out / f"{name}.onnx"), load_external_data=False).graph
        floats = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        assert len(floats) == len(model.weights)
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in floats)
        assert {e.value for t in floats for e in t.external_data if e.key == "location"} == {
            "weights.data"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["default_endpoint"] == "logits"  # the first endpoint added
    assert list(manifest["endpoints"]) == ["logits", "serve"]

    x = rng.normal(size=(3, 8)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    live_logits = keras.ops.convert_to_numpy(model.layers[-1](model.layers[1](x)))
    got = fresh_process("fresh_onnx:run_many", {  # onnx.checker full_check + ONNX Runtime
        "serve": (str(out / "serve.onnx"), [{"features": x}]),
        "logits": (str(out / "logits.onnx"), [{"features": x}]),
    })
    np.testing.assert_allclose(got["serve"]["results"][0][0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["logits"]["results"][0][0], live_logits, rtol=1e-5, atol=1e-6)
    loaded = fresh_process("fresh_runtime:load_and_run", str(out),
                           [("serve", {"features": x}), ("logits", {"features": x})])
    assert loaded["default"] == "logits"
    assert loaded["shared_initializers"] == len(model.weights)  # one copy in memory
    np.testing.assert_allclose(loaded["outputs"][0]["probs"], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded["default_out"]["probs"], live_logits, rtol=1e-5, atol=1e-6)


def _two_endpoint_archive(model, hidden=True):
    spec = [keras.InputSpec(shape=(None, 8), dtype="float32", name="features")]
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda t: model(t, training=False), spec)
    if hidden:  # not a plain model call: the TensorFlow backend only
        archive.add_endpoint("hidden", lambda t: model.layers[1](t), spec)
    return archive


@pytest.mark.backends("tensorflow")
def test_archive_write_out_passes_opset_version(small, fresh_process):
    model, x, ref, root = small
    out = root / "archive17"
    _two_endpoint_archive(model).write_out(out, format="onnx", verbose=False, opset_version=17)
    assert json.loads((out / "manifest.json").read_text())["opset"] == 17
    got = fresh_process("fresh_onnx:run_many", {
        "serve": (str(out / "serve.onnx"), [{"features": x}]),
        "hidden": (str(out / "hidden.onnx"), [{"features": x}]),
    })
    assert got["serve"]["opset"]["ai.onnx"] == got["hidden"]["opset"]["ai.onnx"] == 17
    np.testing.assert_allclose(got["serve"]["results"][0][0], ref, rtol=1e-5, atol=1e-6)


def test_archive_write_out_refuses_unknown_format_options(small):
    model, _, _, root = small
    archive = _two_endpoint_archive(model, hidden=False)
    with pytest.raises(SignatureError, match=r"Unexpected keyword arguments for "
                       r"write_out\(format='onnx'\) on the \w+ backend: \['bogus'\]\. Expected only: \['opset_version', "
                       r"'quantization', 'calibration_data', 'quantization_exclude'\]"):
        archive.write_out(root / "bogus", format="onnx", bogus=1)
    with pytest.raises(SignatureError, match=r"format='tf_saved_model'\): \['opset_version'\]\. "
                       r"Expected only: none"):
        archive.write_out(root / "bogus", format="tf_saved_model", opset_version=17)
    assert not (root / "bogus").exists()


@pytest.mark.backends("tensorflow")
def test_archive_write_out_checks_opset_value(small):
    model, _, _, root = small
    with pytest.raises(SignatureError, match=r"Received: opset_version=7"):
        _two_endpoint_archive(model).write_out(root / "bad7", format="onnx", opset_version=7)
    assert not (root / "bad7").exists()


@pytest.mark.backends("torch")  # torch archives are re-hosted at write_out
def test_rehosted_archive_carries_its_format_options_to_the_writer(tmp_path, fresh_process):
    """On PyTorch an ONNX archive is written by re-hosting it onto TensorFlow:
    ``opset_version``, the quantization mode, ``quantization_exclude`` and the
    calibration data (read here against each endpoint, carried as arrays) reach
    the child's writer; the int8 graphs are compared with the live endpoints on
    the calibration batches, by the int8 thresholds."""

    class Scorer(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(32, activation="relu", name="hidden")
            self.scores = keras.layers.Dense(5, activation="softmax", name="scores")

        def call(self, features):
            return self.scores(self.hidden(features))

    keras.utils.set_random_seed(5)
    model = Scorer()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(96, 8)).astype("float32")
    live = keras.ops.convert_to_numpy(model(x))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model, [keras.InputSpec(shape=(None, 8), name="features")])
    out = tmp_path / "archive"
    archive.write_out(out, format="onnx", verbose=False, opset_version=17,
                      quantization="int8", calibration_data=[x[i:i + 32] for i in (0, 32, 64)],
                      quantization_exclude=["scores"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == 17
    record = manifest["quantization"]
    assert record["mode"] == "int8" and record["calibration_samples"] == 96
    assert record["excluded_layers"] == ["scores"]
    got = fresh_process("fresh_onnx:run_many", {"serve": (str(out / "serve.onnx"),
                                                          [{"features": x}])})
    assert got["serve"]["opset"]["ai.onnx"] == 17
    (received,) = got["serve"]["results"][0]
    assert np.mean(np.asarray(received).argmax(-1) == live.argmax(-1)) >= 0.95
    # a re-hosted archive cannot take a SaveOptions (it cannot reach the child)
    import tensorflow as tf

    with pytest.raises(UnsupportedRouteError, match=r"`options` cannot travel to the "
                       r"tensorflow process"):
        archive.write_out(tmp_path / "opts", format="onnx", options=tf.saved_model.SaveOptions())
    assert not (tmp_path / "opts").exists()


@pytest.mark.backends("tensorflow")
def test_grouped_convolution_on_tensorflow(tmp_path, fresh_process):
    """Keras runs grouped convolutions inside a nested XLA-compiled tf.function, which
    TensorFlow never inlines: tf2onnx used to leave a StatefulPartitionedCall node
    (ConvNeXt). The workaround in compat.py makes it a grouped ONNX Conv."""

    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.depthwise = keras.layers.Conv2D(8, 3, padding="same", groups=8)
            self.grouped = keras.layers.Conv2D(8, 1, groups=2)

        def call(self, x):
            return self.grouped(keras.ops.relu(self.depthwise(x)))

    keras.utils.set_random_seed(5)
    model = Block()
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 8)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x))
    path = tmp_path / "grouped.onnx"
    kexport.export_onnx(model, path, verbose=False,
                        input_signature=[keras.InputSpec(shape=(None, 6, 6, 8))])
    got = fresh_process("fresh_onnx:run_many", {"g": (str(path), [{"input_0": x[:1]},
                                                                   {"input_0": x}])})["g"]
    assert "StatefulPartitionedCall" not in got["ops"] and "Conv" in got["ops"]
    np.testing.assert_allclose(got["results"][0][0], ref[:1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["results"][1][0], ref, rtol=1e-4, atol=1e-5)
    # Keras itself is unchanged outside the export: it still compiles the grouped conv
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn
    assert nn.tf is tf

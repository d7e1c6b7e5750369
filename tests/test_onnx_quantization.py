"""ONNX quantization (``quantization=``, issue #16): every mode on a small CNN and a
small Dense classifier, reloaded in a fresh process with ONNX Runtime.

Each artifact must load, be smaller than the float one by the mode's factor,
hold the operators its mode writes, predict the live model's classes, and
record its mode in its metadata, which ``kexport.load`` and ``kexport.verify``
read. Requests kexport cannot honour are typed errors, and nothing is written.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.errors import QuantizationError

MODES = ("dynamic_int8", "int8", "float16")
# the size of each mode's artifact, at most, as a fraction of the float one
SIZE = {"dynamic_int8": 0.35, "int8": 0.35, "float16": 0.6}
# operators that show the mode was applied (one of each group must be present)
OPS = {"dynamic_int8": [{"DynamicQuantizeLinear"}, {"MatMulInteger", "ConvInteger"}],
       "int8": [{"QuantizeLinear"}, {"DequantizeLinear"}],
       "float16": [{"Cast"}]}


def _models(seed=0):
    """A small CNN on an image and a Dense classifier on a dict input, both
    subclassed, without get_config, whose call takes no ``training``."""

    class SmallCNN(keras.Model):
        def __init__(self):
            super().__init__()
            self.c1 = keras.layers.Conv2D(32, 3, activation="relu")
            self.c2 = keras.layers.Conv2D(64, 3, activation="relu")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.d1 = keras.layers.Dense(512, activation="relu")
            self.out = keras.layers.Dense(10, activation="softmax")

        def call(self, images):
            return self.out(self.d1(self.pool(self.c2(self.c1(images)))))

    class DenseClassifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(256, activation="relu")
            self.d2 = keras.layers.Dense(256, activation="relu")
            self.out = keras.layers.Dense(10)

        def call(self, inputs):
            return self.out(self.d2(self.d1(inputs["features"])))

    # Trained briefly on separable synthetic classes (10 templates plus noise),
    # so that classes are decided by margins like a real classifier's; a
    # random-weight model puts every input near one decision boundary.
    keras.utils.set_random_seed(seed)  # built before the per-test seed (module fixture)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 368)
    # each class: its own colour (survives the global pooling) and texture
    templates = 2.0 * rng.random((10, 1, 1, 3)) + rng.random((10, 12, 12, 3))
    all_images = (templates[labels] + 0.5 * rng.random((368, 12, 12, 3))).astype("float32")
    centers = 2.0 * rng.normal(size=(10, 64))
    all_features = (centers[labels] + rng.normal(size=(368, 64))).astype("float32")
    cnn = SmallCNN()
    cnn.compile("adam", "sparse_categorical_crossentropy")
    cnn.fit(all_images[48:], labels[48:], epochs=8, batch_size=32, verbose=0)
    dense = DenseClassifier()
    dense.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dense.fit({"features": all_features[48:]}, labels[48:], epochs=4, batch_size=32, verbose=0)
    images, features = all_images[:48], all_features[:48]  # held out: the checks' inputs
    cal_images, cal_features = all_images[48:96], all_features[48:96]
    return {
        # (model, eval inputs as the model takes them, flat arrays, calibration data)
        # CNN: a generator of (x, y) batches, as a tf.data pipeline yields them
        "cnn": (cnn, images, [images],
                lambda: ((cal_images[i:i + 8], np.zeros(8)) for i in range(0, 48, 8))),
        # Dense: a list of dict batches
        "dense": (dense, {"features": features}, [features],
                  lambda: [{"features": cal_features[i:i + 16]} for i in range(0, 48, 16)]),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model in float and in every mode: name -> mode -> path (and the models)."""
    root = tmp_path_factory.mktemp("quantized")
    models = _models()
    paths: dict[str, dict[str | None, str]] = {}
    for name, (model, _, _, calibration) in models.items():
        paths[name] = {}
        for mode in (None, *MODES):
            path = str(root / f"{name}-{mode or 'float'}.onnx")
            data = calibration() if mode == "int8" else None
            kexport.export_onnx(model, path, verbose=False, quantization=mode,
                                calibration_data=data)
            paths[name][mode] = path
    return models, paths


@pytest.mark.parametrize("name", ["cnn", "dense"])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_artifact_in_a_fresh_process(exported, fresh_process, name, mode):
    models, paths = exported
    model, x, flat, _ = models[name]
    q = fresh_process("fresh_quant:describe_and_run", paths[name][mode], flat)
    f = fresh_process("fresh_quant:describe_and_run", paths[name][None], flat)
    # smaller by the mode's factor
    assert q["size"] <= SIZE[mode] * f["size"], (q["size"], f["size"])
    # the operators and dtypes of the mode; inputs and outputs stay float32
    for group in OPS[mode]:
        assert group & set(q["ops"]), (mode, q["ops"])
    assert q["io_dtypes"] == ["float32"]
    if mode == "float16":
        assert "float16" in q["initializer_dtypes"] and "float32" not in q["initializer_dtypes"]
    elif mode == "dynamic_int8":
        # unsigned weights: U8U8 does not saturate on CPUs without VNNI (_quantize._dynamic)
        assert "uint8" in q["initializer_dtypes"] and "int8" not in q["initializer_dtypes"]
    else:
        assert "int8" in q["initializer_dtypes"]
    # the float artifact has none of it
    assert not {"QuantizeLinear", "DynamicQuantizeLinear"} & set(f["ops"])
    assert "kexport.quantization" not in f["metadata"]
    # it predicts what the live model predicts
    live = keras.ops.convert_to_numpy(model(x))
    (out,) = q["outputs"]
    assert len(set(live.argmax(-1))) >= 5  # the inputs span the classes
    agree = float(np.mean(out.argmax(-1) == live.argmax(-1)))
    assert agree >= 0.9, agree
    assert np.abs(out - live).max() > 0, "a quantized artifact computes exactly like float?"
    # the metadata records the mode, the calibration size and the toolchain
    record = json.loads(q["metadata"]["kexport.quantization"])
    assert record["mode"] == mode
    assert record["precision"] == {"float16": "float16"}.get(mode, "int8")
    assert record["calibration_samples"] == (48 if mode == "int8" else None)
    assert set(record["toolchain"]) == {"onnx", "onnxruntime"}
    assert q["metadata"]["kexport.backend"] == BACKEND


def test_int8_convolutions_run_in_onnx_runtimes_int8_kernels(exported, fresh_process):
    """Static int8 is written as U8S8 (unsigned activations, signed weights in
    the reduced 7-bit range): the pair ONNX Runtime's CPU provider fuses into
    ``QLinearConv``. With int8 activations (S8S8) its graph optimiser left
    convolutions as DequantizeLinear -> float Conv -> QuantizeLinear, and the
    artifact ran slower than float; 7-bit weights cannot saturate the
    ``VPMADDUBSW`` path of CPUs without VNNI."""
    _, paths = exported
    got = fresh_process("fresh_quant:runtime_kernels", paths["cnn"]["int8"])
    assert got["activation_zero_points"] == ["uint8"]
    low, high = got["weight_range"]
    # symmetric 7-bit weights: |w| <= 64, where full range reaches 127
    assert low < 0 < high and max(-low, high) == 64, got["weight_range"]
    # every convolution runs as an int8 kernel, none in float between Q/DQ pairs
    assert got["ops"].get("QLinearConv") == 2, got["ops"]
    assert "Conv" not in got["ops"], got["ops"]
    assert got["float_ops"].get("Conv") == 2


@pytest.mark.parametrize("mode", MODES)
def test_load_and_verify_know_the_artifact_is_quantized(exported, mode):
    models, paths = exported
    model = models["dense"][0]
    artifact = kexport.load(paths["dense"][mode])
    precision = {"float16": "float16"}.get(mode, "int8")
    assert artifact.metadata["quantization"] == mode
    assert artifact.metadata["precision"] == precision
    assert artifact.metadata["kexport.quantization"]["mode"] == mode
    report = kexport.verify(model, paths["dense"][mode], store=False)
    # the tolerance row of the artifact's precision, not float32's
    assert report.precision == precision
    assert (report.atol, report.rtol) == kexport.check.tolerance.TOLERANCES[precision]
    assert kexport.load(paths["dense"][None]).metadata.get("quantization") is None


def _dense():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(x)

    model = Classifier()
    model(np.zeros((1, 8), "float32"))
    return model


@pytest.mark.parametrize("kwargs, message", [
    ({"quantization": "int4"},
     r"Expected `quantization` to be one of \['float16', 'bfloat16', 'dynamic_int8', 'int8'\] "
     r"\(or None\)\. Received: quantization='int4'"),
    ({"quantization": "bfloat16"},
     r"Expected a quantization mode format='onnx' can write: \['float16', 'dynamic_int8', "
     r"'int8'\]\. Received: quantization='bfloat16'\. kexport never writes a float artifact"),
    ({"quantization": "int8"},
     r"Expected `calibration_data` .* with quantization='int8'\. Received: "
     r"calibration_data=None"),
    ({"quantization": "dynamic_int8", "calibration_data": [np.zeros((2, 8), "float32")]},
     r"`calibration_data` is only used with quantization='int8'\. Received: "
     r"quantization='dynamic_int8'"),
    ({"quantization": "int8", "calibration_data": [np.zeros((2, 5), "float32")] * 2},
     r"Expected every batch of `calibration_data` to fit the model's inputs; batch 1 "
     r"does not: .*8"),
    ({"quantization": "int8", "calibration_data": []},
     r"Expected `calibration_data` to hold at least one batch"),
])
def test_requests_that_cannot_be_honoured_are_typed_errors(tmp_path, kwargs, message):
    path = tmp_path / "m.onnx"
    with pytest.raises(QuantizationError, match=message) as info:
        kexport.export_onnx(_dense(), path, verbose=False, **kwargs)
    assert isinstance(info.value, ValueError)
    assert not os.listdir(tmp_path)


def test_a_format_that_does_not_quantize_names_those_that_do(tmp_path):
    path = tmp_path / "m"
    format = "torch" if BACKEND == "torch" else "tf_saved_model"
    with pytest.raises(QuantizationError, match=(
            rf"Expected a quantization mode format='{format}' can write: none \(this format "
            r"does not quantize\)\. Received: quantization='int8'\. .*Formats that write "
            r"quantization='int8': \['litert', 'openvino', 'onnx'\]")):
        kexport.export_model(_dense(), path, format=format, quantization="int8",
                             calibration_data=[np.zeros((2, 8), "float32")])
    assert not os.listdir(tmp_path)
    # no quantization asked: the option is no error on any format
    kexport.export_model(_dense(), path, format=format, verbose=False, quantization=None)
    assert os.listdir(tmp_path)


@pytest.mark.backends("tensorflow")
def test_tf_data_dataset_calibrates_and_archive_write_out_quantizes(tmp_path, fresh_process):
    import tensorflow as tf

    model = _models()["dense"][0]
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 64)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(
        ({"features": features}, np.zeros(40))).batch(10)
    path = str(tmp_path / "ds.onnx")
    kexport.export_onnx(model, path, verbose=False, quantization="int8", calibration_data=data)
    q = fresh_process("fresh_quant:describe_and_run", path, [features])
    assert json.loads(q["metadata"]["kexport.quantization"])["calibration_samples"] == 40
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(q["ops"])

    archive = kexport.ExportArchive()
    archive.track(model)
    spec = {"features": keras.InputSpec(shape=(None, 64), name="features")}
    archive.add_endpoint("serve", lambda inputs: model(inputs), [spec])
    folder = tmp_path / "archive"
    with pytest.raises(QuantizationError, match="format='onnx' can write"):
        archive.write_out(folder, format="onnx", verbose=False, quantization="bfloat16")
    assert not folder.exists()
    archive.write_out(folder, format="onnx", verbose=False, quantization="dynamic_int8")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "dynamic_int8"
    artifact = kexport.load(folder)
    assert artifact.metadata["quantization"] == "dynamic_int8"
    assert artifact.metadata["precision"] == "int8"
    live = keras.ops.convert_to_numpy(model({"features": features}))
    (out,) = artifact(features).values()
    assert np.mean(np.asarray(out).argmax(-1) == live.argmax(-1)) >= 0.9


@pytest.mark.backends("jax", "torch")
@pytest.mark.parametrize("mode", ["dynamic_int8", "int8"])
def test_rehost_route_quantizes_in_the_child(tmp_path, fresh_process, mode):
    """A recurrent model is re-hosted on TensorFlow: the mode and the calibration
    batches travel to the child, which quantizes; the parent checks the result
    at the mode's tolerance on calibration batches before placing it."""

    class Tagger(keras.Model):
        def __init__(self):
            super().__init__()
            self.rnn = keras.layers.LSTM(32)
            self.d = keras.layers.Dense(128, activation="relu")
            self.out = keras.layers.Dense(5)

        def call(self, seq):
            return self.out(self.d(self.rnn(seq)))

    rng = np.random.default_rng(5)
    seq = rng.normal(size=(24, 7, 6)).astype("float32")
    model = Tagger()
    model(seq[:2])
    path = str(tmp_path / "rnn.onnx")
    data = [seq[i:i + 8] for i in range(0, 24, 8)] if mode == "int8" else None
    kexport.export_onnx(model, path, verbose=False, quantization=mode, calibration_data=data)
    q = fresh_process("fresh_quant:describe_and_run", path, [seq])
    record = json.loads(q["metadata"]["kexport.quantization"])
    assert record["mode"] == mode
    assert record["calibration_samples"] == (24 if mode == "int8" else None)
    assert q["metadata"]["kexport.route"].startswith("re-host on tensorflow")
    assert q["io_dtypes"] == ["float32"] and "int8" in q["initializer_dtypes"]
    live = keras.ops.convert_to_numpy(model(seq))
    (out,) = q["outputs"]
    assert np.mean(out.argmax(-1) == live.argmax(-1)) >= 0.9


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("mode", MODES)
def test_large_model_path_with_external_data(tmp_path, fresh_process, monkeypatch, mode):
    """Graphs too large to serialize inline are quantized from a temporary copy
    with external data (the limit is lowered here to take that path) and
    written with their weights in ``<file>.data``."""
    from kexport.formats.onnx import _quantize

    monkeypatch.setattr(_quantize, "INLINE_LIMIT", 1024)
    model, x, flat, calibration = _models()["dense"]
    path = str(tmp_path / "big.onnx")
    kexport.export_onnx(model, path, verbose=False, quantization=mode,
                        calibration_data=calibration() if mode == "int8" else None,
                        external_data_threshold=1024)
    assert os.path.isfile(path + ".data")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    q = fresh_process("fresh_quant:describe_and_run", path, flat)
    assert json.loads(q["metadata"]["kexport.quantization"])["mode"] == mode
    live = keras.ops.convert_to_numpy(model(x))
    assert np.mean(q["outputs"][0].argmax(-1) == live.argmax(-1)) >= 0.9


@pytest.mark.backends("tensorflow")
def test_quantizing_writes_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference gives up on attention over a dynamic
    sequence and dumps ``sym_shape_infer_temp.onnx`` (and uuid-named ``.data``
    files) into the current working directory; kexport's pre-processing keeps
    them in its own temporary folder."""
    from kexport.formats.onnx import compat

    class Attention(keras.Model):
        def __init__(self):
            super().__init__()
            self.attention = keras.layers.MultiHeadAttention(2, 16)
            self.out = keras.layers.Dense(3)

        def call(self, tokens):
            return self.out(self.attention(tokens, tokens))

    model = Attention()
    tokens = np.random.default_rng(0).normal(size=(4, 6, 16)).astype("float32")
    model(tokens)
    dumps = []
    original = compat.ort_quantization._OnnxSavingRelativeInto._save_model

    def seen(self, proto, f, *args, **kwargs):
        dumps.append(str(f))
        return original(self, proto, f, *args, **kwargs)

    monkeypatch.setattr(compat.ort_quantization._OnnxSavingRelativeInto, "_save_model", seen)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = tmp_path / "out" / "attention.onnx"
    path.parent.mkdir()
    kexport.export_onnx(model, path, verbose=False, quantization="int8",
                        input_signature=[keras.InputSpec(shape=(None, None, 16))],
                        calibration_data=[tokens[:2], tokens[2:]])
    assert sorted(os.listdir(cwd)) == []
    assert sorted(os.listdir(path.parent)) == ["attention.onnx"]
    # the model really made the shape inference dump its graph (into the private folder)
    assert dumps == ["sym_shape_infer_temp.onnx"]

"""OpenVINO quantization (``quantization=``, issue #16): every mode on a small
conv/dense classifier, the IR reloaded in a fresh process with the openvino
runtime alone.

Each IR must hold its mode's weight constants (f16, u8 or i8: counted by
element type over the IR's Constant operations; the float IR fails the same
check), be smaller than the float IR, keep f32 inputs and outputs, predict the
live model's classes, and record its mode in the manifest, which
``kexport.load`` reads and ``kexport.verify`` judges by the mode's thresholds
(SQNR, cosine, top-1). Requests OpenVINO cannot honour are typed errors, and
nothing is written.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.check.tolerance import QUANTIZED
from kexport.errors import QuantizationError

MODES = ("float16", "dynamic_int8", "int8")
# the size of each mode's .bin, at most, as a fraction of the float one
SIZE = {"float16": 0.55, "dynamic_int8": 0.35, "int8": 0.35}
# the element type of the mode's weight constants
WEIGHTS = {"float16": "f16", "dynamic_int8": "u8", "int8": "i8"}


def _classifier(seed=0):
    """A small subclassed conv/dense classifier (no get_config, no ``training``
    argument), trained briefly on separable synthetic classes so that its
    classes are decided by margins; held-out images and calibration batches."""

    class SmallCNN(keras.Model):
        def __init__(self):
            super().__init__()
            self.c1 = keras.layers.Conv2D(16, 3, activation="relu")
            self.c2 = keras.layers.Conv2D(32, 3, activation="relu")
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.d1 = keras.layers.Dense(256, activation="relu")
            self.out = keras.layers.Dense(10)

        def call(self, images):
            return self.out(self.d1(self.pool(self.c2(self.c1(images)))))

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 368)
    templates = 2.0 * rng.random((10, 1, 1, 3)) + rng.random((10, 12, 12, 3))
    images = (templates[labels] + 0.5 * rng.random((368, 12, 12, 3))).astype("float32")
    model = SmallCNN()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[48:], labels[48:], epochs=5, batch_size=32, verbose=0)
    # held out: the checks' inputs; calibration: (x, y) batches as a data pipeline yields
    calibration = [(images[i:i + 8], labels[i:i + 8]) for i in range(48, 96, 8)]
    return model, images[:48], calibration


def _check_mode(described, mode, float_bytes):
    """The IR holds the mode's weights: most of its constant bytes are of the mode's
    element type, and at most a tenth of the float IR's f32 bytes are left in f32
    (biases, int8 quantization ranges; no weight matrix). A float IR fails this."""
    weights = described["constant_bytes"]
    assert weights.get(WEIGHTS[mode], 0) > 0.5 * sum(weights.values()), (mode, weights)
    assert weights.get("f32", 0) <= 0.1 * float_bytes, (mode, weights, float_bytes)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The classifier in float and in every mode: mode -> .xml path."""
    root = tmp_path_factory.mktemp("ov-quantized")
    model, images, calibration = _classifier()
    paths = {}
    for mode in (None, *MODES):
        path = str(root / f"cnn-{mode or 'float'}.xml")
        kexport.export_openvino(model, path, verbose=False, quantization=mode,
                                calibration_data=calibration if mode == "int8" else None)
        paths[mode] = path
    return model, images, paths


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("mode", MODES)
def test_quantized_ir_in_a_fresh_process(exported, fresh_process, mode):
    model, images, paths = exported
    q = fresh_process("fresh_openvino_quant:describe_and_run", paths[mode], [images])
    f = fresh_process("fresh_openvino_quant:describe_and_run", paths[None], [images])
    # the mode's weight constants; the float IR passed as quantized fails the check
    _check_mode(q, mode, f["constant_bytes"]["f32"])
    with pytest.raises(AssertionError):
        _check_mode(f, mode, f["constant_bytes"]["f32"])
    assert q["size"] <= SIZE[mode] * f["size"], (q["size"], f["size"])
    assert q["io_types"] == ["f32"]
    # it predicts what the live model predicts, and is not the float IR
    live = keras.ops.convert_to_numpy(model(images))
    (out,) = q["outputs"]
    assert len(set(live.argmax(-1))) >= 5  # the inputs span the classes
    assert np.mean(out.argmax(-1) == live.argmax(-1)) >= 0.9
    assert np.abs(out - live).max() > 1e-4, "a quantized IR computes exactly like float?"
    # the manifest records the mode, the calibration size and the toolchain
    record = q["manifest"]["quantization"]
    assert record["mode"] == mode
    assert record["precision"] == {"float16": "float16"}.get(mode, "int8")
    assert record["calibration_samples"] == (48 if mode == "int8" else None)
    assert set(record["toolchain"]) == {"nncf", "openvino"}
    assert "quantization" not in f["manifest"]


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("mode", MODES)
def test_load_and_verify_judge_the_ir_by_its_mode(exported, mode):
    model, images, paths = exported
    artifact = kexport.load(paths[mode])
    precision = {"float16": "float16"}.get(mode, "int8")
    assert artifact.metadata["quantization"] == mode
    assert artifact.metadata["precision"] == precision
    assert artifact.metadata["kexport.quantization"]["mode"] == mode
    assert artifact.precision == "float32"  # compiled with INFERENCE_PRECISION_HINT f32
    report = kexport.verify(model, paths[mode], data=images, store=False)
    assert report.ok, report.summary()
    # the mode's thresholds (SQNR, cosine, top-1), not float32's allclose
    assert report.quantization == mode and report.thresholds == QUANTIZED[mode]
    (row,) = [r for r in report.summary() if r.get("sqnr_db") is not None]
    assert row["sqnr_db"] >= QUANTIZED[mode].sqnr_db and row["top1"] >= QUANTIZED[mode].top1
    assert kexport.load(paths[None]).metadata.get("quantization") is None


def _dense_classifier():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = keras.layers.Dense(128, activation="relu")
            self.out = keras.layers.Dense(6)

        def call(self, inputs):
            return self.out(self.d1(inputs["features"]))

    model = Classifier()
    model({"features": np.zeros((1, 32), "float32")})
    return model


@pytest.mark.parametrize("kwargs, message", [
    ({"quantization": "bfloat16"},
     r"Expected a quantization mode format='openvino' can write: \['float16', "
     r"'dynamic_int8', 'int8'\]\. Received: quantization='bfloat16'\. kexport never writes "
     r"a float artifact in place of a quantized one\."),
    ({"quantization": "int8"},
     r"Expected `calibration_data` .* with quantization='int8'\. Received: "
     r"calibration_data=None"),
    ({"quantization": "int8", "calibration_data": [{"features": np.zeros((2, 5), "float32")}]},
     r"Expected every batch of `calibration_data` to fit the model's inputs; batch 1 "
     r"does not: .*32"),
])
def test_requests_openvino_cannot_honour_are_typed_errors(tmp_path, kwargs, message):
    path = tmp_path / "m.xml"
    with pytest.raises(QuantizationError, match=message) as info:
        kexport.export_openvino(_dense_classifier(), path, verbose=False, **kwargs)
    assert isinstance(info.value, ValueError)
    assert not os.listdir(tmp_path)


@pytest.mark.backends("tensorflow")
def test_archive_write_out_quantizes_every_endpoint(tmp_path, fresh_process):
    model = _dense_classifier()
    archive = kexport.ExportArchive()
    archive.track(model)
    spec = {"features": keras.InputSpec(shape=(None, 32), name="features")}
    archive.add_endpoint("serve", lambda inputs: model(inputs), [spec])
    folder = tmp_path / "archive"
    with pytest.raises(QuantizationError, match="format='openvino' can write"):
        archive.write_out(folder, format="openvino", verbose=False, quantization="bfloat16")
    assert not folder.exists()
    archive.write_out(folder, format="openvino", verbose=False, quantization="dynamic_int8")
    manifest = json.loads((folder / "kexport.json").read_text())
    assert manifest["quantization"]["mode"] == "dynamic_int8"
    features = np.random.default_rng(1).normal(size=(16, 32)).astype("float32")
    q = fresh_process("fresh_openvino_quant:describe_and_run", str(folder / "serve.xml"),
                      {"features": features})
    _check_mode(q, "dynamic_int8", 4 * (32 * 128 + 128 + 128 * 6 + 6))
    artifact = kexport.load(folder)
    assert artifact.metadata["quantization"] == "dynamic_int8"
    live = keras.ops.convert_to_numpy(model({"features": features}))
    (out,) = artifact(features).values()
    np.testing.assert_allclose(np.asarray(out), live, atol=0.05 * np.abs(live).max())


@pytest.mark.backends("tensorflow")
def test_ignored_nodes_stay_float():
    """The hook a ``quantization_exclude`` option resolves Keras layers to: IR
    operation names kept in float by nncf.IgnoredScope."""
    import openvino as ov
    import openvino.opset13 as ops

    from kexport.formats._openvino_quantize import quantize_ir

    rng = np.random.default_rng(0)
    x = ops.parameter([-1, 64], np.float32, name="x")
    first = ops.matmul(x, ops.constant(rng.normal(size=(64, 64)).astype("float32")),
                       False, False, name="first")
    second = ops.matmul(ops.relu(first), ops.constant(
        rng.normal(size=(64, 8)).astype("float32")), False, False, name="second")
    model = ov.Model([second], [x], "two")

    def weights(m):
        return sorted(int(np.prod(list(op.get_output_shape(0))))
                      for op in m.get_ops() if op.get_type_name() == "Constant"
                      and op.get_output_element_type(0).get_type_name() == "u8"
                      and len(op.get_output_shape(0)) == 2
                      and int(np.prod(list(op.get_output_shape(0)))) > 64)

    assert weights(quantize_ir(model, "dynamic_int8", None, "serve")) == [512, 4096]
    assert weights(quantize_ir(model, "dynamic_int8", None, "serve",
                               ignored_nodes=["first"])) == [512]
    with pytest.raises(QuantizationError, match=r"Received names it does not hold: \['dense'\]"):
        quantize_ir(model, "dynamic_int8", None, "serve", ignored_nodes=["dense"])
    with pytest.raises(QuantizationError, match=r"quantization='float16' on format='openvino'"):
        quantize_ir(model, "float16", None, "serve", ignored_nodes=["first"])


@pytest.mark.backends("torch")
def test_torch_backend_writes_dynamic_int8(tmp_path, fresh_process):
    """PyTorch converts in process (torch.export -> openvino.convert_model), then NNCF
    compresses the weights like on TensorFlow."""
    model = _dense_classifier()
    path = str(tmp_path / "m.xml")
    kexport.export_openvino(model, path, verbose=False, quantization="dynamic_int8")
    features = np.random.default_rng(2).normal(size=(16, 32)).astype("float32")
    q = fresh_process("fresh_openvino_quant:describe_and_run", path, {"features": features})
    _check_mode(q, "dynamic_int8", 4 * (32 * 128 + 128 + 128 * 6 + 6))
    assert q["manifest"]["quantization"]["mode"] == "dynamic_int8"
    assert q["manifest"]["backend"] == BACKEND
    live = keras.ops.convert_to_numpy(model({"features": features}))
    np.testing.assert_allclose(q["outputs"][0], live, atol=0.05 * np.abs(live).max())


@pytest.mark.backends("jax")
def test_jax_rehost_carries_the_mode_and_calibration_to_the_child():
    """JAX models reach OpenVINO by re-hosting onto TensorFlow (a child process,
    measured by hand: ~1 min, too long for CI): the mode, the calibration batches
    as plain lists and the mode's thresholds for the parent's check travel; bad
    calibration data is refused here, before the child starts."""
    from kexport.formats import openvino

    model = _dense_classifier()
    batches = [{"features": np.full((4, 32), i, "float32")} for i in range(3)]
    carried = openvino.rehost_options(model, None, {"quantization": "int8",
                                                    "calibration_data": batches})
    assert carried["quantization"] == carried["quantized"] == "int8"
    assert [len(b["features"]) for b in carried["calibration_data"]] == [4, 4, 4]
    assert carried["calibration_data"][2]["features"][0][0] == 2.0
    assert [a.shape for (a,) in carried["sample_inputs"]] == [(4, 32), (4, 32)]
    assert openvino.rehost_options(model, None, {"quantization": None}) == {}
    with pytest.raises(QuantizationError, match=r"batch 1 does not"):
        openvino.rehost_options(model, None, {"quantization": "int8", "calibration_data": [
            {"features": np.zeros((2, 5), "float32")}]})

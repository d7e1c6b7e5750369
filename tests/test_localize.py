"""kexport.localize: a planted fault is named exactly, on every format, from every backend.

The planted layer computes ``x`` when the model runs live and ``1.5 * x``
when it is traced for an export (``tf.function``, jax2tf/JAX, torch.export),
so the artifact differs from the live model from that layer on, and by
exactly half of its output. The model is subclassed (no ``get_config``, no
``training`` argument) and holds the planted layer inside a nested
Sequential, so the expected culprit is ``"block/planted"``. The probes run
in fresh processes with each format's own runtime (kexport.verify's worker).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

import kexport
from conftest import native_formats
from kexport import routing
from kexport.check.localization import ENTERS, GROWS, first_divergence
from kexport.check.tolerance import QUANTIZED
from kexport.context import ExportContext, Printer
from kexport.errors import ArtifactError, LocalizationError

SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
          "torch": ".pt2"}
FORMATS = list(SUFFIX)
CULPRIT = "block/planted"


def build(planted: bool = True):
    """The model: stem -> block (inner, planted) -> head, subclassed, built on a sample."""

    class Planted(keras.layers.Layer):
        def call(self, x):
            if not planted:
                return x
            backend = keras.backend.backend()
            if backend == "tensorflow":
                import tensorflow as tf

                traced = not tf.executing_eagerly()
            elif backend == "jax":
                import jax

                traced = isinstance(x, jax.core.Tracer)
            else:
                import torch

                traced = (torch.compiler.is_exporting() or torch.compiler.is_compiling()
                          or torch.jit.is_tracing()
                          or isinstance(x, torch._subclasses.fake_tensor.FakeTensor))
            return x * 1.5 if traced else x

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.stem = keras.layers.Dense(8, activation="relu", name="stem")
            self.block = keras.Sequential(
                [keras.layers.Dense(8, activation="tanh", name="inner"), Planted(name="planted")],
                name="block")
            self.head = keras.layers.Dense(3, name="head")

        def call(self, x):
            return self.head(self.block(self.stem(x)))

    model = Net()
    model(np.random.default_rng(0).normal(size=(2, 6)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def planted():
    return build(planted=True)


def _export(model, folder, format, **options):
    path = os.path.join(folder, f"model_{format}{SUFFIX[format]}")
    # the route's own checks would refuse the faulty artifact (the re-host
    # check, the ONNX acceptance): it is written as a silent fault would be,
    # through export_model's own path with a context that does not judge numbers
    routes = routing.usable(keras.backend.backend(), format, model)
    routing.export(routes, model, path, context=ExportContext(judged=False, printer=Printer(on=False)),
                   **options)
    return path


@pytest.mark.parametrize("format", native_formats(FORMATS))
def test_planted_fault_is_named_exactly(planted, tmp_path_factory, format):
    path = _export(planted, str(tmp_path_factory.mktemp(f"loc_{format}")), format)
    report = kexport.localize(planted, path)
    assert report.culprit == CULPRIT, report.table()
    assert report.format == format
    paths = [r.path for r in report.layers]
    assert paths == ["stem", "block/inner", "block/planted", "block", "head"]
    rows = {r.path: r for r in report.layers}
    row = rows[CULPRIT]
    assert row.class_name == "Planted" and not row.ok and row.origin == "enters here"
    # the error enters at the planted layer: its inputs match, its outputs are off by x/2
    assert row.input_error.max_abs <= 1e-4
    assert row.output_error.max_rel == pytest.approx(0.5, abs=1e-3)
    assert rows["stem"].ok and rows["block/inner"].ok
    assert rows["head"].origin == "grows from upstream"
    assert row.tolerance == {"atol": 1e-4, "rtol": 1e-3}
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["culprit"] == CULPRIT and data["layers"][2]["origin"] == "enters here"


def test_correct_artifact_has_no_culprit(tmp_path):
    model = build(planted=False)
    path = _export(model, str(tmp_path), "onnx")
    report = kexport.localize(model, path)
    assert report.culprit is None and report.ok, report.table()
    assert [r.path for r in report.layers][-1] == "head"
    assert all(r.ok and r.origin is None for r in report.layers)
    assert max(r.output_error.max_abs for r in report.layers) < 1e-4
    assert set(report.to_json()) == {"culprit", "format", "route", "quantization", "layers"}
    assert set(report.to_json()["layers"][0]) >= {
        "path", "class_name", "input_error", "output_error", "tolerance", "ok", "origin", "ops"}


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("format, mode", [("onnx", "float16"), ("litert", "dynamic_int8")])
def test_quantized_artifact_rows_use_its_thresholds(planted, tmp_path, format, mode):
    data = np.random.default_rng(3).normal(size=(64, 6)).astype("float32")
    path = _export(planted, str(tmp_path), format, quantization=mode)
    report = kexport.localize(planted, path, data=data)
    assert report.quantization == mode
    assert report.culprit == CULPRIT, report.table()
    assert all(r.tolerance == QUANTIZED[mode].to_json() for r in report.layers)
    row = report.culprit_row
    assert row is not None and row.origin == "enters here"
    assert any("SQNR" in f for f in row.failed)
    assert report.layers[0].ok  # the stem's quantized outputs meet the mode's thresholds


def test_model_without_sublayers_is_a_typed_error(tmp_path):
    class OnlyOps(keras.Model):
        def call(self, x):
            return keras.ops.tanh(x) * 2.0

    model = OnlyOps()
    model(np.zeros((2, 6), "float32"))
    path = _export(build(planted=False), str(tmp_path), "onnx")
    with pytest.raises(LocalizationError, match="calls no Keras sublayer") as info:
        kexport.localize(model, path)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ArtifactError):
        kexport.localize(model, str(tmp_path / "missing.onnx"))


@pytest.mark.backends("tensorflow")
def test_cli_verify_localize_json(tmp_path, capsys):
    from kexport.cli import main

    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="d2")(hidden))
    model.save(tmp_path / "m.keras")
    path = str(tmp_path / "m.onnx")
    kexport.export_model(model, path, format="onnx", verbose=False)
    code = main(["verify", str(tmp_path / "m.keras"), path, "--localize", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] is True
    loc = out["localization"]
    assert loc["culprit"] is None and [r["path"] for r in loc["layers"]] == ["d1", "d2"]
    assert loc["layers"][0]["tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
    # tf2onnx keeps the layers' name scopes: the rows name the ONNX ops they became
    assert "MatMul" in loc["layers"][0]["ops"]


@pytest.mark.backends("tensorflow")
def test_report_of_a_faulty_artifact_shows_the_planted_layer(planted, tmp_path):
    """``kexport.report`` asks the localiser about an artifact that fails, and the page
    names the planted layer with its errors (the same finding as ``--json``)."""
    path = _export(planted, str(tmp_path), "onnx")
    page = tmp_path / "report.html"
    data = kexport.report(planted, [path], page, batch_sizes=(1,), seconds=0.02)
    (section,) = data["artifacts"]
    assert data["ok"] is False and section["ok"] is False
    finding = section["localization"]
    assert finding["status"] == "found" and finding["culprit"] == CULPRIT, finding
    assert finding["layer"]["class_name"] == "Planted"
    assert finding["layer"]["origin"] == "enters here"
    assert finding["layer"]["output_rel_error"] == pytest.approx(0.5, abs=1e-3)
    html = page.read_text()
    assert "first diverging layer: block/planted (Planted)" in html
    assert str(tmp_path) not in html


@pytest.mark.backends("tensorflow")
def test_first_divergence_matches_calls_by_path_and_says_where_the_difference_enters():
    a, b = np.ones((2, 3), "float32"), np.zeros((2, 3), "float32")

    def call(path, inputs, outputs):
        return {"path": path, "class_name": "Dense", "inputs": inputs, "outputs": outputs}

    live = [call("dense", [a], [a]), call("block/dense", [a], [a]),
            call("block/mix", [a], [a]), call("head", [a], [a])]
    # the host calls a sublayer the live model does not ("block/softmax"): skipped
    host = [call("dense", [a], [a]), call("block/softmax", [a], [b]),
            call("block/dense", [a], [a]), call("block/mix", [a], [b]),
            call("head", [b], [b])]
    found = first_divergence(live, host, 1e-4, 1e-3)
    assert found == {"path": "block/mix", "class_name": "Dense", "max_abs_error": 1.0,
                     "origin": ENTERS, "enclosing": "block"}
    # inputs that already differ: the difference came from code between sublayer calls
    host[3] = call("block/mix", [b], [b])
    assert first_divergence(live, host, 1e-4, 1e-3)["origin"] == GROWS
    assert first_divergence(live, live, 1e-4, 1e-3) is None

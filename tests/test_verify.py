"""``kexport.verify`` and ``export_model(verify=True)`` against live models."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import kexport
from kexport.check.report import OutputCheck, VerificationReport
from models import mlp, sequence_model


def tamper_saved_model(path, factor=3.0):
    """Change one weight on disk, keeping the checkpoint valid (checksums updated)."""
    import tensorflow as tf

    prefix = str(path / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_shape_map())  # object graph included
    tensors = [reader.get_tensor(n) for n in names]
    target = next(i for i, (n, t) in enumerate(zip(names, tensors, strict=True))
                  if "VARIABLE_VALUE" in n and np.ndim(t) == 2)
    changed = np.array(tensors[target], copy=True)
    changed.flat[0] += factor
    tensors[target] = changed
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(t) for t in tensors])


@pytest.mark.backends("jax")  # the TensorFlow run covers this through the CLI (test_cli.py)
def test_export_verify_passes_and_report_is_stored(tmp_path):
    model = sequence_model()  # (None, None, 5): batch and time both dynamic
    path = tmp_path / "sm"
    kexport.export_model(model, path, verbose=False, verify=True)
    stored = kexport.load(path).verification
    assert stored["ok"] is True and stored["format"] == "tf_saved_model"
    report = VerificationReport.from_json(stored)
    assert [(c.endpoint, c.output, c.case) for c in report.checks] == [
        ("serve", "y", "dyn=1"), ("serve", "y", "dyn=3")]
    # the batch ran at 1 and at 3, the time axis at a size of its own (size + 2)
    assert [c.input_shapes["seq"] for c in report.checks] == [[1, 3, 5], [3, 5, 5]]
    assert all(c.max_abs <= 1e-4 for c in report.checks)
    assert str(tmp_path) not in json.dumps(stored)
    # no temporary files left inside the artifact
    assert not [p for p in path.rglob(".*")]


@pytest.mark.backends("tensorflow")
def test_tampered_weight_fails_and_names_the_output(tmp_path):
    model = mlp()
    path = tmp_path / "sm"
    kexport.export_model(model, path, verbose=False)
    tamper_saved_model(path)
    report = kexport.verify(model, path)
    assert not report.ok
    assert [c.output for c in report.failures] == ["probs", "probs"]
    assert all(c.shape_ok and c.max_abs > 1e-3 for c in report.failures)
    assert "probs" in report.table() and "FAIL" in report.table()
    assert kexport.load(path).verification["ok"] is False
    with pytest.raises(kexport.VerificationError, match=r"outputs \['serve/probs'\] out of "
                                                        r"tolerance") as info:
        from kexport.verify import raise_if_failed

        raise_if_failed(report, path)
    assert info.value.report is report


class Drifting(keras.layers.Layer):
    """Adds a Python-side call counter: a trace freezes it, the live layer keeps counting."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
        return x + float(self.calls)


@pytest.mark.backends("tensorflow")
def test_export_model_verify_raises_typed_error(tmp_path):
    i = keras.Input((4,), name="x")
    model = keras.Model(i, Drifting(name="out")(keras.layers.Dense(2)(i)))
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(kexport.VerificationError) as info:
        kexport.export_model(model, tmp_path / "sm", verbose=False, verify={"sizes": [1, 2]})
    report = info.value.report
    assert isinstance(report, VerificationReport) and not report.ok
    assert {c.output for c in report.failures} == {"out"}


@pytest.mark.backends("tensorflow")
def test_bad_arguments_are_typed(tmp_path):
    model = mlp()
    with pytest.raises(kexport.SignatureError, match=r"Expected `atol` to be a number >= 0. "
                                                     r"Received: -1"):
        kexport.verify(model, tmp_path, atol=-1)
    with pytest.raises(kexport.SignatureError, match="Expected `sizes` to be a non-empty list"):
        kexport.verify(model, tmp_path, sizes=[])
    with pytest.raises(kexport.SignatureError, match="Expected `model` to be a Keras model"):
        kexport.verify("model", tmp_path)
    with pytest.raises(kexport.ArtifactError, match="does not exist"):
        kexport.verify(model, tmp_path / "missing")


@pytest.mark.backends("tensorflow")
def test_report_table_json_round_trip():
    checks = [
        OutputCheck("serve", "probs", "dyn=1", {"x": [1, 8]}, [1, 3], [1, 3], 1e-7, 2e-7,
                    1e-4, 1e-3, True),
        OutputCheck("serve", "probs", "dyn=3", {"x": [3, 8]}, [3, 3], [3, 2], math.inf,
                    math.inf, 1e-4, 1e-3, False),
    ]
    report = VerificationReport("onnx", "float32", 1e-4, 1e-3, 0, checks)
    assert not report.ok and report.failures == [checks[1]]
    data = json.loads(json.dumps(report.to_json()))  # strict JSON: inf stored as text
    assert data["summary"] == [{"endpoint": "serve", "output": "probs",
                                "cases": ["dyn=1", "dyn=3"], "shape_match": False,
                                "max_abs": "inf", "max_rel": "inf", "atol": 1e-4,
                                "rtol": 1e-3, "ok": False}] or data["summary"][0]["ok"] is False
    again = VerificationReport.from_json(data)
    assert again.checks == checks
    text = report.table()
    assert "Verification FAILED (onnx" in text
    assert "shape mismatch in serve/probs [dyn=3]: expected (3, 3), received (3, 2)" in text


@pytest.mark.backends("tensorflow")
def test_int8_litert_is_judged_by_the_int8_thresholds(tmp_path):
    """verify judges an int8 LiteRT artifact by the int8 row of the one
    thresholds table (SQNR, cosine, top-k), on the user's data when given."""
    import keras

    from kexport.check.tolerance import QUANTIZED

    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((8,), name="x"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, name="y")])
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 8), dtype="float32") for _ in range(64)]
    path = tmp_path / "int8.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="int8",
                          representative_dataset=calibration)
    x = rng.random((100, 8), dtype="float32")  # inside the calibration range
    report = kexport.verify(model, path, data=x)
    assert report.quantization == "int8" and report.thresholds == QUANTIZED["int8"]
    assert report.inputs == "data"
    assert report.ok, report
    (row,) = report.summary()
    assert row["cases"] == ["dyn=1", "dyn=3", "data=100"] and row["samples"] == 104
    assert row["scores"] and row["top1"] >= QUANTIZED["int8"].top1
    assert QUANTIZED["int8"].sqnr_db <= row["sqnr_db"] < float("inf")  # really quantized

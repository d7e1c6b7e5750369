"""kexport.localize reads the artifact itself: a fault planted in the file is named.

The artifact is exported as usual, then one Dense kernel is scaled by 1.5
inside the written file (its bytes found and rewritten, as another tool or a
corrupted copy would leave it). Re-exporting a probe cannot see that change;
:func:`kexport.localize` must read the file's own intermediate values with the
format's runtime and name the layer whose kernel changed, and say it did so.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kexport
from conftest import native_formats

SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite"}


def _model():
    class Scorer(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(8, activation="relu", name="first")
            self.second = keras.layers.Dense(8, activation="tanh", name="second")
            self.third = keras.layers.Dense(3, name="third")

        def call(self, x):
            return self.third(self.second(self.first(x)))

    model = Scorer()
    model(np.random.default_rng(0).normal(size=(2, 6)).astype("float32"))
    return model


def _weights_file(path):
    return path[:-4] + ".bin" if path.endswith(".xml") else path


def _plant(path, kernel, factor=1.5):
    """Scale ``kernel`` (stored as it is or transposed, float32 or float16) inside the file."""
    target = _weights_file(path)
    with open(target, "rb") as f:
        data = f.read()
    for stored in (kernel, kernel.T):
        for dtype in ("float32", "float16"):
            raw = np.ascontiguousarray(stored, dtype).tobytes()
            if data.count(raw) == 1:
                scaled = np.ascontiguousarray(stored * factor, dtype).tobytes()
                with open(target, "wb") as f:
                    f.write(data.replace(raw, scaled))
                return
    raise AssertionError(f"the kernel was not found once in {os.path.basename(target)}")


@pytest.mark.parametrize("format", native_formats(list(SUFFIX)))
def test_a_fault_planted_in_the_file_is_named(format, tmp_path):
    model = _model()
    path = str(tmp_path / f"scorer{SUFFIX[format]}")
    kexport.export_model(model, path, format=format, verbose=False, verify=False)
    _plant(path, keras.ops.convert_to_numpy(model.second.kernel))
    report = kexport.localize(model, path)
    assert report.method == "artifact", report
    assert report.culprit == "second", report
    rows = {r.path: r for r in report.layers}
    assert rows["first"].ok and rows["first"].compared  # upstream of the fault: no false alarm
    assert rows["second"].origin == "enters here" and rows["second"].output_error.max_abs > 1e-2
    assert not rows["third"].ok and rows["third"].origin == "grows from upstream"
    assert report.to_json()["method"] == "artifact"

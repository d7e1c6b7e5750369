"""``kexport.load`` on SavedModels, reloaded in a fresh process (TF and JAX runs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from models import rng, two_inputs_two_outputs

pytestmark = pytest.mark.backends("tensorflow", "jax")


def test_archive_endpoints_in_fresh_process(tmp_path, fresh_process):
    model = two_inputs_two_outputs()
    archive = kexport.ExportArchive()
    archive.track(model)
    sig = [[keras.InputSpec(shape=(None, 3), name="a"), keras.InputSpec(shape=(None, 4), name="b")]]
    archive.add_endpoint("serve", lambda xs: model(xs, training=False), sig)
    archive.add_endpoint("double", lambda xs: [2.0 * y for y in model(xs, training=False)], sig)
    path = str(tmp_path / "sm")
    archive.write_out(path, verbose=False)

    a = rng(0).normal(size=(2, 3)).astype("float32")
    b = rng(1).normal(size=(2, 4)).astype("float32")
    got = fresh_process("fresh_runtime:load_and_run", path,
                        [("serve", {"a": a, "b": b}), ("double", [a, b])])
    assert got["format"] == "tf_saved_model"
    assert got["default"] == "serve"  # serving_default is its alias, not listed twice
    assert got["endpoints"] == {
        "serve": (["a: float32(None, 3)", "b: float32(None, 4)"],
                  ["y1: float32(None, 2)", "y2: float32(None, 1)"]),
        "double": (["a: float32(None, 3)", "b: float32(None, 4)"],
                   ["y1: float32(None, 2)", "y2: float32(None, 1)"]),
    }
    want = [keras.ops.convert_to_numpy(y) for y in model([a, b], training=False)]
    serve, double = got["outputs"]
    assert list(serve) == ["y1", "y2"]
    for name, w in zip(["y1", "y2"], want, strict=True):
        np.testing.assert_allclose(serve[name], w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(double[name], 2 * w, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["default_out"][name], w, rtol=1e-5, atol=1e-5)

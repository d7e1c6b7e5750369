"""What Keras's own SavedModel export tests assert, asked of kexport (issue 29, item 6).

Written from the behaviours Keras's ``saved_model_test.py`` checks, not its
code: endpoints a user adds to an archive get their dynamic dimensions probed
like default endpoints (two inputs of independent length keep independent
symbols), an unbuilt or built-but-never-called model is refused with a
``ValueError``, a bad ``jax2tf_kwargs`` platform is refused with a
``ValueError`` when the endpoint is added, and polymorphic shapes that cannot
hold are refused with a ``TypeError``. Artifacts are reloaded in a fresh
process with TensorFlow's own ``tf.saved_model.load``.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from keras import ops

import kexport
from kexport import ExportArchive

BACKEND = keras.backend.backend()


def _spec(shape):
    return keras.InputSpec(shape=shape, dtype="float32")


class PairModel(keras.Model):
    """Two sequences of independent length, each pooled, then joined."""

    def __init__(self):
        super().__init__()
        self.left = keras.layers.Dense(3)
        self.right = keras.layers.Dense(3)

    def call(self, a, b):
        return ops.mean(self.left(a), axis=1) + ops.max(self.right(b), axis=1)


@pytest.mark.backends("tensorflow", "jax")  # from PyTorch the archive is re-hosted on TF
def test_an_added_endpoint_keeps_two_independent_lengths(tmp_path, fresh_process):
    model = PairModel()
    rng = np.random.default_rng(0)
    model(rng.normal(size=(2, 4, 5)).astype("float32"),
          rng.normal(size=(2, 4, 5)).astype("float32"))
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("pair", lambda a, b: model(a, b),
                         input_signature=[_spec((None, None, 5)), _spec((None, None, 5))])
    path = str(tmp_path / "pair")
    archive.write_out(path, verbose=False)
    a = rng.normal(size=(3, 2, 5)).astype("float32")
    b = rng.normal(size=(3, 9, 5)).astype("float32")
    got = fresh_process("fresh:saved_model_call", path, "pair", [a, b])
    want = ops.convert_to_numpy(model(a, b))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


class TwoDense(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(4)
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


def test_a_model_never_built_is_refused_with_a_value_error(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="built"):
        kexport.export_model(model, str(tmp_path / "m"), verbose=False)
    assert not os.path.exists(tmp_path / "m")


def test_a_model_built_but_never_called_is_refused_with_a_value_error(tmp_path):
    model = TwoDense()
    model.build((2, 6))
    with pytest.raises(ValueError, match="called"):
        kexport.export_model(model, str(tmp_path / "m"), verbose=False)
    assert not os.path.exists(tmp_path / "m")


@pytest.mark.backends("jax")
def test_a_bad_jax2tf_platform_is_refused_when_the_endpoint_is_added():
    archive = ExportArchive()
    with pytest.raises(ValueError, match=r"native_serialization_platforms.*bogus"):
        archive.add_endpoint("call", lambda x: x, input_signature=[_spec((None, 10))],
                             jax2tf_kwargs={"native_serialization_platforms": ("cpu", "bogus")})


class Square(keras.layers.Layer):
    def call(self, x):
        return ops.matmul(x, x)


@pytest.mark.backends("jax")
def test_polymorphic_shapes_that_cannot_hold_are_a_type_error(tmp_path, fresh_process):
    model = keras.Sequential([Square()])
    x = np.random.default_rng(1).normal(size=(3, 4, 4)).astype("float32")
    model(x)
    archive = ExportArchive()
    archive.track(model)
    with pytest.raises(TypeError):  # the two last axes must be equal; free symbols cannot say so
        archive.add_endpoint("call", model.__call__, input_signature=[_spec((None, None, None))],
                             jax2tf_kwargs={"polymorphic_shapes": ["(b, m, n)"]})
        archive.write_out(str(tmp_path / "bad"), verbose=False)
    assert not os.path.exists(tmp_path / "bad")
    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("call", model.__call__, input_signature=[_spec((None, None, None))],
                         jax2tf_kwargs={"polymorphic_shapes": ["(b, n, n)"]})
    archive.write_out(str(tmp_path / "good"), verbose=False)
    y = np.random.default_rng(2).normal(size=(2, 6, 6)).astype("float32")
    got = fresh_process("fresh:saved_model_call", str(tmp_path / "good"), "call", [y])
    np.testing.assert_allclose(got, ops.convert_to_numpy(model(y)), atol=1e-4, rtol=1e-4)

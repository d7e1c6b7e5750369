"""Code written for ``keras.export.ExportArchive`` works unchanged with kexport.

The patterns of Keras's export guide, on user-style models (subclassed, defined
inside the test, no ``get_config``, ``call`` without a ``training`` argument):
the archive's variable lists after ``track()`` (live and reloaded), function
aliases in ``SaveOptions``, and Keras's built-in error types. Artifacts are
reloaded in a fresh process (``fresh_archive_parity.py``) and compared with the
live model at two batch sizes.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from models import assert_close, np_out, rng

L = keras.layers
SPEC10 = [keras.InputSpec(shape=(None, 10), dtype="float32")]


def bn_model() -> keras.Model:
    """Dense -> BatchNormalization -> Dense, subclassed, defined in a function: 8 variables,
    6 trainable, 2 non-trainable (the batch-norm statistics), as in Keras's own test."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(4, activation="relu")
            self.bn = L.BatchNormalization()
            self.head = L.Dense(3)

        def call(self, x):
            return self.head(self.bn(self.dense(x)))

    model = Net()
    model(np.zeros((2, 10), "float32"))
    _set_statistics(model)
    return model


def _set_statistics(model: keras.Model) -> None:
    bn = model.layers[1]
    bn.moving_mean.assign(np.linspace(-1.0, 1.0, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))


def any_backend_model() -> keras.Model:
    """The same layers as :func:`bn_model`; on PyTorch as a Sequential model, since the
    PyTorch archive re-hosts tracked models by their config (classes defined inside a
    function: issue #14, item 9, see CHANGELOG)."""
    if BACKEND != "torch":
        return bn_model()
    model = keras.Sequential([keras.Input((10,)), L.Dense(4, activation="relu"),
                              L.BatchNormalization(), L.Dense(3)])
    _set_statistics(model)
    return model


def _np(v):
    if isinstance(v, keras.Variable):
        return np.asarray(keras.ops.convert_to_numpy(v.value))
    return np.asarray(v.numpy())  # a tf.Variable


def _same_values(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(_np(g), _np(w))


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_archive_variables_after_track():
    model = any_backend_model()
    archive = kexport.ExportArchive()
    assert archive.variables == [] and archive.non_trainable_variables == []
    archive.track(model)
    assert len(archive.variables) == 8
    assert len(archive.trainable_variables) == 6
    assert len(archive.non_trainable_variables) == 2
    _same_values(archive.variables, model.variables)
    _same_values(archive.trainable_variables, model.trainable_variables)
    _same_values(archive.non_trainable_variables, [model.layers[1].moving_mean,
                                                      model.layers[1].moving_variance])
    if BACKEND == "jax":  # as Keras: the tf.Variable copies the SavedModel holds
        import tensorflow as tf

        assert all(isinstance(v, tf.Variable) for v in archive.variables)
    else:  # the model's own Keras variables
        assert all(a is m for a, m in zip(archive.variables, model.variables))
    archive.track(model.layers[1])  # a layer inside a tracked model: its variables only once
    assert len(archive.variables) == 8 and len(archive.non_trainable_variables) == 2


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_frozen_layer_variables_are_non_trainable():
    model = any_backend_model()
    model.layers[0].trainable = False
    archive = kexport.ExportArchive()
    archive.track(model)
    assert len(archive.trainable_variables) == 4
    assert len(archive.non_trainable_variables) == 4
    _same_values(archive.non_trainable_variables, model.non_trainable_variables)


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_reloaded_object_exposes_tracked_variables(tmp_path, fresh_process):
    model = any_backend_model()
    model.layers[0].trainable = False  # a frozen layer: its variables are non-trainable
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, SPEC10)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    xs = [rng(1).random((3, 10), dtype="float32"), rng(2).random((7, 10), dtype="float32")]
    got = fresh_process("fresh_archive_parity:reloaded_variables", path, xs)
    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        want = getattr(model, attr)
        assert len(got[attr]) == len(want), attr
        for (value, _), w in zip(got[attr], want):
            np.testing.assert_array_equal(value, _np(w))
    for x, out in zip(xs, got["serve"]):
        assert_close(out, np_out(model(x)))


@pytest.mark.backends("tensorflow", "jax")
def test_function_aliases_are_callable_after_reload(tmp_path, fresh_process):
    import tensorflow as tf

    model = bn_model()
    archive = kexport.ExportArchive()
    archive.track(model)
    fn = archive.add_endpoint("serve", model.call, SPEC10)
    doubled = archive.add_endpoint("doubled", lambda x: model(x) * 2.0, SPEC10)
    path = str(tmp_path / "a")
    aliases = {"call_alias": fn, "doubled_alias": doubled.get_concrete_function()}
    options = tf.saved_model.SaveOptions(function_aliases=aliases)
    archive.write_out(path, options, verbose=False)
    assert options.function_aliases == aliases  # the user's options are left as given
    xs = [rng(1).random((3, 10), dtype="float32"), rng(2).random((6, 10), dtype="float32")]
    got = fresh_process("fresh_archive_parity:function_alias_calls", path,
                        ["call_alias", "doubled_alias"], xs)
    for alias, scale in (("call_alias", 1.0), ("doubled_alias", 2.0)):
        assert got[alias]["callable"], got[alias]["type"]
        for x, out in zip(xs, got[alias]["outputs"]):
            assert out.shape == (len(x), 3)
            assert_close(out, scale * np_out(model(x)))
    for x, out in zip(xs, got["serve"]):
        assert_close(out, np_out(model(x)))


@pytest.mark.backends("tensorflow", "jax", "torch")
def test_keras_builtin_error_types_on_every_backend():
    """What Keras raises is what kexport raises, with the kexport class too."""
    model = any_backend_model()
    archive = kexport.ExportArchive()
    with pytest.raises(TypeError, match=r"Expected each leaf of `input_signature`.*"
                       r"Received: 123 \(of type int\)") as info:
        archive.add_endpoint("serve", model.call, input_signature=(123,))
    assert isinstance(info.value, kexport.SignatureTypeError)
    assert isinstance(info.value, ValueError)  # still a SignatureError
    with pytest.raises(ValueError, match=r"Expected a Keras layer") as info:
        archive.track(object())
    assert isinstance(info.value, kexport.CaptureValueError)
    with pytest.raises(ValueError, match=r"Expected a built layer or model") as info:
        archive.track(L.Dense(2))
    assert isinstance(info.value, kexport.CaptureValueError)
    with pytest.raises(ValueError, match=r"Expected at least one endpoint") as info:
        archive.write_out("never-written")
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"are unknown") as info:
        archive.add_endpoint("serve", model.call)
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(TypeError, match=r"Expected `fn` to be callable") as info:
        archive.add_endpoint("serve", 3, SPEC10)
    assert isinstance(info.value, kexport.SignatureTypeError)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments .*'frobnicate'") as info:
        archive.add_endpoint("serve", model.call, SPEC10, frobnicate=True)
    assert isinstance(info.value, kexport.SignatureTypeError)
    archive.track(model)
    archive.add_endpoint("serve", model.call, SPEC10)
    with pytest.raises(ValueError, match=r"Endpoint name 'serve' is already taken") as info:
        archive.add_endpoint("serve", model.call, SPEC10)
    assert isinstance(info.value, kexport.SignatureError)
    with pytest.raises(ValueError, match=r"Did you mean 'tf_saved_model'\?") as info:
        archive.write_out("never-written", format="saved_model")
    assert isinstance(info.value, kexport.UnknownFormatError)
    with pytest.raises(ValueError, match=r"Received: format='onxx'") as info:
        kexport.export_model(model, "never-written", format="onxx")
    assert isinstance(info.value, kexport.UnsupportedRouteError)


@pytest.mark.backends("jax")
def test_jax_option_types():
    model = bn_model()
    archive = kexport.ExportArchive()
    archive.track(model)
    with pytest.raises(TypeError, match=r"Expected `is_static` to be a bool") as info:
        archive.add_endpoint("serve", model.call, SPEC10, is_static="no")
    assert isinstance(info.value, kexport.SignatureTypeError)
    with pytest.raises(TypeError, match=r"Expected `jax2tf_kwargs` to be a dict") as info:
        archive.add_endpoint("serve", model.call, SPEC10, jax2tf_kwargs=5)
    assert isinstance(info.value, kexport.SignatureTypeError)

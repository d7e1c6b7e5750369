"""Code users write, exported from every backend to every format (issue 29).

Each model is defined inside its test, has no ``get_config`` and a ``call``
without ``training``; the artifact is reloaded in a fresh process with the
format's own runtime (``fresh_user_code.py``) and fed what a client sends.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kexport
from conftest import native_formats

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
          "torch": ".pt2"}
FORMATS = ["onnx", "tf_saved_model", "litert", "openvino", "torch"]


def _export(model, tmp_path, format, **kwargs):
    path = str(tmp_path / f"m{SUFFIX[format]}")
    kexport.export_model(model, path, format=format, verbose=False, **kwargs)
    return path


def _text_model():
    class TextModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(50, 8)
            self.pool = keras.layers.GlobalAveragePooling1D()
            self.head = keras.layers.Dense(3)

        def call(self, ids):
            return self.head(self.pool(self.embed(ids)))

    model = TextModel()
    model(np.array([[1, 2, 3, 4, 5]], "int32"))
    return model


def test_subclassed_ids_model_infers_int32_and_a_dynamic_length():
    model = _text_model()
    (spec,) = kexport.signature.infer_model_signature(model)
    assert (spec.shape, spec.dtype) == ((None, None), "int32")


def test_a_length_the_model_fixes_stays_static():
    class Flat(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(50, 4)
            self.flat = keras.layers.Flatten()
            self.head = keras.layers.Dense(2)

        def call(self, ids):
            return self.head(self.flat(self.embed(ids)))

    model = Flat()
    model(np.array([[1, 2, 3, 4, 5]], "int32"))
    (spec,) = kexport.signature.infer_model_signature(model)
    assert (spec.shape, spec.dtype) == ((None, 5), "int32")


def test_float_features_stay_float_with_their_width_fixed():
    class Mlp(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(x)

    model = Mlp()
    model(np.ones((1, 6), "float32"))
    (spec,) = kexport.signature.infer_model_signature(model)
    assert (spec.shape, spec.dtype) == ((None, 6), "float32")


@pytest.mark.parametrize("format", native_formats(FORMATS))
def test_ids_model_takes_int32_ids_of_a_new_length(format, tmp_path, fresh_process):
    model = _text_model()
    path = _export(model, tmp_path, format)
    ids = [np.random.default_rng(n).integers(0, 50, (n, 7)).astype("int32") for n in (3, 1)]
    res = fresh_process("fresh_user_code:run", format, path, [{"input": x} for x in ids])
    if format != "torch":
        ((name, dtype, shape),) = res["inputs"]
        assert name == "input" and dtype in ("int32", "tensor(int32)", "i32"), res["inputs"]
        assert "5" not in shape, res["inputs"]  # the length is dynamic, not the first call's
    for x, out in zip(ids, res["outputs"], strict=True):
        (got,) = out.values()
        want = keras.ops.convert_to_numpy(model(x))
        assert got.shape == want.shape == (len(x), 3)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    (shown,) = kexport.load(path).endpoints["serve"].inputs
    assert "int32" in str(shown) and "None" in str(shown), shown  # what `kexport inspect` prints


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _small_cnn():
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(x))


@pytest.mark.parametrize("format", native_formats(FORMATS))
def test_mixed_bfloat16_model_takes_and_gives_float32(format, tmp_path, fresh_process,
                                                      mixed_bfloat16):
    model = _small_cnn()
    keras.mixed_precision.set_global_policy("float32")  # the artifact must not need it
    assert model.layers[1].compute_dtype == "bfloat16"
    path = _export(model, tmp_path, format, verify=True)  # checked with bf16's tolerance
    images = [np.random.default_rng(n).standard_normal((n, 12, 12, 3)).astype("float32")
              for n in (3, 1)]
    res = fresh_process("fresh_user_code:run", format, path, [{"image": x} for x in images])
    if format != "torch":
        ((name, dtype, _),) = res["inputs"]
        assert name == "image" and dtype in ("float32", "tensor(float)", "f32"), res["inputs"]
    for x, out in zip(images, res["outputs"], strict=True):
        (got,) = out.values()
        want = keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32"))
        assert got.dtype == np.float32 and got.shape == want.shape == (len(x), 3)
        np.testing.assert_allclose(got, want, atol=5e-2, rtol=5e-2)
        assert np.abs(got - want).max() > 0 or format == "tf_saved_model"  # f32 vs bf16


def _head_model():
    from keras import ops

    class Head(keras.layers.Layer):  # what a classifier serves beside its probabilities
        def call(self, logits):
            return {"probs": ops.softmax(logits), "label": ops.argmax(logits, axis=-1),
                    "top2": ops.top_k(logits, 2)[1], "positive": logits > 0.0}

    inputs = keras.Input((6,), name="features")
    logits = keras.layers.Dense(5, name="logits")(inputs)
    return keras.Model(inputs, Head(name="head")(logits))


def _output_cells():
    """Every format from every backend; by default only the native cells of TensorFlow,
    JAX's LiteRT, and one re-hosted cell per backend (the re-host casts the host's
    integer outputs to the source's dtypes: TensorFlow and JAX top-k indices are int32,
    PyTorch's int64); ``KEXPORT_FULL_MATRIX=1`` runs them all."""
    cheap = {"tensorflow": set(FORMATS), "jax": {"litert", "torch"},
             "torch": {"tf_saved_model"}}[BACKEND]
    return [f if f in cheap else pytest.param(f, marks=pytest.mark.full_matrix)
            for f in FORMATS]


@pytest.mark.parametrize("format", _output_cells())
def test_integer_and_boolean_outputs_are_exact(format, tmp_path, fresh_process):
    model = _head_model()
    path = _export(model, tmp_path, format, verify=True)
    xs = [np.random.default_rng(n).standard_normal((n, 6)).astype("float32") for n in (4, 1)]
    res = fresh_process("fresh_user_code:run", format, path, [{"features": x} for x in xs])
    for x, out in zip(xs, res["outputs"], strict=True):
        want = {k: keras.ops.convert_to_numpy(v) for k, v in model(x).items()}
        if format == "torch":  # by position, in the flat (sorted) order
            out = dict(zip(sorted(want), out.values(), strict=True))
        assert sorted(out) == sorted(want)
        for key in ("label", "top2", "positive"):
            assert out[key].dtype == want[key].dtype, (key, out[key].dtype, want[key].dtype)
            np.testing.assert_array_equal(out[key], want[key])
        np.testing.assert_allclose(out["probs"], want["probs"], atol=1e-5, rtol=1e-5)
    assert want["label"].dtype.kind == "i" and want["positive"].dtype == bool
    # the declared signature is the live model's too (outputs in the flat, sorted order)
    declared = kexport.load(path, format=format).endpoints["serve"].outputs
    assert [np.dtype(t.dtype) for t in declared] == [want[k].dtype for k in sorted(want)]

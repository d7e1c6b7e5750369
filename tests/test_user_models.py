"""Models written the way users write them, exported to every format of every backend.

Each model class is defined inside a function (a notebook cell, a test), has
no ``get_config`` and a ``call(self, inputs)`` without ``training``; it holds
a ``Dropout`` so that an artifact traced in training mode would disagree with
the live model. Inputs come as one tensor, a tuple, a list, a dict or two
positional tensors. Artifacts are reloaded in a fresh process with the
format's own runtime and compared with the live model at two batch sizes.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kexport
from models import assert_close, np_out, rng

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
KINDS = ["single", "tuple", "list", "dict", "two_positional"]
BATCHES = (1, 5)
SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
          "torch": ".pt2"}
# The formats each backend reaches; the cheap native ones, and every re-host cell on torch.
FORMATS = {
    "tensorflow": ["tf_saved_model", "onnx", "litert"],
    "jax": ["tf_saved_model", "onnx", "litert"],
    "torch": ["onnx", "torch", "openvino", "tf_saved_model", "litert"],
}


def user_model(kind):
    """A fresh subclassed model of ``kind``, its example call and its flat input names."""
    a_dim, b_dim = 4, 3

    class Single(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(5, activation="tanh")
            self.drop = keras.layers.Dropout(0.5)

        def call(self, inputs):
            return self.drop(self.dense(inputs))

    class Pair(keras.Model):  # unpacks a tuple or a list: `x, y = inputs`
        def __init__(self):
            super().__init__()
            self.da = keras.layers.Dense(5)
            self.db = keras.layers.Dense(5)
            self.drop = keras.layers.Dropout(0.5)

        def call(self, inputs):
            x, y = inputs
            return self.drop(self.da(x) * self.db(y))

    class Keyed(keras.Model):
        def __init__(self):
            super().__init__()
            self.da = keras.layers.Dense(5)
            self.db = keras.layers.Dense(5)
            self.drop = keras.layers.Dropout(0.5)

        def call(self, inputs):
            return {"sum": self.drop(self.da(inputs["a"]) + self.db(inputs["b"])),
                    "a_only": self.da(inputs["a"])}

    class TwoArgs(keras.Model):
        def __init__(self):
            super().__init__()
            self.da = keras.layers.Dense(5)
            self.db = keras.layers.Dense(5)
            self.drop = keras.layers.Dropout(0.5)

        def call(self, x, y):
            return self.drop(self.da(x) - self.db(y))

    def example(n, seed=0):
        r = rng(seed)
        a = r.random((n, a_dim), dtype="float32")
        b = r.random((n, b_dim), dtype="float32")
        return {"single": (a,), "tuple": ((a, b),), "list": ([a, b],),
                "dict": ({"a": a, "b": b},), "two_positional": (a, b)}[kind]

    model = {"single": Single, "tuple": Pair, "list": Pair, "dict": Keyed,
             "two_positional": TwoArgs}[kind]()
    model(*example(2))
    names = {"single": ["input"], "tuple": ["input_0", "input_1"],
             "list": ["input_0", "input_1"], "dict": ["a", "b"],
             "two_positional": ["x", "y"]}[kind]
    signature = None
    if kind == "two_positional":  # Keras records the shape of the first argument only
        signature = [keras.InputSpec(shape=(None, a_dim), name="x"),
                     keras.InputSpec(shape=(None, b_dim), name="y")]
    return model, example, names, signature


def _flat(args):
    return kexport.signature.flatten(list(args))


def _flat_out(out):
    return [np.asarray(o) for o in kexport.signature.flatten(np_out(out))]


def _export(model, tmp_path, kind, format, signature):
    path = str(tmp_path / f"{kind}{SUFFIX[format]}")
    kexport.export_model(model, path, format=format, input_signature=signature, verbose=False)
    return path


def _cells():
    return [(f, k) for f in FORMATS[BACKEND] for k in KINDS]


@pytest.mark.parametrize(("format", "kind"), _cells())
def test_user_model_reaches_format(format, kind, tmp_path, fresh_process):
    model, example, names, signature = user_model(kind)
    path = _export(model, tmp_path, kind, format, signature)
    calls = [example(n, seed=n) for n in BATCHES]
    wants = [_flat_out(model(*args)) for args in calls]
    feeds = [dict(zip(names, _flat(args), strict=True)) for args in calls]
    if format == "tf_saved_model":
        for args, want in zip(calls, wants, strict=True):
            # The endpoint takes the structure the model was called with (a tuple stays a tuple).
            got = fresh_process("saved_model_call", path, "serve", list(args))
            assert_close(kexport.signature.flatten(got), want)
        got = [fresh_process("saved_model_signature", path, "serving_default", f) for f in feeds]
        outs = [[g[k] for k in sorted(g)] for g in got]  # named outputs: sorted = flat order
    elif format == "onnx":
        res = fresh_process("fresh_onnx:inspect_and_run", path, feeds)
        assert [n for n, _ in res["inputs"]] == names
        outs = res["results"]
    elif format == "litert":
        (res,) = fresh_process("fresh_formats:litert_run", [(path, "serve", feeds)])
        assert sorted(res["signatures"]["serve"]["inputs"]) == sorted(names)
        outs = [[o[k] for k in sorted(o)] for o in res["outputs"]]
    elif format == "openvino":
        (res,) = fresh_process("fresh_formats:openvino_run", [(path, feeds)])
        assert res["inputs"] == names
        outs = [list(o.values()) for o in res["outputs"]]
    else:  # torch .pt2
        (res,) = fresh_process("fresh_formats:torch_run",
                               [(path, [list(f.values()) for f in feeds])])
        outs = res["outputs"]
    for got, want in zip(outs, wants, strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


def test_explicit_tuple_signature_round_trips_as_a_tuple(tmp_path, fresh_process):
    model, example, _, _ = user_model("tuple")
    spec = ((keras.InputSpec(shape=(None, 4)), keras.InputSpec(shape=(None, 3))),)
    path = _export(model, tmp_path, "explicit", "tf_saved_model", list(spec))
    for n in BATCHES:
        args = example(n, seed=n)
        got = fresh_process("saved_model_call", path, "serve", list(args))
        assert_close(kexport.signature.flatten(got), _flat_out(model(*args)))


@pytest.mark.backends("tensorflow", "jax")
def test_endpoint_takes_the_parameter_names_of_fn(tmp_path, fresh_process):
    class Mix(keras.layers.Layer):
        def build(self, query_shape, value_shape):
            self.w = self.add_weight(shape=(query_shape[-1], value_shape[-1]))

        def call(self, query, value):
            return keras.ops.matmul(query, self.w) * value

    layer = Mix()
    q, v = rng(1).random((2, 4), dtype="float32"), rng(2).random((2, 3), dtype="float32")
    layer(q, v)
    archive = kexport.ExportArchive()
    archive.track(layer)
    archive.add_endpoint("serve", layer.call, input_signature=[
        keras.InputSpec(shape=(None, 4)), keras.InputSpec(shape=(None, 3))])
    path = str(tmp_path / "mix")
    archive.write_out(path, verbose=False)
    for n in BATCHES:
        q, v = rng(n).random((n, 4), dtype="float32"), rng(n + 9).random((n, 3), dtype="float32")
        want = np_out(layer(q, v))
        assert_close(fresh_process("saved_model_call_kwargs", path, "serve",
                                   {"query": q, "value": v}), want)
        assert_close(fresh_process("saved_model_call", path, "serve", [q, v]), want)

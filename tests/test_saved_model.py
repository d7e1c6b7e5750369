"""export_model / export_saved_model: round trips through a fresh process."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kexport
from kexport import routing
from models import (
    NoisyLayer,
    Subclassed,
    TwoArgLayer,
    assert_close,
    dict_model,
    mlp,
    np_out,
    rng,
    sequence_model,
    sequential,
    stochastic_model,
    two_inputs_two_outputs,
)

pytestmark = pytest.mark.backends("tensorflow", "jax")


def export(model, tmp_path, name="sm", **kw):
    path = str(tmp_path / name)
    kexport.export_model(model, path, verbose=False, **kw)
    return path


def test_functional_roundtrip_names_and_dynamic_batch(tmp_path, fresh_process):
    model = mlp()
    path = export(model, tmp_path)
    for n in (1, 5):
        x = rng(n).random((n, 8), dtype="float32")
        want = np_out(model(x, training=False))
        assert_close(fresh_process("saved_model_call", path, "serve", [x]), want)
        got = fresh_process("saved_model_signature", path, "serving_default", {"x": x})
        assert list(got) == ["probs"]
        assert_close(got["probs"], want)
    info = fresh_process("saved_model_info", path)
    assert set(info["signatures"]) == {"serve", "serving_default"}
    assert info["signatures"]["serve"]["inputs"] == {"x": ([None, 8], "float32")}
    assert info["signatures"]["serve"]["outputs"] == {"probs": ([None, 3], "float32")}


def test_sequential_names_survive(tmp_path, fresh_process):
    model = sequential()
    path = export(model, tmp_path)
    x = rng().random((4, 6), dtype="float32")
    got = fresh_process("saved_model_signature", path, "serving_default", {"feat": x})
    assert list(got) == ["score"]
    assert_close(got["score"], np_out(model(x)))


def test_subclassed_signature_from_first_call(tmp_path, fresh_process):
    model = Subclassed()
    model(np.zeros((2, 5), "float32"))
    path = export(model, tmp_path)
    x = rng().random((7, 5), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))


def test_unbuilt_subclassed_model_is_a_signature_error(tmp_path):
    with pytest.raises(kexport.SignatureError, match="never called or built"):
        kexport.export_model(Subclassed(), str(tmp_path / "x"), verbose=False)
    assert not (tmp_path / "x").exists()


def test_bare_layer(tmp_path, fresh_process):
    layer = keras.layers.Dense(4)
    layer(np.zeros((3, 2), "float32"))
    path = export(layer, tmp_path)
    x = rng().random((6, 2), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(layer(x)))


def test_layer_with_two_positional_tensors_and_kwargs(tmp_path, fresh_process):
    layer = TwoArgLayer()
    x0, y0 = np.zeros((2, 4), "float32"), np.zeros((2, 3), "float32")
    layer(x0, y0)
    specs = [keras.InputSpec(shape=(None, 4), dtype="float32", name="x"),
             keras.InputSpec(shape=(None, 3), dtype="float32", name="y")]
    path = export(layer, tmp_path, input_signature=specs)
    x, y = rng(1).random((5, 4), dtype="float32"), rng(2).random((5, 3), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x, y]), np_out(layer(x, y)))
    got = fresh_process("saved_model_signature", path, "serve", {"x": x, "y": y})
    assert_close(got["output_0"], np_out(layer(x, y)))

    archive = kexport.ExportArchive()
    archive.track(layer)
    archive.add_endpoint("scaled", lambda a, b: layer(a, b, scale=3.0), specs)
    path2 = str(tmp_path / "archive")
    archive.write_out(path2, verbose=False)
    want = np_out(layer(x, y, scale=3.0))
    assert_close(fresh_process("saved_model_call", path2, "scaled", [x, y]), want)


def test_layer_needing_two_tensors_without_signature_is_refused(tmp_path):
    class Pair(keras.layers.Layer):
        def call(self, x, y):
            return x + y

    layer = Pair()
    layer(np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32"))
    with pytest.raises(kexport.SignatureError, match=r"takes 2 positional tensors \(x, y\)"):
        kexport.export_model(layer, str(tmp_path / "p"), verbose=False)


def test_multi_input_multi_output(tmp_path, fresh_process):
    model = two_inputs_two_outputs()
    path = export(model, tmp_path)
    a, b = rng(1).random((3, 3), dtype="float32"), rng(2).random((3, 4), dtype="float32")
    want = np_out(model([a, b]))
    assert_close(fresh_process("saved_model_call", path, "serve", [[a, b]]), want)
    got = fresh_process("saved_model_signature", path, "serving_default", {"a": a, "b": b})
    assert sorted(got) == ["y1", "y2"]
    assert_close([got["y1"], got["y2"]], want)


def test_dict_inputs_and_outputs(tmp_path, fresh_process):
    model = dict_model()
    path = export(model, tmp_path)
    xs = {"a": rng(1).random((2, 3), dtype="float32"), "b": rng(2).random((2, 4), dtype="float32")}
    want = np_out(model(xs))
    assert_close(fresh_process("saved_model_call", path, "serve", [xs]), want)
    got = fresh_process("saved_model_signature", path, "serving_default", xs)
    assert_close(got, want)


def _as_backend_tensor(shape):
    return keras.ops.zeros(shape, "float32")


@pytest.mark.parametrize("kind", ["InputSpec", "TensorSpec", "KerasTensor", "backend", "numpy"])
def test_explicit_signature_leaf_kinds(kind, tmp_path, fresh_process):
    import tensorflow as tf

    model = mlp()
    leaf = {
        "InputSpec": keras.InputSpec(shape=(None, 8), dtype="float32"),
        "TensorSpec": tf.TensorSpec((None, 8), tf.float32),
        "KerasTensor": keras.KerasTensor((None, 8), "float32"),
        "backend": _as_backend_tensor((2, 8)),
        "numpy": np.zeros((2, 8), "float32"),
    }[kind]
    path = export(model, tmp_path, input_signature=[leaf])
    x = rng().random((3, 8), dtype="float32")
    got = fresh_process("saved_model_signature", path, "serve", {"x": x})
    assert_close(got["probs"], np_out(model(x)))


@pytest.mark.parametrize("form", ["single", "list", "tuple", "nested", "dict"])
def test_explicit_signature_structures(form, tmp_path, fresh_process):
    a_spec = keras.InputSpec(shape=(None, 3), dtype="float32")
    b_spec = keras.InputSpec(shape=(None, 4), dtype="float32")
    a, b = rng(1).random((2, 3), dtype="float32"), rng(2).random((2, 4), dtype="float32")
    if form == "single":
        model, sig, arg = mlp(), keras.InputSpec(shape=(None, 8)), rng().random((2, 8), dtype="float32")
    elif form == "dict":
        model, sig, arg = dict_model(), [{"a": a_spec, "b": b_spec}], {"a": a, "b": b}
    else:
        model = two_inputs_two_outputs()
        sig = {"list": [a_spec, b_spec], "tuple": (a_spec, b_spec), "nested": [[a_spec, b_spec]]}[form]
        arg = [a, b]
    path = export(model, tmp_path, input_signature=sig)
    assert_close(fresh_process("saved_model_call", path, "serve", [arg]), np_out(model(arg)))


def test_signature_that_does_not_fit_the_model(tmp_path):
    model = two_inputs_two_outputs()
    spec = keras.InputSpec(shape=(None, 3))
    with pytest.raises(kexport.SignatureError, match=r"Expected `input_signature` to match the inputs"):
        kexport.export_model(model, str(tmp_path / "x"), input_signature=[[spec, spec, spec]])


def test_dynamic_sequence_length(tmp_path, fresh_process):
    model = sequence_model()
    path = export(model, tmp_path)
    info = fresh_process("saved_model_info", path)
    assert info["signatures"]["serve"]["inputs"]["seq"][0] == [None, None, 5]
    for n, t in ((2, 4), (3, 9)):
        x = rng(t).random((n, t, 5), dtype="float32")
        assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))


def test_default_endpoint_is_inference_mode(tmp_path, fresh_process):
    model = stochastic_model()
    bn = model.layers[-2]
    bn.moving_mean.assign(rng(3).random(16, dtype="float32"))
    bn.moving_variance.assign(1.0 + rng(4).random(16, dtype="float32"))
    path = export(model, tmp_path)
    x = rng().random((6, 8), dtype="float32")
    want = np_out(model(x, training=False))
    first, second = fresh_process("saved_model_call", path, "serve", [x], calls=2)
    np.testing.assert_array_equal(first, second)
    assert_close(first, want)
    assert not np.allclose(np_out(model(x, training=True)), want, atol=1e-3)


def test_rng_state_advances_like_the_live_layer(tmp_path, fresh_process):
    layer = NoisyLayer()
    layer(np.zeros((2, 3), "float32"))
    path = export(layer, tmp_path, input_signature=[keras.InputSpec(shape=(None, 3))])
    x = np.zeros((2, 3), "float32")
    live = [np_out(layer(x)), np_out(layer(x))]
    got = fresh_process("saved_model_call", path, "serve", [x], calls=2)
    assert_close(got, live)
    assert not np.allclose(got[0], got[1])


@pytest.mark.backends("jax")
def test_jax_is_static_freezes_state(tmp_path, fresh_process):
    layer = NoisyLayer()
    layer(np.zeros((2, 3), "float32"))
    path = export(layer, tmp_path, input_signature=[keras.InputSpec(shape=(None, 3))],
                  is_static=True)
    x = np.zeros((2, 3), "float32")
    first, second = fresh_process("saved_model_call", path, "serve", [x], calls=2)
    np.testing.assert_array_equal(first, second)
    assert_close(first, np_out(layer(x)))


@pytest.mark.backends("jax")
def test_jax2tf_kwargs_polymorphic_shapes_and_native_serialization(tmp_path, fresh_process):
    model = sequence_model()
    path = export(model, tmp_path, jax2tf_kwargs={"polymorphic_shapes": ["(b, t, 5)"],
                                                  "native_serialization": True,
                                                  "with_gradient": True})
    x = rng().random((3, 6, 5), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))
    # The gradient module is lowered while saving: it must not carry source paths either.
    data = (tmp_path / "sm" / "saved_model.pb").read_bytes()
    assert os.getcwd().encode() not in data and b"site-packages" not in data
    with pytest.raises(kexport.SignatureError, match="only supports native serialization"):
        export(model, tmp_path, name="b", jax2tf_kwargs={"native_serialization": False})
    with pytest.raises(kexport.SignatureError, match="invalid jax2tf_kwargs"):
        export(model, tmp_path, name="c", jax2tf_kwargs={"no_such_option": 1})
    with pytest.raises(kexport.SignatureError, match="Expected `is_static` to be a bool"):
        export(model, tmp_path, name="d", is_static="yes")


@pytest.mark.backends("tensorflow")
def test_jax_kwargs_are_refused_on_tensorflow(tmp_path):
    with pytest.raises(kexport.SignatureError, match=r"only apply to the JAX backend"):
        export(mlp(), tmp_path, is_static=True)


def test_verbose_prints_summary_and_false_prints_nothing(tmp_path, capsys):
    model = mlp()
    kexport.export_model(model, str(tmp_path / "quiet"), verbose=False)
    assert capsys.readouterr().out == ""
    kexport.export_saved_model(model, str(tmp_path / "loud"))  # None: SavedModel default prints
    out = capsys.readouterr().out
    assert "endpoint 'serve' (also serving_default)" in out
    assert "input  x: float32(None, 8)" in out
    assert "output probs: float32(None, 3)" in out
    assert "wrote tf_saved_model artifact" in out


def test_pathlib_path_and_metadata_without_local_paths(tmp_path):
    import json

    path = tmp_path / "pl"
    kexport.export_model(mlp(), path, verbose=False)
    meta = json.loads((path / "assets.extra" / "kexport.json").read_text())
    assert meta["producer"] == "kexport"
    assert meta["backend"] == keras.backend.backend()
    assert meta["endpoints"]["serve"]["outputs"][0]["name"] == "probs"
    # the same manifest keys as every other format (these two were missing once)
    assert meta["format"] == "tf_saved_model" and meta["default_endpoint"] == "serve"
    needles = [str(tmp_path).encode(), os.getcwd().encode(), os.path.expanduser("~").encode()]
    for f in path.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for needle in needles:
                assert needle not in data, (f.name, needle)


def test_failed_write_keeps_previous_artifact_and_leaves_no_temp(tmp_path, monkeypatch, fresh_process):
    import tensorflow as tf

    model = mlp()
    path = export(model, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken_save(obj, export_dir, **kw):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(kexport.WriteError, match="disk full"):
        kexport.export_model(mlp(), path, verbose=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    x = rng().random((2, 8), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))


def test_unknown_format_suggests_the_closest(tmp_path):
    with pytest.raises(kexport.UnsupportedRouteError, match=r"Did you mean 'tf_saved_model'"):
        kexport.export_model(mlp(), str(tmp_path / "x"), format="tf_savedmodel")


def test_not_a_model_is_refused(tmp_path):
    with pytest.raises(kexport.SignatureError, match=r"Expected `model` to be a Keras model or layer\. Received: 'model' \(of type str\)"):
        kexport.export_model("model", str(tmp_path / "x"))


@pytest.mark.backends("jax")
def test_jax_model_with_lookup_layer_is_rehosted_on_tensorflow(tmp_path, fresh_process, capsys):
    lookup = keras.layers.IntegerLookup(vocabulary=[12, 36, 7], name="ids_lookup")
    inputs = keras.Input((3,), dtype="int64", name="ids")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(
        keras.ops.cast(lookup(inputs), "float32")))
    path = str(tmp_path / "sm")
    kexport.export_model(model, path, verbose=True)
    assert "re-hosted from the jax backend onto tensorflow" in capsys.readouterr().out
    x = np.array([[7, 12, 99], [36, 36, 1]], dtype="int64")
    got = fresh_process("saved_model_signature", path, "serving_default", {"ids": x})
    assert_close(got["y"], np_out(model(x)))
    route = routing.resolve("jax", "tf_saved_model", model)
    assert route.kind == "rehost"
    assert "'ids_lookup' (IntegerLookup)" in routing.routes("jax", "tf_saved_model")[0].problem(model)

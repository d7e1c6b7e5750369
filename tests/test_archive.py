"""ExportArchive on the TensorFlow and JAX backends: endpoints, resources, options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kexport
from models import assert_close, mlp, np_out, rng, stochastic_model, two_inputs_two_outputs

pytestmark = pytest.mark.backends("tensorflow", "jax")

SPEC8 = [keras.InputSpec(shape=(None, 8), dtype="float32")]


def test_inference_and_training_endpoints(tmp_path, fresh_process):
    model = stochastic_model()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("call_inference", lambda x: model.call(x, training=False), SPEC8)
    archive.add_endpoint("call_training", lambda x: model.call(x, training=True), SPEC8)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = rng().random((5, 8), dtype="float32")
    info = fresh_process("saved_model_info", path)
    assert set(info["signatures"]) == {"call_inference", "call_training", "serving_default"}
    assert_close(fresh_process("saved_model_call", path, "call_inference", [x]),
                 np_out(model(x, training=False)))
    trained = fresh_process("saved_model_call", path, "call_training", [x])
    assert trained.shape == (5, 3)
    assert not np.allclose(trained, np_out(model(x, training=False)), atol=1e-3)
    # serving_default is the first endpoint
    got = fresh_process("saved_model_signature", path, "serving_default", {"input_0": x})
    assert_close(got["y"], np_out(model(x, training=False)))


def test_model_call_with_two_input_list_and_dict_signatures(tmp_path, fresh_process):
    model = two_inputs_two_outputs()
    a, b = rng(1).random((2, 3), dtype="float32"), rng(2).random((2, 4), dtype="float32")
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [[keras.InputSpec(shape=(None, 3), name="a"),
                                                keras.InputSpec(shape=(None, 4), name="b")]])
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    assert_close(fresh_process("saved_model_call", path, "serve", [[a, b]]), np_out(model([a, b])))
    got = fresh_process("saved_model_signature", path, "serve", {"a": a, "b": b})
    assert sorted(got) == ["y1", "y2"]


def test_endpoint_named_serving_default_is_not_duplicated(tmp_path, fresh_process):
    model = mlp()
    archive = kexport.ExportArchive()
    archive.add_endpoint("other", model.call, SPEC8)
    archive.add_endpoint("serving_default", lambda x: model(x) * 2.0, SPEC8)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = rng().random((2, 8), dtype="float32")
    info = fresh_process("saved_model_info", path)
    assert set(info["signatures"]) == {"other", "serving_default"}
    got = fresh_process("saved_model_signature", path, "serving_default", {"input_0": x})
    assert_close(next(iter(got.values())), 2.0 * np_out(model(x)))


def test_endpoints_track_variables_automatically(tmp_path, fresh_process):
    model = mlp()
    archive = kexport.ExportArchive()  # no track(): variables found from the endpoint
    archive.add_endpoint("serve", model.call, SPEC8)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = rng().random((3, 8), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))


@pytest.mark.backends("tensorflow")
def test_traced_tf_function_endpoint(tmp_path, fresh_process):
    import tensorflow as tf

    model = mlp()

    @tf.function()
    def serving_fn(x):
        return {"doubled": model(x) * 2.0}

    with pytest.raises(kexport.SignatureError, match="never called"):
        kexport.ExportArchive().add_endpoint("serve", serving_fn)
    serving_fn(tf.random.normal((2, 8)))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serving_fn)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = rng().random((5, 8), dtype="float32")  # traced at batch 2: batch stays dynamic
    got = fresh_process("saved_model_signature", path, "serve", {"x": x})
    assert_close(got["doubled"], 2.0 * np_out(model(x)))


@pytest.mark.backends("jax")
def test_jax2tf_converted_endpoint(tmp_path, fresh_process):
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = mlp()
    tf_fn = tf.function(jax2tf.convert(lambda x: model(x), polymorphic_shapes=["(b, 8)"]),
                        autograph=False, input_signature=[tf.TensorSpec((None, 8), tf.float32)])
    tf_fn(tf.zeros((2, 8)))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", tf_fn)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = rng().random((4, 8), dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(x)))


def test_variables_collections_and_function_aliases(tmp_path, fresh_process):
    import tensorflow as tf

    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 8), "float32"), np.ones((4, 3), "float32"), epochs=1, verbose=0)
    archive = kexport.ExportArchive()
    archive.track(model)
    fn = archive.add_endpoint("serve", model.call, SPEC8)
    archive.add_variable_collection("optimizer_variables", model.optimizer.variables)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False,
                      options=tf.saved_model.SaveOptions(function_aliases={"serve_alias": fn}))
    info = fresh_process("saved_model_info", path)
    attrs = info["attrs"]
    assert len(attrs["variables"]) == len(model.variables)
    assert len(attrs["trainable_variables"]) == len(model.trainable_variables)
    assert len(attrs["non_trainable_variables"]) == len(model.non_trainable_variables)
    for got, want in zip(attrs["trainable_variables"], model.trainable_variables):
        np.testing.assert_array_equal(got, np.asarray(want.numpy()))
    collection = fresh_process("saved_model_collection", path, "optimizer_variables")
    assert len(collection) == len(model.optimizer.variables)
    for got, want in zip(collection, model.optimizer.variables):
        np.testing.assert_array_equal(got, np.asarray(want.numpy()))
    meta = fresh_process("saved_model_function_aliases", path)
    assert "serve_alias" in meta.values()


def test_saved_model_cli_shows_every_signature(tmp_path):
    model = mlp()
    archive = kexport.ExportArchive()
    archive.add_endpoint("first", model.call, SPEC8)
    archive.add_endpoint("second", lambda x: model(x) + 1.0, SPEC8)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    assert cli, "saved_model_cli ships with tensorflow"
    proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in ("first", "second", "serving_default"):
        assert f"signature_def['{key}']" in proc.stdout
    assert "inputs['input_0'] tensor_info" in proc.stdout
    assert "outputs['probs'] tensor_info" in proc.stdout


def _string_lookup_model():
    lookup = keras.layers.StringLookup(vocabulary=["cat", "dog", "bird"])
    inputs = keras.Input((2,), dtype="string", name="words")
    return keras.Model(inputs, lookup(inputs), name="lookup_model")


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("kind", ["string", "integer", "text"])
def test_lookup_layers_tables_tracked_automatically(kind, tmp_path, fresh_process):
    if kind == "string":
        model = _string_lookup_model()
        x = np.array([["dog", "cat"], ["fish", "bird"]])
        spec = [keras.InputSpec(shape=(None, 2), dtype="string")]
    elif kind == "integer":
        lookup = keras.layers.IntegerLookup(vocabulary=[12, 36, 7])
        inputs = keras.Input((3,), dtype="int64", name="ids")
        model = keras.Model(inputs, lookup(inputs))
        x = np.array([[7, 12, 99]], dtype="int64")
        spec = [keras.InputSpec(shape=(None, 3), dtype="int64")]
    else:
        model = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=4)
        model.adapt(["the cat sat", "the dog ran far"])
        x = np.array(["the dog sat", "a cat"])
        spec = [keras.InputSpec(shape=(None,), dtype="string")]
    want = np_out(model(x))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, spec)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), want)
    # export_model finds the table too
    path2 = str(tmp_path / "b")
    kexport.export_model(model, path2, verbose=False, input_signature=spec)
    assert_close(fresh_process("saved_model_call", path2, "serve", [x]), want)


@pytest.mark.backends("tensorflow")
def test_static_hash_table_with_track_and_add_endpoint(tmp_path, fresh_process):
    import tensorflow as tf

    inputs = keras.Input((5,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([0, 1, 2], tf.int64),
                                            tf.constant([10.0, 20.0, 30.0])),
        default_value=0.0)
    archive = kexport.ExportArchive()
    model_fn = archive.track_and_add_endpoint(
        "model_fn", model, input_signature=[tf.TensorSpec(shape=(None, 5), dtype=tf.float32)])
    archive.track(table)

    @tf.function()
    def serving_fn(x):
        return model_fn(table.lookup(x))

    serving_fn(tf.zeros((2, 5), tf.int64))
    archive.add_endpoint("serve", serving_fn)
    path = str(tmp_path / "a")
    archive.write_out(path, verbose=False)
    x = np.array([[0, 1, 2, 3, 1]], dtype="int64")
    mapped = np.array([[10, 20, 30, 0, 20]], dtype="float32")
    assert_close(fresh_process("saved_model_call", path, "serve", [x]), np_out(model(mapped)))
    assert_close(fresh_process("saved_model_call", path, "model_fn", [mapped]), np_out(model(mapped)))


@pytest.mark.backends("tensorflow")
def test_untracked_table_is_a_typed_error(tmp_path):
    import tensorflow as tf

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant([1]), tf.constant([2])), default_value=0)

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.int32)])
    def serve(x):
        return table.lookup(x)

    archive = kexport.ExportArchive()
    archive.add_endpoint("serve", serve)
    with pytest.raises(kexport.CaptureError, match=r"(?s)not tracked.*StaticHashTable.*archive\.track\(resource\)"):
        archive.write_out(str(tmp_path / "a"), verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_archive_errors(tmp_path):
    model = mlp()
    archive = kexport.ExportArchive()
    with pytest.raises(kexport.SignatureError, match="at least one endpoint"):
        archive.write_out(str(tmp_path / "a"))
    archive.add_endpoint("serve", model.call, SPEC8)
    with pytest.raises(kexport.SignatureError, match="'serve' is already taken"):
        archive.add_endpoint("serve", model.call, SPEC8)
    with pytest.raises(kexport.SignatureError, match="shapes and dtypes of the inputs of `fn` are unknown"):
        archive.add_endpoint("other", model.call)
    with pytest.raises(kexport.SignatureError, match="Python identifier"):
        archive.add_endpoint("../escape", model.call, SPEC8)
    with pytest.raises(kexport.SignatureError, match="non-empty str"):
        archive.add_endpoint("", model.call, SPEC8)
    with pytest.raises(kexport.SignatureError, match="one entry per positional argument"):
        archive.add_endpoint("two", model.call, SPEC8 + SPEC8)
    with pytest.raises(kexport.SignatureError, match=r"list/tuple/set of keras\.Variable"):
        archive.add_variable_collection("vars", [1, 2])
    with pytest.raises(kexport.SignatureError, match="not already used"):
        archive.add_variable_collection("serve", model.variables)
    with pytest.raises(kexport.SignatureError, match=r"Expected each leaf of `input_signature`"):
        archive.add_endpoint("bad", model.call, ["not a spec"])
    with pytest.raises(kexport.SignatureError, match="SaveOptions"):
        archive.write_out(str(tmp_path / "b"), options={"x": 1})
    with pytest.raises(kexport.CaptureError, match="not built"):
        archive.track(keras.layers.Dense(3))


def test_write_out_verbose_summary(tmp_path, capsys):
    model = mlp()
    archive = kexport.ExportArchive()
    archive.add_endpoint("serve", model.call, SPEC8)
    archive.add_endpoint("twice", lambda x: model(x) * 2, SPEC8)
    archive.write_out(str(tmp_path / "a"))
    out = capsys.readouterr().out
    assert "endpoint 'serve' (also serving_default)" in out
    assert "endpoint 'twice'" in out


@pytest.mark.backends("jax")
def test_jax_refuses_lookup_layers_by_name(tmp_path):
    lookup = keras.layers.IntegerLookup(vocabulary=[12, 36, 7], name="ids_lookup")
    inputs = keras.Input((3,), dtype="int64", name="ids")
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.ops.cast(lookup(inputs), "float32")))
    archive = kexport.ExportArchive()
    archive.track(model)
    with pytest.raises(kexport.CaptureError,
                       match=r"jax2tf cannot trace the TensorFlow lookup tables of layer\(s\) "
                             r"'ids_lookup' \(IntegerLookup\).*KERAS_BACKEND=tensorflow"):
        archive.add_endpoint("serve", model.call, [keras.InputSpec(shape=(None, 3), dtype="int64")])

"""Re-hosting: routes through a child process on another backend, verified before writing.

The PyTorch backend has no native SavedModel route (Keras needs torch_xla), so
there the whole ExportArchive API runs through re-hosting onto TensorFlow.
Child processes cost seconds each, so each backend run spawns at most two and
module-scoped fixtures share them between tests.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import pytest

import kexport
import rehost_layers
from kexport import artifact, rehost, routing
from kexport.capture import endpoint
from kexport.errors import (
    CaptureValueError,
    SignatureError,
    UnsupportedRouteError,
    VerificationError,
)
from kexport.rehost import recipe

BACKEND = keras.backend.backend()
L = keras.layers


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# -- the route tables--------------------------------------------------------------------------------
def test_routes_table_orders_native_first_and_names_rehost_for_torch_saved_model():
    table = kexport.routes()
    assert table == routing.routes()
    cells = routing.matrix()
    assert set(cells) == {(b, f) for b in artifact.BACKENDS for f in artifact.FORMATS}
    for found in cells.values():
        kinds = [r.kind for r in found]
        assert kinds == sorted(kinds, key=["native", "rehost"].index)
    (torch_sm,) = routing.routes("torch", "tf_saved_model")
    assert torch_sm.kind == "rehost" and torch_sm.host == "tensorflow"
    assert "tensorflow" in torch_sm.via and callable(torch_sm.export)
    assert torch_sm.to_json()["available"] is True


def test_route_reason_names_missing_package_and_pip_install(monkeypatch):
    def export(*args, **kwargs):
        raise AssertionError("a route with a missing package must not run")

    fake = routing.Route("torch", "tf_saved_model", "native", "torch_xla -> tf.saved_model",
                         export, ("kexport_no_such_pkg",), "xla")
    monkeypatch.setattr(routing.table, "_ROUTES", [fake])
    assert fake.problem() == "missing kexport_no_such_pkg: pip install 'kexport[xla]'"
    with pytest.raises(UnsupportedRouteError,
                       match=r"native \(torch_xla -> tf.saved_model\): missing kexport_no_such_pkg"):
        routing.resolve("torch", "tf_saved_model")


def test_resolve_keeps_rehost_route_for_model_with_local_class():
    class Local(L.Layer):  # defined in a function: it travels by value (recipe.py)
        def call(self, x):
            return x

    model = keras.Sequential([keras.Input((2,)), Local()])
    found = routing.resolve("torch", "tf_saved_model", model)
    assert (found.kind, found.host) == ("rehost", "tensorflow")


def test_torch_archive_capture_is_registered():
    how, packages, _ = routing.captures()["torch"]
    assert how.startswith("rehost") and packages == ("tensorflow",)


# -- endpoints as data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    i = keras.Input((4,), name="x")
    return keras.Model(i, L.Dense(2, name="y")(L.Dropout(0.5)(i)))


def _recipe(fn, model):
    from kexport.signature import Spec

    sig = [Spec((None, 4), "float32")]
    return endpoint.describe_endpoint("ep", fn, [model], sig, "torch", "tensorflow")


def test_describe_endpoint_methods_and_training_lambdas(small):
    model = small
    assert _recipe(model.call, model).method == "call"
    assert _recipe(model.__call__, model).method == "__call__"
    assert _recipe(model, model).method == "__call__"
    r = _recipe(lambda x: model(x, training=True), model)
    assert (r.model, r.method, r.kwargs) == (0, "__call__", {"training": True})
    r = _recipe(lambda x: model.call(x, training=False), model)
    assert (r.method, r.kwargs) == ("call", {"training": False})
    r = _recipe(lambda *args: model(*args, training=False), model)
    assert (r.method, r.kwargs) == ("__call__", {"training": False})

    def plain(x):
        return model(x)

    assert _recipe(plain, model).kwargs == {}


@pytest.mark.parametrize("fn_name, why", [
    ("extra", "it does more than return the result of one call"),
    ("swapped", "does not pass its arguments"),
    ("not_a_model", "which is not a Keras layer or model"),
    ("own_arg", "it calls its own argument"),
])
def test_describe_endpoint_refuses_closures_it_cannot_carry(small, fn_name, why):
    model = small
    other = np.abs
    fns = {
        "extra": lambda x: model(x, training=False) * 2.0,
        "swapped": lambda x, y: model(y, x),
        "not_a_model": lambda x: other(x),
        "own_arg": lambda f, x: f(x),
    }
    with pytest.raises(UnsupportedRouteError) as info:
        _recipe(fns[fn_name], model)
    text = str(info.value)
    assert "Endpoint 'ep': on the torch backend" in text
    assert why in text
    assert "lambda x: model(x, training=False)" in text  # what is expected
    assert "Next step" in text


def test_main_classes_travel_by_value():
    class InMain(L.Layer):
        def call(self, x):
            return x * 2.0

    InMain.__module__ = "__main__"
    InMain.__qualname__ = "InMain"
    model = keras.Sequential([keras.Input((3,)), InMain(name="mine")])
    assert rehost.rehost_problem(model) == ""
    rebuilt = recipe.rebuild_model(recipe.describe_model(model))
    assert rebuilt.get_layer("mine").__class__.__name__ == "InMain"
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(_np(rebuilt(x)), _np(model(x)))
    ok = keras.Sequential([keras.Input((3,)), rehost_layers.NoisyScale()])
    assert rehost.rehost_problem(ok) == ""


def test_rehost_export_rejects_bad_arguments(small):
    with pytest.raises(SignatureError, match=r"Expected `model` to be a Keras model"):
        rehost.rehost_export("model.keras", "out")
    with pytest.raises(SignatureError, match=r"Expected `verbose` to be True, False or None"):
        rehost.rehost_export(small, "out", verbose="yes")
    with pytest.raises(SignatureError, match=r"plain values"):
        rehost.rehost_export(small, "out", opset_version=object())


# -- PyTorch: the whole ExportArchive API through re-hosting (one child process) ------------------


@pytest.fixture(scope="module")
def torch_archive(fresh_process):
    model = rehost_layers.stateful_classifier()
    spec = [keras.InputSpec(shape=(None, 6), dtype="float32", name="feat")]
    archive = kexport.ExportArchive()
    archive.track(model)
    served = archive.add_endpoint("serve", lambda x: model(x, training=False), spec)
    archive.add_endpoint("train", lambda x: model(x, training=True), spec)
    archive.track_and_add_endpoint("features", model.get_layer("noisy"), spec)
    archive.add_variable_collection("head_vars", model.get_layer("probs").variables)
    state_before = [_np(v) for v in model.variables]
    tmp = tempfile.mkdtemp(prefix="kx_rehost_archive_")
    path = os.path.join(tmp, "sm")
    archive.write_out(path, verbose=False)
    state_after = [_np(v) for v in model.variables]
    rng = np.random.default_rng(5)
    args = [rng.standard_normal((n, 6)).astype("float32") for n in (1, 7)]
    report = fresh_process("fresh_rehost:saved_model_report", path, args, args[1])
    return {"model": model, "path": path, "args": args, "report": report, "served": served,
            "state": (state_before, state_after)}


@pytest.mark.backends("torch")
def test_torch_archive_serve_matches_live_model_at_two_batch_sizes(torch_archive):
    model, report = torch_archive["model"], torch_archive["report"]
    for x, got, default in zip(torch_archive["args"], report["serve"], report["default"],
                               strict=True):
        want = _np(model(x, training=False))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(default["probs"], want, atol=1e-5, rtol=1e-5)
    x = torch_archive["args"][0]
    np.testing.assert_allclose(_np(torch_archive["served"](x)), _np(model(x, training=False)))


@pytest.mark.backends("torch")
def test_torch_archive_signatures_carry_keras_names_and_serving_default(torch_archive):
    sigs = torch_archive["report"]["signatures"]
    assert set(sigs) == {"serve", "train", "features", "serving_default"}
    assert sigs["serving_default"] == sigs["serve"] == {"inputs": ["feat"], "outputs": ["probs"]}
    assert sigs["features"]["inputs"] == ["feat"]


@pytest.mark.backends("torch")
def test_torch_archive_custom_layer_method_endpoint(torch_archive):
    layer = torch_archive["model"].get_layer("noisy")
    for x, got in zip(torch_archive["args"], torch_archive["report"]["features"], strict=True):
        np.testing.assert_allclose(got, _np(layer(x)), atol=1e-6)


@pytest.mark.backends("torch")
def test_torch_archive_carries_state_and_rng(torch_archive):
    model, report = torch_archive["model"], torch_archive["report"]
    before, after = torch_archive["state"]
    for a, b in zip(before, after, strict=True):  # write_out leaves the live model untouched
        np.testing.assert_array_equal(a, b)
    live = {v.path: _np(v) for v in model.non_trainable_variables}
    seeds = [v for p, v in live.items() if "seed_generator_state" in p]
    assert seeds  # the model has RNG state that must travel
    reloaded = report["non_trainable"]
    for path, value in live.items():  # BatchNorm statistics and seed states, by value
        assert any(r.shape == value.shape and np.array_equal(r, value) for r in reloaded), path
    first, second = report["train"]  # training=True endpoint: random and advancing
    assert first.shape == second.shape == (7, 3)
    assert not np.allclose(first, second)
    head = model.get_layer("probs").variables
    assert len(report["collection"]) == len(head)
    for got, v in zip(report["collection"], head, strict=True):
        np.testing.assert_array_equal(got, _np(v))


@pytest.mark.backends("torch")
def test_torch_archive_holds_no_local_paths(torch_archive):
    blob = torch_archive["report"]["bytes"]
    for local in (tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~"),
                  "kexport-rehost-", os.path.dirname(os.path.dirname(__file__))):
        assert local.encode() not in blob, local


@pytest.mark.backends("torch")
def test_torch_archive_rejects_tf_resources_and_jax_kwargs(small):
    import tensorflow as tf

    archive = kexport.ExportArchive()
    with pytest.raises(CaptureValueError, match=r"Expected a Keras layer or model \(on the torch "
                       r"backend, ExportArchive re-hosts them onto tensorflow\)\. Received: "):
        archive.track(object())
    with pytest.raises(UnsupportedRouteError, match=r"TensorFlow resources such as lookup tables "
                       r"can only be tracked with KERAS_BACKEND=tensorflow"):
        archive.track(tf.Variable(1.0))
    with pytest.raises(SignatureError, match=r"unexpected keyword arguments .* \['is_static'\]"):
        archive.add_endpoint("serve", small.call, [keras.InputSpec(shape=(None, 4))],
                             is_static=True)


# -- verification catches a model that computes differently once re-hosted -------------------------
@pytest.mark.backends("torch")
def test_torch_export_model_verifies_before_writing(tmp_path, capsys):
    """A layer that behaves differently per backend is caught; the old artifact survives."""
    i = keras.Input((3,), name="a")
    skewed = keras.Model(i, L.Dense(2, name="out")(rehost_layers.BackendSkew()(i)))
    target = tmp_path / "sm"
    target.mkdir()
    (target / "saved_model.pb").write_bytes(b"previous")
    with pytest.raises(VerificationError, match=r"does not compute what the live model computes") \
            as info:
        kexport.export_model(skewed, target, overwrite=True)
    report = info.value.report  # the report kexport.verify returns
    assert isinstance(report, kexport.VerificationReport) and not report.ok
    assert {c.case for c in report.checks} == {"batch 1", "batch 3"}
    assert not any(c.ok for c in report.checks) and report.checks[0].max_abs > 0.01
    assert (target / "saved_model.pb").read_bytes() == b"previous"


# -- TensorFlow and JAX: re-hosting is generic (onto the other backend) ----------------------------
_OTHER = {"tensorflow": "jax", "jax": "tensorflow", "torch": "tensorflow"}


@pytest.mark.backends("tensorflow", "jax")
def test_rehost_export_onto_other_backend_matches_live_model(tmp_path, fresh_process, capsys):
    i = keras.Input((None, 5), name="seq")  # dynamic batch and time axes
    norm = L.Normalization()  # adapted: mean/variance are derived from its variables
    norm.adapt(np.random.default_rng(1).normal(4.0, 3.0, (64, 7, 5)).astype("float32"))
    h = L.Dense(4, activation="tanh")(norm(i))
    model = keras.Model(i, L.Dense(2, name="y")(rehost_layers.NoisyScale()(h)))
    target = tmp_path / "sm"
    report = rehost.rehost_export(model, target, "tf_saved_model", _OTHER[BACKEND])
    assert report.ok and all(c.compared == "values" for c in report.checks)
    printed = capsys.readouterr().out
    assert f"re-hosted from the {BACKEND} backend onto {_OTHER[BACKEND]}" in printed
    assert str(target) in printed and "kexport-rehost-" not in printed
    manifest = artifact.read_manifest(target / artifact.SAVED_MODEL_MANIFEST)
    assert (manifest.format, manifest.backend) == ("tf_saved_model", _OTHER[BACKEND])
    assert (manifest.source_backend, manifest.route) == (BACKEND, "rehost")
    x = np.random.default_rng(3).standard_normal((3, 9, 5)).astype("float32")
    got = fresh_process("saved_model_signature", str(target), "serving_default", {"seq": x})
    np.testing.assert_allclose(got["y"], _np(model(x, training=False)), atol=1e-5)


@pytest.mark.backends("tensorflow", "jax")
def test_rehost_rebuilds_by_value_a_class_whose_config_is_incomplete(tmp_path, fresh_process):
    i = keras.Input((3,), name="a")
    model = keras.Model(i, rehost_layers.ForgetsConfig(3)(i))  # get_config drops `units`
    target = tmp_path / "sm"
    report = rehost.rehost_export(model, target, "tf_saved_model", _OTHER[BACKEND], verbose=False)
    assert report.ok and all(c.compared == "values" for c in report.checks)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    got = fresh_process("saved_model_signature", str(target), "serving_default", {"a": x})
    np.testing.assert_allclose(next(iter(got.values())), x * 3.0)


# -- a model the host backend computes differently ----------------------------------------------------
def _windowed_attention_model(mask_key="padding_mask"):
    """Attention over a sliding window of 2 with padding, computed as keras_hub's
    attention layers do: a fused ``dot_product_attention`` where the backend has
    one (JAX, PyTorch), a masked ``Softmax`` layer elsewhere (TensorFlow). A
    padded query 2 or more steps past the last real token sees no key: the fused
    op averages every value there, the Softmax layer gives zeros."""
    ops = keras.ops

    class Attend(L.Layer):
        def __init__(self):
            super().__init__()
            self.softmax = L.Softmax(axis=-1)

        def call(self, x, mask):
            if keras.backend.backend() != "tensorflow":
                q = ops.expand_dims(x, 2)
                return ops.squeeze(ops.dot_product_attention(
                    q, q, q, mask=ops.expand_dims(mask, 1), scale=1.0), 2)
            weights = self.softmax(ops.einsum("bqd,bkd->bqk", x, x), mask=mask)
            return ops.einsum("bqk,bkd->bqd", weights, x)

    class Windowed(keras.Model):
        def __init__(self):
            super().__init__()
            self.proj = L.Dense(4)
            self.attend = Attend()
            self.head = L.Dense(3)

        def call(self, inputs):
            x = self.proj(inputs["features"])
            n = ops.shape(x)[1]
            i, j = ops.arange(n)[:, None], ops.arange(n)[None, :]
            band = ops.logical_and(j <= i, j > i - 2)
            keys = ops.cast(inputs[mask_key], "bool")[:, None, :]
            return self.head(self.attend(x, ops.logical_and(band[None], keys)))

    return Windowed()


def _windowed_inputs(kept, mask_key="padding_mask"):
    rng = np.random.default_rng(5)
    mask = (np.arange(6)[None, :] < np.asarray(kept)[:, None]).astype("int32")
    return {"features": rng.standard_normal((len(kept), 6, 3)).astype("float32"),
            mask_key: mask}


@pytest.mark.backends("jax", "torch")
def test_rehost_refusal_names_the_layer_the_host_backend_computes_differently(
        tmp_path, fresh_process):
    model = _windowed_attention_model()
    defined = _windowed_inputs([6, 5, 5])  # one padded step: every query sees a key
    model(defined)
    target = tmp_path / "sm"
    flat = [defined["features"], defined["padding_mask"]]
    report = rehost.rehost_export(model, target, "tf_saved_model", "tensorflow",
                                  verbose=False, sample_inputs=[flat])
    assert report.ok and all(c.compared == "values" for c in report.checks)
    # the signature kexport infers for this subclassed model holds the mask as float32
    fed = {**defined, "padding_mask": defined["padding_mask"].astype("float32")}
    got = fresh_process("saved_model_signature", str(target), "serving_default", fed)
    np.testing.assert_allclose(next(iter(got.values())), _np(model(defined)), atol=1e-5)

    # four padded steps: queries 2 and 3 steps past the last token see no key, and
    # the backends differ there; those positions are padding (undefined), so they are
    # not compared, and every real position agrees
    empty_rows = _windowed_inputs([6, 2, 5])
    accepted = tmp_path / "accepted"
    report = rehost.rehost_export(model, accepted, "tf_saved_model", "tensorflow",
                                  verbose=False, sample_inputs=[[empty_rows["features"],
                                                                 empty_rows["padding_mask"]]])
    assert report.ok
    assert [c.padded for c in report.checks] == [0 + 4 + 1]
    fed = {**empty_rows, "padding_mask": empty_rows["padding_mask"].astype("float32")}
    got = next(iter(fresh_process("saved_model_signature", str(accepted), "serving_default",
                                  fed).values()))
    live = _np(model(empty_rows))
    real = empty_rows["padding_mask"] == 1
    np.testing.assert_allclose(got[real], live[real], atol=1e-5)
    assert np.abs(got[~real] - live[~real]).max() > 0.1  # where the backends differ

    # the same model whose mask input's name does not say so: every position is
    # compared, the re-host is refused, and the refusal says the backend, not the
    # export, computes differently
    model = _windowed_attention_model(mask_key="keep")
    empty_rows = _windowed_inputs([6, 2, 5], mask_key="keep")
    model(empty_rows)
    refused = tmp_path / "refused"
    with pytest.raises(VerificationError) as caught:
        rehost.rehost_export(model, refused, "tf_saved_model", "tensorflow", verbose=False,
                             sample_inputs=[[empty_rows["features"], empty_rows["keep"]]])
    message = str(caught.value)
    assert not refused.exists()
    assert (f"The model rebuilt on the tensorflow backend already computes differently from "
            f"the live model on the {BACKEND} backend") in message
    attend = model.attend.name  # 'attend_1': the first model's layer took 'attend'
    assert (f"the first sublayer call whose outputs differ is '{attend}' (Attend" in message
            and f"its inputs agree, so the difference enters in '{attend}' itself" in message)

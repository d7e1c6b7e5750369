"""ExportArchive formats written by re-hosting the archive (routing.archive_host).

On the TensorFlow and JAX backends endpoints are ``tf.function`` objects, which
``torch.export`` cannot read, and JAX's hold ``XlaCallModule`` ops that OpenVINO
cannot read. Their captures also record every endpoint as data, so
``write_out(format="torch")`` (and ``"openvino"`` on JAX) rebuilds the tracked
models on the host backend in the re-host worker, writes there, and compares
with the live endpoints before placing the artifact. Each test that reaches
the worker costs seconds, so the archive fixture is shared.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import keras
import numpy as np
import pytest

import kexport
import rehost_layers
from kexport import artifact, routing
from kexport.errors import UnsupportedRouteError, VerificationError

BACKEND = keras.backend.backend()
L = keras.layers
SPEC = [keras.InputSpec(shape=(None, 6), dtype="float32", name="feat")]
PAIR = [[keras.InputSpec(shape=(None, 3), name="a"), keras.InputSpec(shape=(None, 4), name="b")]]
BATCHES = (1, 7)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))




def _encoder():
    a, b = keras.Input((3,), name="a"), keras.Input((4,), name="b")
    h = L.Concatenate()([L.Dense(5, activation="tanh")(a), b])
    return keras.Model([a, b], L.Dense(2, name="z")(h))


def _inputs(seed=5):
    rng = np.random.default_rng(seed)
    return {n: {"feat": rng.standard_normal((n, 6)).astype("float32"),
                "a": rng.standard_normal((n, 3)).astype("float32"),
                "b": rng.standard_normal((n, 4)).astype("float32")} for n in BATCHES}


@pytest.fixture(scope="module")
def archive():
    model, encoder = rehost_layers.stateful_classifier(), _encoder()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.track(encoder)
    archive.add_endpoint("serve", lambda x: model(x, training=False), SPEC)
    archive.add_endpoint("encode", encoder.call, PAIR)  # a second model, by its method
    archive.add_variable_collection("head", model.get_layer("probs").variables)
    return archive, model, encoder


def _want(model, encoder, xs):
    return {"serve": _np(model(xs["feat"], training=False)),
            "encode": _np(encoder([xs["a"], xs["b"]]))}


def _no_local_paths(blob: bytes):
    for local in (tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~"),
                  "kexport-rehost-", os.path.dirname(os.path.dirname(__file__))):
        assert local.encode() not in blob, local


# -- the route tables----------------------------------------------------------------------------
def test_route_tables_say_which_archives_are_rehosted_and_onto_what():
    assert routing.archive_host("tensorflow", "torch") == "torch"
    assert routing.archive_host("jax", "torch") == "torch"
    assert routing.archive_host("jax", "openvino") == "tensorflow"
    assert routing.archive_host("jax", "onnx") == "tensorflow"
    for fmt in ("tf_saved_model", "onnx", "litert", "openvino"):
        assert routing.archive_host("tensorflow", fmt) is None
    # the PyTorch capture: written natively where it can, on tensorflow otherwise
    assert routing.archive_host("torch", "torch") is None
    assert routing.archive_host("torch", "openvino") is None
    assert routing.archive_host("torch", "tf_saved_model") == "tensorflow"
    # a host never re-hosts again (no loop through the worker)
    for fmt in artifact.FORMATS:
        for b in artifact.BACKENDS:
            host = routing.archive_host(b, fmt)
            assert host != b and (host is None or routing.archive_host(host, fmt) is None)
    with pytest.raises(UnsupportedRouteError, match=r"Expected `format` to be one of"):
        routing.archive_host("jax", "pt2")


def test_endpoints_as_data_partials_and_untracked_models():
    from kexport.capture.endpoint import recipe_or_reason
    from kexport.signature import Spec

    model, other = _encoder(), rehost_layers.stateful_classifier()
    sig = [Spec((None, 6), "float32")]
    r = recipe_or_reason("ep", functools.partial(model.call, training=False), [model], sig)
    assert (r.model, r.method, r.kwargs) == (0, "call", {"training": False})
    r = recipe_or_reason("ep", functools.partial(lambda x: model(x, training=True),
                                                        mask=None), [model], sig)
    assert (r.method, r.kwargs) == ("__call__", {"training": True, "mask": None})
    assert "positional arguments" in recipe_or_reason(
        "ep", functools.partial(model, 1.0), [model], sig)
    assert recipe_or_reason("ep", other.call, [model], sig) == (
        f"it calls Functional '{other.name}', which is not tracked (archive.track() it first)")


# -- .pt2 programs from TensorFlow and JAX archives ------------------------------------------
@pytest.mark.backends("tensorflow", "jax")
def test_archive_written_as_torch_programs_matches_live_models(archive, tmp_path, fresh_process,
                                                               capsys):
    archive, model, encoder = archive
    out = tmp_path / "programs"
    archive.write_out(out, format="torch")
    printed = capsys.readouterr().out
    assert f"re-hosted from the {BACKEND} backend onto torch; verified 4 sample batches" in printed
    assert sorted(p.name for p in out.iterdir()) == ["encode.pt2", "kexport.json", "serve.pt2"]
    xs = _inputs()
    serve, encode = fresh_process("fresh_formats:torch_run", [
        (str(out / "serve.pt2"), [[xs[n]["feat"]] for n in BATCHES]),
        (str(out / "encode.pt2"), [[xs[n]["a"], xs[n]["b"]] for n in BATCHES])])
    assert serve["inputs"] == ["feat"] and encode["inputs"] == ["a", "b"]
    for n, (s,), (e,) in zip(BATCHES, serve["outputs"], encode["outputs"], strict=True):
        want = _want(model, encoder, xs[n])
        assert s.shape == (n, 3) and e.shape == (n, 2)
        np.testing.assert_allclose(s, want["serve"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(e, want["encode"], atol=1e-5, rtol=1e-5)
    manifest = json.loads(serve["manifest"])
    assert manifest["format"] == "torch" and sorted(manifest["endpoints"]) == ["encode", "serve"]
    for f in out.iterdir():
        _no_local_paths(f.read_bytes())


# -- OpenVINO IR from JAX archives -------------------------------------------------------------
@pytest.mark.backends("jax")
def test_jax_archive_written_as_openvino_ir_matches_live_models(archive, tmp_path, fresh_process):
    archive, model, encoder = archive
    out = tmp_path / "ir"
    archive.write_out(out, format="openvino", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "encode.bin", "encode.xml", "kexport.json", "serve.bin", "serve.xml"]
    xs = _inputs(6)
    serve, encode = fresh_process("fresh_formats:openvino_run", [
        (str(out / "serve.xml"), [{"feat": xs[n]["feat"]} for n in BATCHES]),
        (str(out / "encode.xml"), [{"a": xs[n]["a"], "b": xs[n]["b"]} for n in BATCHES])])
    assert serve["inputs"] == ["feat"] and sorted(encode["inputs"]) == ["a", "b"]
    assert serve["shapes"]["feat"] == "[?,6]"
    for n, s, e in zip(BATCHES, serve["outputs"], encode["outputs"], strict=True):
        want = _want(model, encoder, xs[n])
        np.testing.assert_allclose(s["probs"], want["serve"], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(e["z"], want["encode"], atol=1e-5, rtol=1e-5)
    for f in out.iterdir():
        _no_local_paths(f.read_bytes())


# -- ONNX graphs from JAX archives --------------------------------------------------------------
@pytest.mark.backends("jax")
def test_jax_archive_written_as_onnx_matches_live_models(archive, tmp_path, fresh_process):
    archive, model, encoder = archive
    out = tmp_path / "graphs"
    archive.write_out(out, format="onnx", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "encode.onnx", "manifest.json", "serve.onnx", "weights.data"]
    xs = _inputs(7)
    got = fresh_process("fresh_onnx:run_many", {
        "serve": (str(out / "serve.onnx"), [{"feat": xs[n]["feat"]} for n in BATCHES]),
        "encode": (str(out / "encode.onnx"), [{"a": xs[n]["a"], "b": xs[n]["b"]}
                                              for n in BATCHES])})
    assert got["serve"]["session_inputs"] == ["feat"]
    assert got["encode"]["session_inputs"] == ["a", "b"]
    for i, n in enumerate(BATCHES):
        want = _want(model, encoder, xs[n])
        np.testing.assert_allclose(got["serve"]["results"][i][0], want["serve"], atol=1e-5,
                                   rtol=1e-5)
        np.testing.assert_allclose(got["encode"]["results"][i][0], want["encode"], atol=1e-5,
                                   rtol=1e-5)
    for f in out.iterdir():
        _no_local_paths(f.read_bytes())


# -- what cannot be re-hosted, and what verification catches ------------------------------------
# (ONNX on JAX is written in process by jax2onnx first, extra computation included:
# tests/test_onnx_jax_strategies.py)
_HOSTED = {"tensorflow": [("torch", "torch")],
           "jax": [("torch", "torch"), ("openvino", "tensorflow")]}.get(BACKEND, [])


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("fmt, host", _HOSTED or [("torch", "torch")])
def test_endpoint_with_extra_computation_is_refused_naming_it_and_the_next_step(
        tmp_path, fmt, host):
    model = rehost_layers.stateful_classifier()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, SPEC)
    archive.add_endpoint("doubled", lambda x: model(x, training=False) * 2.0, SPEC)
    target = tmp_path / "out"
    with pytest.raises(UnsupportedRouteError) as info:
        archive.write_out(target, format=fmt, verbose=False)
    text = str(info.value)
    assert text.startswith("Endpoint 'doubled': ExportArchive.write_out(format=")
    assert f"re-hosts the archive onto the {host} backend" in text
    assert "because it does more than return the result of one call" in text
    assert "lambda x: model(x, training=False)" in text
    assert "Next step: use such an endpoint" in text and f"KERAS_BACKEND={host}" in text
    assert not target.exists() and not list(tmp_path.iterdir())


@pytest.mark.backends("tensorflow", "jax")
def test_recording_endpoints_leaves_in_process_formats_alone(tmp_path, fresh_process):
    model = rehost_layers.stateful_classifier()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("doubled", lambda x: model(x, training=False) * 2.0, SPEC)
    described = archive.described_endpoints()
    assert described["doubled"][0] == "it does more than return the result of one call"
    path = str(tmp_path / "sm")
    archive.write_out(path, verbose=False)
    x = _inputs()[7]["feat"]
    got = fresh_process("saved_model_call", path, "doubled", [x])
    np.testing.assert_allclose(got, 2.0 * _np(model(x, training=False)), atol=1e-5)


@pytest.mark.backends("jax")
def test_jax2tf_kwargs_endpoint_is_refused_for_rehosted_formats(tmp_path):
    model = rehost_layers.stateful_classifier()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False), SPEC,
                         jax2tf_kwargs={"with_gradient": False})
    with pytest.raises(UnsupportedRouteError,
                       match=r"Endpoint 'serve': .*because it was added with jax2tf_kwargs"):
        archive.write_out(tmp_path / "p", format="torch", verbose=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.backends("tensorflow", "jax")
def test_rehosted_archive_is_verified_before_it_is_placed(tmp_path):
    i = keras.Input((3,), name="a")
    skewed = keras.Model(i, L.Dense(2, name="out")(rehost_layers.BackendSkew()(i)))
    archive = kexport.ExportArchive()
    archive.track(skewed)
    archive.add_endpoint("serve", skewed.call, [keras.InputSpec(shape=(None, 3), name="a")])
    target = tmp_path / "p.pt2"
    with pytest.raises(VerificationError, match=r"(?s)re-hosted from the .* onto torch does not "
                       r"compute what the live model computes.*endpoint 'serve' batch 1: "):
        archive.write_out(target, format="torch", verbose=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.backends("tensorflow")
def test_tracked_tensorflow_resource_is_refused_rather_than_dropped(tmp_path):
    import tensorflow as tf

    model = rehost_layers.stateful_classifier()
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(["a", "b"], [0, 1]), default_value=-1)
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.track(table)
    archive.add_endpoint("serve", lambda x: model(x, training=False), SPEC)
    with pytest.raises(UnsupportedRouteError, match=r"Expected no TensorFlow resource tracked "
                       r"with archive\.track\(\)\. Received: .*StaticHashTable"):
        archive.write_out(tmp_path / "p", format="torch", verbose=False)
    assert not (tmp_path / "p").exists()

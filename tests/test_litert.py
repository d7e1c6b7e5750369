"""LiteRT (.tflite): every model kind, reloaded with tf.lite in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kexport
from format_models import KINDS, build, cases, inputs, live
from kexport.artifact import read_litert_metadata
from kexport.check.compare import judge, quality
from kexport.check.tolerance import QUANTIZED, Thresholds
from kexport.errors import CaptureError, SignatureError, VerificationError
from kexport.formats import litert

NATIVE = pytest.mark.backends("tensorflow", "jax")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fresh_process):
    """Every kind exported once; one fresh process reloads them all at batch 3 and 7."""
    root = tmp_path_factory.mktemp("litert")
    built, jobs = {}, []
    for kind in KINDS:
        model, spec = build(kind)
        path = str(root / f"{kind}.tflite")
        kexport.export_model(model, path, format="litert", verbose=False)
        built[kind] = (model, spec, path, cases(model, kind, spec))
        jobs.append((path, "serve", [xs for xs, _ in built[kind][3]]))
    results = fresh_process("fresh_formats:litert_run", jobs)
    return {k: (built[k], r) for k, r in zip(KINDS, results)}


@NATIVE
@pytest.mark.parametrize("kind", KINDS)
def test_kind_matches_live_model_in_fresh_process(exported, kind):
    (_, spec, _path, want), got = exported[kind]
    assert got["signatures"]["serve"]["inputs"] == sorted(spec)
    assert got["signatures"]["serve"]["outputs"] == ["probs" if kind == "cnn" else "y"]
    for (_, ref), out in zip(want, got["outputs"]):
        (y,) = out.values()
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)
    # dynamic batch survives in the signature: the runtime may resize it
    assert all(s[0] == -1 for s in got["shape_signature"].values())


@NATIVE
def test_op_counts_count_each_builtin_operator(exported):
    (_, _, path, _), _ = exported["mlp"]
    counts = kexport.load(path).op_counts()["serve"]
    # two Dense layers: two FULLY_CONNECTED ops, the kinds the writer recorded
    assert counts["FULLY_CONNECTED"] == 2
    assert set(counts) == set(read_litert_metadata(path)["operators"])


@NATIVE
def test_lstm_uses_builtin_ops_only(exported):
    (_, _, path, _), _ = exported["lstm"]
    meta = read_litert_metadata(path)
    assert meta["producer"] == "kexport" and meta["quantization"] is None
    assert not [op for op in meta["operators"] if op.startswith("Flex")]
    assert "FULLY_CONNECTED" in meta["operators"]
    assert "/tmp" not in json.dumps(meta)


@NATIVE
def test_rnn_attributes_restored_after_export(exported):
    model = exported["lstm"][0][0]
    lstm = next(la for la in model.layers if isinstance(la, keras.layers.LSTM))
    assert lstm.unroll is False


@NATIVE
def test_quantization_modes_meet_their_thresholds(tmp_path, fresh_process):
    model, spec = build("mlp")
    model.layers[-2].kernel.assign(np.random.default_rng(1).normal(size=(8, 16)).astype("f"))
    rng = np.random.default_rng(0)
    data = [rng.random((1, 8), dtype="float32") for _ in range(32)]
    jobs, refs = [], []
    for mode in ("float16", "dynamic_int8", "int8"):
        path = str(tmp_path / f"{mode}.tflite")
        kexport.export_litert(model, path, verbose=False, quantization=mode,
                              representative_dataset=data if mode == "int8" else None)
        assert read_litert_metadata(path)["quantization"] == mode
        xs = inputs(spec, 3)
        jobs.append((path, "serve", [xs]))
        refs.append(live(model, "mlp", xs))
    results = fresh_process("fresh_formats:litert_run", jobs)
    for mode, ref, res in zip(("float16", "dynamic_int8", "int8"), refs, results):
        q = quality(ref, res["outputs"][0]["y"])
        assert judge(q, QUANTIZED[mode]) == [], (mode, q.metrics())
        # (the converter leaves weights under 1024 values float in float16 and dynamic_int8)
        assert q.noise > 0 or mode != "int8"  # full integer really is quantized
    assert "float16" in results[0]["dtypes"]
    assert "int8" in results[2]["dtypes"]


@NATIVE
def test_archive_writes_several_signatures_into_one_file(tmp_path, fresh_process):
    model, spec = build("multi")
    archive = kexport.ExportArchive()
    archive.track(model)
    sig = [[keras.InputSpec(shape=(None, 3), name="a"), keras.InputSpec(shape=(None, 4), name="b")]]
    archive.add_endpoint("serve", lambda x: model(x, training=False), sig)
    archive.add_endpoint("double", lambda x: model(x, training=False) * 2.0, sig)
    path = str(tmp_path / "two.tflite")
    archive.write_out(path, format="litert", verbose=False)
    xs = inputs(spec, 3)
    res = fresh_process("fresh_formats:litert_run",
                        [(path, "serve", [xs]), (path, "double", [xs])])
    assert set(res[0]["signatures"]) == {"serve", "double"}
    ref = live(model, "multi", xs)
    np.testing.assert_allclose(res[0]["outputs"][0]["y"], ref, atol=1e-5)
    np.testing.assert_allclose(res[1]["outputs"][0]["y"], 2 * ref, atol=1e-5)


@NATIVE
def test_reexport_replaces_own_artifact(tmp_path):
    model, _ = build("mlp")
    path = tmp_path / "m.tflite"
    kexport.export_litert(model, path, verbose=False)
    first = path.read_bytes()
    kexport.export_litert(model, path, verbose=False, quantization="float16")
    assert path.read_bytes() != first


def test_bad_quantization_is_a_typed_error(tmp_path):
    model, _ = build("mlp")
    with pytest.raises(SignatureError, match=r"Expected `quantization` to be one of .*"
                                             r"Received: quantization='int4'"):
        kexport.export_litert(model, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(SignatureError, match="Expected `calibration_data`"):
        kexport.export_litert(model, tmp_path / "m.tflite", quantization="int8")
    assert not (tmp_path / "m.tflite").exists()


def test_options_must_be_litert_options():
    with pytest.raises(SignatureError, match="Received unknown: \\['bogus'\\]"):
        litert.LiteRTOptions.coerce({"bogus": 1})
    with pytest.raises(SignatureError, match="Expected `allow_flex` to be True or False"):
        litert.LiteRTOptions(allow_flex="yes")


@pytest.mark.backends("tensorflow")
def test_flex_ops_are_refused_unless_allowed(tmp_path):
    import tensorflow as tf

    model, _ = build("mlp")
    archive = kexport.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="x")])
    def ragged(x):  # tf.math.bincount on floats cast to int has no builtin form
        return tf.math.bincount(tf.cast(x * 4, tf.int32), minlength=5, axis=-1)

    archive.add_endpoint("serve", ragged)
    with pytest.raises(CaptureError, match="pass allow_flex=True"):
        archive.write_out(tmp_path / "f.tflite", format="litert", verbose=False)
    assert not (tmp_path / "f.tflite").exists()
    # the check before placement cannot run it: the LiteRT interpreter has no Flex
    # delegate, so the artifact is refused, unless written unchecked
    counts = np.random.default_rng(0).random((3, 8), dtype="float32")  # bincount takes >= 0
    with pytest.raises(VerificationError, match=r"could not be run by its runtime: .*Flex"):
        archive.write_out(tmp_path / "f.tflite", format="litert", verbose=False,
                          options={"allow_flex": True}, sample_data=counts)
    assert not (tmp_path / "f.tflite").exists()
    archive.write_out(tmp_path / "f.tflite", format="litert", verbose=False,
                      options={"allow_flex": True}, verify=False)
    assert any(op.startswith("Flex") for op in read_litert_metadata(tmp_path / "f.tflite")["operators"])


@pytest.mark.backends("torch")
def test_torch_model_is_rehosted_onto_tensorflow(tmp_path, fresh_process):
    model, spec = build("dict")
    path = str(tmp_path / "d.tflite")
    kexport.export_litert(model, path, verbose=False)
    want = cases(model, "dict", spec)
    (res,) = fresh_process("fresh_formats:litert_run", [(path, "serve", [xs for xs, _ in want])])
    assert res["signatures"]["serve"]["inputs"] == ["a", "b"]
    for (_, ref), out in zip(want, res["outputs"]):
        np.testing.assert_allclose(out["y"], ref, atol=1e-5)


@NATIVE
def test_kexport_load_runs_signature_by_name(exported):
    (_, _, path, want), _ = exported["dict"]
    artifact = kexport.load(path)
    assert artifact.format == "litert" and artifact.default_endpoint == "serve"
    assert artifact.endpoints["serve"].input_names == ["a", "b"]
    xs, ref = want[1]
    np.testing.assert_allclose(artifact({"b": xs["b"], "a": xs["a"]})["y"], ref, atol=1e-5)
    with pytest.raises(SignatureError, match=r"expected inputs named \['a', 'b'\]"):
        artifact({"a": xs["a"]})


@pytest.mark.backends("torch")
def test_rehosted_full_integer_artifact_is_checked_on_its_calibration_data(
        tmp_path, fresh_process, monkeypatch):
    # int8 artifacts are only accurate on inputs like the calibration data, so
    # the re-host check compares values on those samples (not random ones)
    from kexport.errors import VerificationError

    model, _ = build("mlp")
    rng = np.random.default_rng(0)
    data = [rng.random((1, 8), dtype="float32") for _ in range(32)]
    path = tmp_path / "q.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="int8",
                          representative_dataset=data)
    assert read_litert_metadata(path)["quantization"] == "int8"
    xs = {"x": np.concatenate(data[10:13])}
    (res,) = fresh_process("fresh_formats:litert_run", [(str(path), "serve", [xs])])
    q = quality(live(model, "mlp", xs), res["outputs"][0]["y"])
    assert judge(q, QUANTIZED["int8"]) == []
    assert "int8" in res["dtypes"]
    # the values really are judged by the int8 thresholds: unreachable ones fail,
    # nothing written
    monkeypatch.setitem(QUANTIZED, "int8", Thresholds("int8", 200.0, 1.0, 1.0, 1.0))
    bad = tmp_path / "strict.tflite"
    with pytest.raises(VerificationError, match=r"(?s)the int8 thresholds.*SQNR .* dB < 200 dB"):
        kexport.export_litert(model, bad, verbose=False, quantization="int8",
                              representative_dataset=data)
    assert not bad.exists()


@pytest.mark.backends("torch")
def test_torch_archive_is_rehosted_into_one_tflite_with_a_signature_per_endpoint(
        tmp_path, fresh_process):
    model, spec = build("multi")
    i = keras.Input((4,), name="x")
    head = keras.Model(i, keras.layers.Dense(2, name="z")(i))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.track(head)
    sig = [[keras.InputSpec(shape=(None, 3), name="a"), keras.InputSpec(shape=(None, 4), name="b")]]
    archive.add_endpoint("serve", lambda x: model(x, training=False), sig)
    archive.add_endpoint("head", head.call, [keras.InputSpec(shape=(None, 4), name="x")])
    path = str(tmp_path / "two.tflite")
    archive.write_out(path, format="litert", verbose=False)
    xs = inputs(spec, 3)
    hx = {"x": np.random.default_rng(2).normal(size=(3, 4)).astype("float32")}
    res = fresh_process("fresh_formats:litert_run", [(path, "serve", [xs]), (path, "head", [hx])])
    assert set(res[0]["signatures"]) == {"serve", "head"}
    np.testing.assert_allclose(res[0]["outputs"][0]["y"], live(model, "multi", xs), atol=1e-5)
    np.testing.assert_allclose(res[1]["outputs"][0]["z"],
                               keras.ops.convert_to_numpy(head(hx["x"])), atol=1e-5)
    assert kexport.load(path).default_endpoint == "serve"


def _clean_load(tmp_path, path, want, *, block_litert):
    """kexport.load + run in a new interpreter (fresh_runtime.litert_clean_load)."""
    feeds = tmp_path / f"feeds{int(block_litert)}.npz"
    out = str(tmp_path / f"out{int(block_litert)}.npz")
    np.savez(feeds, **{f"{i}/{k}": v for i, (xs, _) in enumerate(want) for k, v in xs.items()})
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fresh_runtime; "
            "fresh_runtime.litert_clean_load(*sys.argv[2:])")
    subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__), path, str(feeds), out,
                    "1" if block_litert else "0"], check=True, timeout=600)
    with open(out + ".json") as f:
        info = json.load(f)
    got = np.load(out)
    for i, (_, ref) in enumerate(want):
        np.testing.assert_allclose(got[f"{i}/y"], ref, atol=1e-5, rtol=1e-4)
    return info


@NATIVE
def test_load_runs_with_ai_edge_litert_without_deprecation_warning(exported, tmp_path):
    (_, _, path, want), _ = exported["dict"]
    info = _clean_load(tmp_path, path, want, block_litert=False)
    assert info["interpreter"] == "ai_edge_litert" and info["ai_edge_litert_imported"]
    about_interpreter = [w for w in info["warnings"]
                         if "Interpreter" in w or "deprecated" in w.lower()]
    assert about_interpreter == []


@NATIVE
def test_load_falls_back_to_tf_lite_without_ai_edge_litert(exported, tmp_path):
    (_, _, path, want), _ = exported["dict"]
    info = _clean_load(tmp_path, path, want, block_litert=True)
    assert info["interpreter"] == "tensorflow" and not info["ai_edge_litert_imported"]
    # the fallback really is TensorFlow's interpreter: it warns about itself
    assert any("tf.lite.Interpreter is deprecated" in w for w in info["warnings"])


def test_interpreter_class_is_the_one_choice(monkeypatch):
    from kexport.runtime import litert as runtime

    name, cls = runtime.interpreter_class()
    assert (name, cls.__module__) == ("ai_edge_litert", "ai_edge_litert.interpreter")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    name, cls = runtime.interpreter_class()
    assert name == "tensorflow" and cls.__module__.startswith("tensorflow")


@NATIVE
def test_shared_quantization_option(tmp_path, fresh_process):
    """LiteRT takes the option every format shares: ``calibration_data`` (one
    batch as an array counts), ``write_out(quantization=...)``, and refuses
    ``bfloat16`` naming the modes it writes."""
    from kexport.errors import QuantizationError

    model, _ = build("mlp")
    rng = np.random.default_rng(0)
    batch = rng.random((32, 8), dtype="float32")
    path = tmp_path / "cal.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="int8",
                          calibration_data=batch)
    meta = read_litert_metadata(path)
    assert meta["quantization"] == "int8" and meta["precision"] == "int8"
    (res,) = fresh_process("fresh_formats:litert_run", [(str(path), "serve", [{"x": batch}])])
    assert "int8" in res["dtypes"]
    ref = live(model, "mlp", {"x": batch})
    noise = np.sum((res["outputs"][0]["y"] - ref) ** 2)
    assert 10 * np.log10(np.sum(ref ** 2) / max(noise, 1e-30)) >= 20  # the int8 SQNR floor
    assert kexport.verify(model, path, data={"x": batch}).ok

    with pytest.raises(QuantizationError, match=(
            r"Expected a quantization mode format='litert' can write: \['float16', "
            r"'dynamic_int8', 'int8'\]\. Received: quantization='bfloat16'")):
        kexport.export_model(model, tmp_path / "bf.tflite", format="litert",
                             quantization="bfloat16")
    with pytest.raises(SignatureError, match="not both"):
        kexport.export_litert(model, tmp_path / "both.tflite", quantization="int8",
                              calibration_data=batch, representative_dataset=batch)
    assert not (tmp_path / "bf.tflite").exists() and not (tmp_path / "both.tflite").exists()

    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         [keras.InputSpec(shape=(None, 8), name="x")])
    out = tmp_path / "archive.tflite"
    archive.write_out(out, format="litert", verbose=False, quantization="float16")
    assert read_litert_metadata(out)["quantization"] == "float16"

"""OpenVINO IR: every kind on TF and PyTorch, re-host from JAX, archives, names and dims."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from format_models import KINDS, build, cases
from kexport.artifact import is_openvino_artifact, read_openvino_metadata
from kexport.errors import SignatureError

NATIVE = pytest.mark.backends("tensorflow", "torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fresh_process):
    root = tmp_path_factory.mktemp("openvino")
    built, jobs = {}, []
    for kind in KINDS:
        model, spec = build(kind)
        path = str(root / f"{kind}.xml")
        kexport.export_openvino(model, path, verbose=False)
        built[kind] = (model, spec, path, cases(model, kind, spec))
        jobs.append((path, [xs for xs, _ in built[kind][3]]))
    results = fresh_process("fresh_formats:openvino_run", jobs)
    return {k: (built[k], r) for k, r in zip(KINDS, results)}


@NATIVE
@pytest.mark.parametrize("kind", KINDS)
def test_kind_matches_live_model_in_fresh_process(exported, kind):
    (_, spec, path, want), got = exported[kind]
    assert got["inputs"] == sorted(spec)
    for name, dims in spec.items():  # batch dynamic, the rest static
        assert got["shapes"][name] == "[?," + ",".join(map(str, dims)) + "]"
    for (_, ref), out in zip(want, got["outputs"]):
        np.testing.assert_allclose(out["probs" if kind == "cnn" else "y"], ref,
                                   atol=1e-5, rtol=1e-4)
    meta = read_openvino_metadata(path)
    assert meta["producer"] == "kexport" and "/tmp" not in str(meta)
    assert is_openvino_artifact(path[:-4] + ".bin")


@NATIVE
def test_archive_writes_one_ir_per_endpoint(tmp_path, fresh_process):
    model, spec = build("mlp")
    archive = kexport.ExportArchive()
    archive.track(model)
    sig = [keras.InputSpec(shape=(None, 8), name="x")]
    archive.add_endpoint("serve", lambda x: model(x, training=False), sig)
    archive.add_endpoint("scaled", lambda x: model(x, training=False), sig)
    out = tmp_path / "ir"
    archive.write_out(out, format="openvino", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "kexport.json", "scaled.bin", "scaled.xml", "serve.bin", "serve.xml"]
    (xs, ref), _ = cases(model, "mlp", spec)
    res = fresh_process("fresh_formats:openvino_run", [(str(out / "serve.xml"), [xs])])
    np.testing.assert_allclose(res[0]["outputs"][0]["y"], ref, atol=1e-5)
    with pytest.raises(SignatureError, match="Expected a folder path for an archive with 2"):
        archive.write_out(tmp_path / "x.xml", format="openvino", verbose=False)


@NATIVE
def test_reexport_replaces_own_ir_pair(tmp_path):
    model, _ = build("mlp")
    kexport.export_openvino(model, tmp_path / "m.xml", verbose=False)
    kexport.export_openvino(model, tmp_path / "m.xml", verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


@pytest.mark.backends("jax")
def test_jax_model_is_rehosted_onto_tensorflow(tmp_path, fresh_process):
    model, spec = build("lstm")
    path = str(tmp_path / "l.xml")
    kexport.export_openvino(model, path, verbose=False)
    want = cases(model, "lstm", spec)
    (res,) = fresh_process("fresh_formats:openvino_run", [(path, [xs for xs, _ in want])])
    assert res["inputs"] == ["seq"]
    for (_, ref), out in zip(want, res["outputs"]):
        np.testing.assert_allclose(out["y"], ref, atol=1e-5)


@NATIVE
def test_kexport_load_runs_ir_by_name(exported):
    (_, _, path, want), _ = exported["multi"]
    artifact = kexport.load(path)
    assert artifact.format == "openvino" and artifact.default_endpoint == "serve"
    assert artifact.endpoints["serve"].input_names == ["a", "b"]
    xs, ref = want[0]
    np.testing.assert_allclose(artifact(xs)["y"], ref, atol=1e-5)

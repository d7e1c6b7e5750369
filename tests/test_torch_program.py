"""PyTorch ExportedProgram (.pt2): every kind on PyTorch, re-host from TF/JAX, archives."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from format_models import KINDS, build, cases
from kexport.errors import UnsupportedRouteError


def _flat(xs):
    return [xs[k] for k in sorted(xs)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fresh_process):
    root = tmp_path_factory.mktemp("pt2")
    built, jobs = {}, []
    for kind in KINDS:
        model, spec = build(kind)
        path = str(root / f"{kind}.pt2")
        kexport.export_torch(model, path, verbose=False)
        built[kind] = (model, spec, path, cases(model, kind, spec))
        jobs.append((path, [_flat(xs) for xs, _ in built[kind][3]]))
    results = fresh_process("fresh_formats:torch_run", jobs)
    return {k: (built[k], r) for k, r in zip(KINDS, results)}


@pytest.mark.backends("torch")
@pytest.mark.parametrize("kind", KINDS)
def test_kind_matches_live_model_in_fresh_process(exported, kind):
    (_, spec, _path, want), got = exported[kind]
    assert got["inputs"] == sorted(spec)  # placeholders carry the Keras names
    for (_, ref), (y,) in zip(want, got["outputs"]):
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)
    manifest = json.loads(got["manifest"])
    assert manifest["producer"] == "kexport" and manifest["format"] == "torch"
    assert "/tmp" not in got["manifest"]


@pytest.mark.backends("torch")
def test_batch_of_one_and_archive_folder(tmp_path, fresh_process):
    model, _ = build("multi")
    archive = kexport.ExportArchive()
    archive.track(model)
    sig = [[keras.InputSpec(shape=(None, 3), name="a"), keras.InputSpec(shape=(None, 4), name="b")]]
    archive.add_endpoint("serve", lambda x: model(x, training=False), sig)
    archive.add_endpoint("twice", lambda x: model(x, training=False), sig)
    out = tmp_path / "programs"
    archive.write_out(out, format="torch", verbose=False)
    assert sorted(p.name for p in out.iterdir()) == ["kexport.json", "serve.pt2", "twice.pt2"]
    xs = {"a": np.ones((1, 3), "f"), "b": np.ones((1, 4), "f")}
    res = fresh_process("fresh_formats:torch_run",
                        [(str(out / "serve.pt2"), [_flat(xs)]), (str(out / "twice.pt2"), [_flat(xs)])])
    ref = np.asarray(keras.ops.convert_to_numpy(model([xs["a"], xs["b"]])))
    for r in res:
        np.testing.assert_allclose(r["outputs"][0][0], ref, atol=1e-6)


@pytest.mark.backends("tensorflow", "jax")
def test_rehosted_onto_torch_from_other_backends(tmp_path, fresh_process):
    model, spec = build("dict")
    path = str(tmp_path / "d.pt2")
    kexport.export_torch(model, path, verbose=False)
    want = cases(model, "dict", spec)
    (res,) = fresh_process("fresh_formats:torch_run", [(path, [_flat(xs) for xs, _ in want])])
    assert res["inputs"] == ["a", "b"]
    for (_, ref), (y,) in zip(want, res["outputs"]):
        np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.backends("tensorflow", "jax")
def test_writer_called_directly_refuses_tf_functions_with_next_step(tmp_path):
    """write_out(format="torch") re-hosts such archives (tests/test_archive_rehost.py);
    the writer itself only reads PyTorch code."""
    from kexport.context import ExportContext, Printer
    from kexport.formats import torch_program

    model, _ = build("mlp")
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         [keras.InputSpec(shape=(None, 8))])
    with pytest.raises(UnsupportedRouteError,
                       match=r"Expected an archive built with KERAS_BACKEND=torch\. Next step: "
                             r"call archive\.write_out\(path, format='torch'\), which re-hosts"):
        torch_program.write_archive(archive, tmp_path / "a.pt2",
                                    context=ExportContext(printer=Printer(on=False)))
    assert not (tmp_path / "a.pt2").exists()


@pytest.mark.backends("torch")
def test_kexport_load_runs_program_by_name(exported):
    (_, _, path, want), _ = exported["dict"]
    artifact = kexport.load(path)
    assert artifact.format == "torch" and artifact.endpoints["serve"].input_names == ["a", "b"]
    xs, ref = want[0]
    np.testing.assert_allclose(artifact(xs)["y"], ref, atol=1e-5)
    # ATen operators of the program: two Dense layers, two matrix products, one relu
    (_, _, mlp_path, _), _ = exported["mlp"]
    ops = kexport.load(mlp_path).op_counts()["serve"]
    assert all(op.startswith("aten.") for op in ops)
    assert sum(n for op, n in ops.items() if op.split(".")[1] in (
        "matmul", "linear", "mm", "addmm")) == 2
    assert ops["aten.relu.default"] == 1


@pytest.mark.backends("torch")
def test_keras_ops_on_symbolic_sizes(tmp_path, fresh_process):
    # keras.ops.arange(length) with the length read from a dynamic axis (relative
    # positions, as keras_hub's T5 attention computes them): under torch.export the
    # length is a torch.SymInt, which Keras's dtype rules did not know ("Invalid dtype:
    # SymInt"); see kexport/capture/torch_export.py
    class RelativeBias(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            length = keras.ops.shape(x)[1]
            positions = keras.ops.arange(length)[:, None] - keras.ops.arange(length)[None, :]
            bias = keras.ops.cast(keras.ops.abs(positions), "float32") * self.scale
            return keras.ops.matmul(keras.ops.softmax(-bias), x)

    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.bias = RelativeBias()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(self.bias(x))

    model = Model()
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, t, 3)).astype("float32") for b, t in ((1, 5), (3, 9))]
    model(xs[0])
    signature = [keras.InputSpec(shape=(None, None, 3))]
    pt2, onnx_path = tmp_path / "rel.pt2", tmp_path / "rel.onnx"
    kexport.export_torch(model, pt2, input_signature=signature, verbose=False)
    kexport.export_onnx(model, onnx_path, input_signature=signature, verbose=False)
    (res,) = fresh_process("fresh_formats:torch_run", [(str(pt2), [[x] for x in xs])])
    got = fresh_process("fresh_onnx:run_many",
                        {"m": (str(onnx_path), [{"input_0": x} for x in xs])})["m"]
    for x, (y,), (z,) in zip(xs, res["outputs"], got["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x))
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(z, ref, atol=1e-5, rtol=1e-4)
    # the output's length axis is dynamic in both artifacts' records (the sample
    # output had one length; the programs keep it symbolic)
    manifest = json.loads(res["manifest"])
    assert manifest["endpoints"]["serve"]["outputs"][0]["shape"] == [None, None, 4]
    assert json.loads(got["metadata"]["kexport.outputs"])[0]["shape"] == [None, None, 4]
    # Keras's own dtype rules are unchanged outside the export
    import torch
    from keras.src.backend.common import dtypes

    assert torch.SymInt not in dtypes.PYTHON_DTYPES_MAP

"""Serving layouts (kexport.write_layout, kexport export --layout): TF-Serving,
Triton and KServe folders that load as they are.

The artifacts come from the TensorFlow backend (the layouts do not depend on
the backend that wrote an artifact). Layouts are read back as their serving
systems would: the SavedModel with tf.saved_model.load and the warm-up file
with tensorflow-serving-api's protos in a fresh process, config.pbtxt with
Triton's own ModelConfig protobuf (tritonclient), model.onnx with ONNX Runtime.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import kexport
from kexport.errors import ArtifactError, LayoutError, TargetExistsError
from kexport.layouts import read_layout

pytestmark = pytest.mark.backends("tensorflow")

X = {"a": np.random.default_rng(0).standard_normal((3, 4)).astype("float32"),
     "b": np.random.default_rng(1).standard_normal((3, 4)).astype("float32")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A subclassed two-input model exported once as SavedModel, ONNX and a
    two-endpoint ONNX archive."""
    import keras

    class Blend(keras.Model):
        def __init__(self):
            super().__init__()
            self.da = keras.layers.Dense(5, activation="tanh")
            self.db = keras.layers.Dense(5)
            self.out = keras.layers.Dense(3)

        def call(self, inputs):
            return self.out(self.da(inputs["a"]) * self.db(inputs["b"]))

    model = Blend()
    model(X)
    root = tmp_path_factory.mktemp("layouts")
    kexport.export_model(model, root / "blend", format="tf_saved_model", verbose=False)
    kexport.export_model(model, root / "blend.onnx", format="onnx", verbose=False)
    archive = kexport.ExportArchive()
    archive.track(model)
    spec = {k: keras.InputSpec(shape=(None, 4), dtype="float32", name=k) for k in X}
    archive.add_endpoint("serve", model.call, [spec])
    archive.add_endpoint("embed", lambda inputs: model.da(inputs["a"]), [spec])
    archive.write_out(root / "multi.onnx", format="onnx", verbose=False)
    expected = np.asarray(model(X))
    embed = np.asarray(model.da(X["a"]))
    return {"root": root, "model": model, "expected": expected, "embed": embed}


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _no_local_paths(folder, *paths):
    for f in _files(folder):
        data = f.read_bytes()
        for p in paths:
            assert os.fspath(p).encode() not in data, f"local path in {f}"


def test_tf_serving_layout_reloads_and_warms_up(built, tmp_path, fresh_process):
    repo = tmp_path / "repo"
    [written] = kexport.write_layout(built["root"] / "blend", repo, layout="tf-serving")
    assert written == ("blend", 1, os.fspath(repo / "blend" / "1"), "tf_saved_model")
    assert read_layout(repo / "blend") == (
        "blend", 1, os.fspath((repo / "blend" / "1").resolve()), "tf_saved_model")
    outs = fresh_process("fresh_layouts:saved_model_signatures", written.artifact_path, X)
    assert set(outs) >= {"serve", "serving_default"}
    for result in outs.values():
        [got] = result.values()
        np.testing.assert_allclose(got, built["expected"], rtol=1e-5, atol=1e-5)

    records, signatures = fresh_process("fresh_layouts:warmup_records", written.artifact_path)
    assert sorted(sig for _, sig, _ in records) == sorted(signatures)
    for name, sig, inputs in records:
        assert name == "blend"
        want = {k: (dtype, [1 if d is None else d for d in shape])
                for k, (dtype, shape) in signatures[sig].items()}
        assert inputs == want == {"a": ("float32", [1, 4]), "b": ("float32", [1, 4])}
    _no_local_paths(repo, tmp_path, built["root"])


def test_triton_layout_config_parses_and_model_runs(built, tmp_path, fresh_process):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    source = built["root"] / "blend.onnx"
    [written] = kexport.write_layout(source, repo, name="clf", layout="triton")
    assert written == ("clf", 1, os.fspath(repo / "clf" / "1" / "model.onnx"), "onnx")
    config = text_format.Parse((repo / "clf" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    endpoint = kexport.load(source).endpoints["serve"]
    assert (config.name, config.backend, config.max_batch_size) == ("clf", "onnxruntime", 32)
    assert config.HasField("dynamic_batching")
    dtype = {model_config_pb2.TYPE_FP32: "float32"}
    assert [(t.name, dtype[t.data_type], list(t.dims)) for t in config.input] == [
        (t.name, t.dtype, list(t.shape[1:])) for t in endpoint.inputs]
    assert [(t.name, dtype[t.data_type], list(t.dims)) for t in config.output] == [
        (t.name, t.dtype, list(t.shape[1:])) for t in endpoint.outputs] == [
        (endpoint.outputs[0].name, "float32", [3])]
    outs = fresh_process("fresh_layouts:onnxruntime_run", written.artifact_path, X)
    np.testing.assert_allclose(next(iter(outs.values())), built["expected"], rtol=1e-5, atol=1e-5)
    assert read_layout(repo / "clf" / "1").format == "onnx"
    _no_local_paths(repo, tmp_path, built["root"])


def test_triton_one_model_per_endpoint(built, tmp_path, fresh_process):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    written = kexport.write_layout(built["root"] / "multi.onnx", repo, layout="triton")
    assert sorted(m.name for m in written) == ["multi_embed", "multi_serve"]
    for m in written:
        config = text_format.Parse((repo / m.name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.name == m.name and [t.name for t in config.input] == ["a", "b"]
        outs = fresh_process("fresh_layouts:onnxruntime_run", m.artifact_path, X)
        want = built["embed"] if m.name.endswith("embed") else built["expected"]
        np.testing.assert_allclose(next(iter(outs.values())), want, rtol=1e-5, atol=1e-5)
        assert list(config.output[0].dims) == [want.shape[1]]
    with pytest.raises(LayoutError, match=r"repository holding models \['multi_embed', "):
        read_layout(repo)


def test_versions_are_never_overwritten(built, tmp_path):
    repo = tmp_path / "repo"
    source = built["root"] / "blend"
    kexport.write_layout(source, repo, "m")
    before = {f: f.read_bytes() for f in _files(repo / "m" / "1")}
    [second] = kexport.write_layout(source, repo, "m")
    assert second.version == 2 and read_layout(repo / "m").version == 2
    with pytest.raises(TargetExistsError,
                       match=r"Received: version=1, .* Next step: pass version=3 "):
        kexport.write_layout(source, repo, "m", version=1)
    assert {f: f.read_bytes() for f in _files(repo / "m" / "1")} == before
    assert kexport.write_layout(source, repo, "m", version=7)[0].version == 7
    assert sorted(os.listdir(repo / "m")) == ["1", "2", "7"]  # no temporaries left

    # a Triton model's config serves every version: another model's config is kept
    kexport.write_layout(built["root"] / "blend.onnx", repo, "t")
    (repo / "t" / "config.pbtxt").write_text('name: "t"\n')
    with pytest.raises(TargetExistsError, match=r"same config\.pbtxt"):
        kexport.write_layout(built["root"] / "blend.onnx", repo, "t")
    assert sorted(os.listdir(repo / "t")) == ["1", "config.pbtxt"]


def test_kserve_layout(built, tmp_path):
    import yaml

    repo = tmp_path / "repo"
    [m] = kexport.write_layout(built["root"] / "blend", repo, "Blend_v2", layout="kserve")
    assert m == ("Blend_v2", 1, os.fspath(repo / "Blend_v2" / "1"), "tf_saved_model")
    doc = yaml.safe_load((repo / "Blend_v2.inferenceservice.yaml").read_text())
    assert doc["kind"] == "InferenceService" and doc["metadata"]["name"] == "blend-v2"
    model = doc["spec"]["predictor"]["model"]
    assert (model["runtime"], model["modelFormat"]["name"]) == (
        "kserve-tensorflow-serving", "tensorflow")
    [t] = kexport.write_layout(built["root"] / "blend.onnx", repo, "clf", layout="kserve")
    assert (repo / "clf" / "config.pbtxt").is_file() and t.format == "onnx"
    doc = yaml.safe_load((repo / "clf.inferenceservice.yaml").read_text())
    assert doc["spec"]["predictor"]["model"]["runtime"] == "kserve-tritonserver"
    assert kexport.write_layout(built["root"] / "blend.onnx", repo, "clf",
                                layout="kserve")[0].version == 2
    _no_local_paths(repo, tmp_path, built["root"])


def test_bad_input_is_refused_by_type_and_message(built, tmp_path):
    sm, onnx_file = built["root"] / "blend", built["root"] / "blend.onnx"
    repo = tmp_path / "repo"
    with pytest.raises(LayoutError, match=r"Expected `layout` to be one of \['tf-serving', "
                                          r"'triton', 'kserve'\]. Received: 'trtion'"):
        kexport.write_layout(sm, repo, layout="trtion")
    with pytest.raises(LayoutError, match=r"the tf-serving layout can hold, one of the formats "
                                          r"\['tf_saved_model'\]. Received: a onnx artifact"):
        kexport.write_layout(onnx_file, repo, layout="tf-serving")
    with pytest.raises(LayoutError, match=r"Expected `version` to be a positive int or None"):
        kexport.write_layout(sm, repo, version=0)
    with pytest.raises(LayoutError, match=r"Expected `version`.*Received: True"):
        kexport.write_layout(sm, repo, version=True)
    with pytest.raises(LayoutError, match=r"Expected `name` to be a model name.*'\.\./x'"):
        kexport.write_layout(sm, repo, name="../x")
    with pytest.raises(ArtifactError, match="Expected an artifact at"):
        kexport.write_layout(tmp_path / "missing", repo)
    with pytest.raises(LayoutError, match="Expected a layout folder"):
        read_layout(tmp_path / "missing")
    assert not repo.exists()
    assert isinstance(LayoutError("x"), ValueError)


def test_litert_and_torch_cannot_go_to_triton(built, tmp_path):
    litert = tmp_path / "m.tflite"
    kexport.export_model(built["model"], litert, format="litert", verbose=False)
    with pytest.raises(LayoutError, match=r"Received: a litert artifact \(no TF-Serving, "
                                          r"Triton or KServe runtime loads LiteRT"):
        kexport.write_layout(litert, tmp_path / "repo", layout="triton")
    with pytest.raises(LayoutError, match=r"not torch.export programs"):
        kexport.layouts.check_layout("triton", "torch")
    assert not (tmp_path / "repo").exists()


def test_cli_layout(tmp_path):
    from models import mlp
    from test_cli import kexport as cli

    mlp().save(tmp_path / "clf.keras")  # the CLI loads a .keras file in its own process
    repo = tmp_path / "repo"
    proc = cli("export", tmp_path / "clf.keras", "--layout", "triton", "-o", repo,
               "--version", "3", "--no-verify", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert (data["layout"], data["format"]) == ("triton", "onnx")
    assert data["models"] == [{"name": "clf", "version": 3, "format": "onnx",
                               "artifact_path": os.fspath(repo / "clf" / "3" / "model.onnx")}]
    assert sorted(os.listdir(repo / "clf")) == ["3", "config.pbtxt"]  # no staging left
    assert sorted(os.listdir(repo)) == ["clf"]
    proc = cli("export", tmp_path / "clf.keras", "--layout", "triton", "-f", "litert",
               "-o", repo, "--json")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "LayoutError" and "Received: a litert artifact" in error["message"]
    proc = cli("export", tmp_path / "clf.keras", "--name", "x", "-o", tmp_path / "o", "--json")
    assert proc.returncode == 2
    assert "Expected --name and --version only with --layout" in proc.stdout


def _config(info, format="onnx"):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from kexport.layouts.triton import config_text

    return text_format.Parse(config_text("m", format, info), model_config_pb2.ModelConfig())


def test_triton_batch_axis_and_dims_from_the_endpoint():
    from kexport.runtime import EndpointInfo, TensorInfo

    def t(name, shape, dtype="float32", symbols=None):
        return TensorInfo(name, shape, dtype, symbols)

    # batch and sequence axes: batched, dims without the batch axis, -1 for the sequence
    seq = EndpointInfo("serve", (t("ids", (None, None), "int64", ("batch", "seq")),
                                 t("mask", (None, None), "bool", ("batch", "seq"))),
                       (t("logits", (None, None, 8), symbols=("batch", "seq", None)),
                        t("score", (None,))))
    config = _config(seq)
    assert config.max_batch_size == 32 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("ids", [-1]), ("mask", [-1])]
    from tritonclient.grpc import model_config_pb2 as pb

    assert [pb.DataType.Name(i.data_type) for i in config.input] == ["TYPE_INT64", "TYPE_BOOL"]
    # an output of shape (batch,) keeps no dims: [1] reshaped to []
    score = config.output[1]
    assert list(score.dims) == [1] and list(score.reshape.shape) == []
    # axis 0 shares its symbol with another axis: not a free batch dimension
    square = EndpointInfo("serve", (t("x", (None, None), symbols=("n", "n")),),
                          (t("y", (None, None), symbols=("n", "n")),))
    config = _config(square)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, -1]
    # a static first axis is no batch either; a SavedModel names its signature
    static = EndpointInfo("embed", (t("x", (2, 4)),), (t("y", (2, 3)),))
    config = _config(static, "tf_saved_model")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 4]
    assert (config.platform, config.parameters["TF_SIGNATURE_DEF"].string_value) == (
        "tensorflow_savedmodel", "embed")
    with pytest.raises(LayoutError, match=r"tensor 'c': expected a dtype Triton has.*"
                                          r"Received: dtype complex64"):
        _config(EndpointInfo("serve", (t("c", (None,), "complex64"),), ()))


def test_exclusive_placement_never_replaces_a_version_placed_meanwhile(tmp_path):
    from kexport.layouts._place import new_version

    model_dir = tmp_path / "m"
    with pytest.raises(TargetExistsError, match=r"version=1, .* pass version=2 "), \
            new_version(model_dir, 1, [model_dir]) as tmp:
        (tmp / "mine").write_text("new")
        (model_dir / "1").mkdir()  # a concurrent writer placed version 1 first
        (model_dir / "1" / "theirs").write_text("kept")
    assert sorted(os.listdir(model_dir)) == ["1"]  # no temporary left
    assert os.listdir(model_dir / "1") == ["theirs"]

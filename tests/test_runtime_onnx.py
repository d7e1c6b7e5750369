"""``kexport.load`` on ONNX artifacts: single files and archive folders.

The graphs are built directly with ``onnx.helper`` so these tests do not
depend on any exporter; they pin the layouts the ONNX runtime understands.
Backend-independent: they run in the TensorFlow run only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kexport import SignatureError

pytestmark = pytest.mark.backends("tensorflow")

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def _external(name, array, location, offset):
    from onnx import TensorProto, numpy_helper

    t = numpy_helper.from_array(array, name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": str(offset),
                       "length": str(array.nbytes)}.items():
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _graph(kind, initializers, props):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", ["features", "W"], ["h"])]
    if kind == "logits":
        nodes.append(helper.make_node("Add", ["h", "B"], ["logits"]))
        out = "logits"
    else:
        nodes.append(helper.make_node("Add", ["h", "B"], ["z"]))
        nodes.append(helper.make_node("Relu", ["z"], ["activations"]))
        out = "activations"
    graph = helper.make_graph(
        nodes, kind,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 3])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="kexport")
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    return model


def make_file(path):
    import onnx
    from onnx import numpy_helper

    model = _graph("logits", [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
                   {"kexport.endpoint": "serve", "backend": "tensorflow"})
    onnx.save_model(model, str(path))
    return path


def make_archive(folder):
    import onnx

    folder.mkdir()
    (folder / "weights.bin").write_bytes(W.tobytes() + B.tobytes())
    for kind in ("logits", "activations"):
        inits = [_external("W", W, "weights.bin", 0), _external("B", B, "weights.bin", W.nbytes)]
        onnx.save_model(_graph(kind, inits, {"kexport.endpoint": kind}), str(folder / f"{kind}.onnx"))
    (folder / "manifest.json").write_text(json.dumps(
        {"format": "onnx", "endpoints": ["logits", "activations"], "weights": "weights.bin"}))
    return folder


def test_single_file_endpoints_and_call(tmp_path):
    import kexport

    art = kexport.load(make_file(tmp_path / "model.onnx"))
    assert art.format == "onnx"
    assert list(art.endpoints) == ["serve"] and art.default_endpoint == "serve"
    info = art.endpoints["serve"]
    assert [str(t) for t in info.inputs] == ["features: float32(None, 4)"]
    assert [str(t) for t in info.outputs] == ["logits: float32(None, 3)"]
    assert art.metadata["backend"] == "tensorflow"
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    want = x @ W + B
    for out in (art(x), art.run("serve", [x]), art.run("serve", {"features": x}),
                art(features=x)):
        assert list(out) == ["logits"]
        np.testing.assert_allclose(out["logits"], want, rtol=1e-6, atol=1e-6)
    assert art.op_counts() == {"serve": {"Add": 1, "MatMul": 1}}


def test_file_without_onnx_suffix_is_detected(tmp_path):
    import kexport

    path = make_file(tmp_path / "model.onnx")
    plain = tmp_path / "artifact"
    plain.write_bytes(path.read_bytes())
    assert kexport.load(plain).format == "onnx"


def test_archive_endpoints_share_weights(tmp_path):
    import kexport

    art = kexport.load(make_archive(tmp_path / "arch"))
    assert list(art.endpoints) == ["logits", "activations"]
    assert art.default_endpoint == "logits"
    # W and B are read once and given to both sessions as shared initializers.
    assert art.shared_initializers == 2
    x = np.random.default_rng(1).normal(size=(1, 4)).astype("float32")
    np.testing.assert_allclose(art(x)["logits"], x @ W + B, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(art.run("activations", x)["activations"],
                               np.maximum(x @ W + B, 0), rtol=1e-6, atol=1e-6)
    assert set(art.files) == {"weights.bin", "logits.onnx", "activations.onnx", "manifest.json"}


def test_bad_inputs_are_typed_errors(tmp_path):
    import kexport

    art = kexport.load(make_file(tmp_path / "m.onnx"))
    with pytest.raises(SignatureError, match=r"expected inputs named \['features'\]. Received: \['x'\]"):
        art.run("serve", {"x": np.zeros((1, 4), "float32")})
    with pytest.raises(SignatureError, match=r"expected shape \(None, 4\). Received: shape \(2, 5\)"):
        art(np.zeros((2, 5), "float32"))
    with pytest.raises(SignatureError, match=r"expected dtype float32\. Received: dtype complex64"):
        art(np.zeros((2, 4), "complex64"))
    with pytest.raises(SignatureError, match=r"expected 1 input\(s\) \['features'\]. Received: 2"):
        art.run("serve", [np.zeros((1, 4)), np.zeros((1, 4))])
    with pytest.raises(SignatureError, match=r"one of \['serve'\]. Received: 'predict'"):
        art.run("predict", np.zeros((1, 4), "float32"))


def test_not_an_artifact(tmp_path):
    import kexport

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(kexport.ArtifactError, match="none of the runtimes recognises"):
        kexport.load(tmp_path / "notes.txt")
    with pytest.raises(kexport.ArtifactError, match="does not exist"):
        kexport.load(tmp_path / "missing")


def test_report_stored_in_metadata_props(tmp_path):
    import onnx

    import kexport
    from kexport.runtime import onnx as rt

    folder = make_archive(tmp_path / "arch")
    rt.store_report(folder, {"ok": True, "endpoints": {}})
    for name in ("logits", "activations"):
        props = {p.key: p.value for p in onnx.load(str(folder / f"{name}.onnx"),
                                                   load_external_data=False).metadata_props}
        assert json.loads(props["kexport.verification"])["ok"] is True
    art = kexport.load(folder)
    assert art.verification == {"ok": True, "endpoints": {}}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]

"""``kexport serve`` answers real clients no one here wrote.

One server per module (a subprocess on a free loopback port, stopped at the
end) serves a folder holding one small subclassed model with dict inputs in
every format, and a two-endpoint ONNX archive. ``tritonclient.http`` checks
health, metadata and inference with JSON and binary tensors; plain HTTP checks
TF-Serving's ``:predict`` in both forms. Every answer equals
``kexport.load(artifact).run(...)`` bit for bit. Bad requests get a 4xx whose
message names what was expected and what was received, and the server keeps
answering.
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

import kexport
from kexport.errors import ArtifactError
from kexport.serve import _models_in
from serving import Server, send_and_close, wait_live

pytestmark = pytest.mark.backends("tensorflow")

FORMATS = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
           "torch": ".pt2"}
MAX_BODY = 64 * 1024
RNG = np.random.default_rng(0)
A = RNG.normal(size=(3, 4)).astype("float32")
B = RNG.normal(size=(3, 2)).astype("float32")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    class Mixer(keras.Model):
        def __init__(self):
            super().__init__()
            self.da = keras.layers.Dense(5, activation="relu")
            self.db = keras.layers.Dense(5)
            self.head = keras.layers.Dense(3, activation="softmax")

        def call(self, inputs):
            return self.head(self.da(inputs["a"]) + self.db(inputs["b"]))

    model = Mixer()
    model({"a": A, "b": B})
    root = tmp_path_factory.mktemp("served")
    for format, suffix in FORMATS.items():
        kexport.export_model(model, root / f"mixer_{format}{suffix}", format=format,
                             verbose=False)
    archive = kexport.ExportArchive()
    archive.track(model)
    spec = {"a": keras.InputSpec(shape=(None, 4), name="a"),
            "b": keras.InputSpec(shape=(None, 2), name="b")}
    archive.add_endpoint("serve", lambda x: model(x), [spec])
    archive.add_endpoint("twice", lambda x: model(x) * 2.0, [spec])
    archive.write_out(root / "pair", format="onnx", verbose=False)
    (root / "notes.txt").write_text("not an artifact: skipped")
    return root


@pytest.fixture(scope="module")
def server_and_references(folder):
    """The server, and what ``kexport.load`` answers, computed while the server starts."""
    server = Server(folder, "--max-body-bytes", str(MAX_BODY), wait=False)
    try:
        references = {}
        for model, path in _models_in(folder).items():
            artifact = kexport.load(path)
            references[model] = {e: artifact.run(e, {"a": A, "b": B})
                                 for e in artifact.endpoints}
            references[model]["info"] = artifact.endpoints[artifact.default_endpoint]
            references[model]["default"] = references[model][artifact.default_endpoint]
        server.wait()
        wait_live(server.url)
    except BaseException:
        server.stop()
        raise
    yield server, references
    server.stop()
    server.stop()
    assert not server.alive()


@pytest.fixture(scope="module")
def server(server_and_references):
    return server_and_references[0]


@pytest.fixture(scope="module")
def references(server_and_references):
    return server_and_references[1]


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.host_port) as client:
        yield client


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def triton_inputs(binary: bool, a=A, b=B, datatype="FP32"):
    import tritonclient.http as httpclient

    inputs = []
    for name, value in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_folder_serves_one_model_per_artifact_and_each_endpoint_of_an_archive(server):
    names = {f"mixer_{f}": f for f in FORMATS}
    assert {n: m["format"] for n, m in server.models.items() if n.startswith("mixer")} == names
    assert {n: m["endpoint"] for n, m in server.models.items() if n.startswith("pair")} == \
        {"pair": "serve", "pair.serve": "serve", "pair.twice": "twice"}


def test_health_and_metadata(client, references):
    assert client.is_server_live() and client.is_server_ready()
    for model in [f"mixer_{f}" for f in FORMATS]:
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        info = references[model]["info"]
        assert meta["name"] == model
        assert sorted((t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]) == \
            sorted((t.name, "FP32", [-1 if d is None else d for d in t.shape])
                   for t in info.inputs)
        assert [t["name"] for t in meta["outputs"]] == info.output_names
    assert not client.is_model_ready("missing")


@pytest.mark.parametrize("format", list(FORMATS))
def test_infer_json_and_binary_equal_kexport_load(client, references, format):
    model = f"mixer_{format}"
    want = references[model]["default"]
    (output,) = want
    for binary in (False, True):
        import tritonclient.http as httpclient

        result = client.infer(model, triton_inputs(binary),
                              outputs=[httpclient.InferRequestedOutput(output,
                                                                       binary_data=binary)])
        got = result.as_numpy(output)
        assert got.dtype == want[output].dtype
        np.testing.assert_array_equal(got, want[output])
        assert np.array_equal(got, want[output])
    # No outputs named: tritonclient asks for every output in binary.
    result = client.infer(model, triton_inputs(True))
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 3 * 3 * 4
    assert np.array_equal(result.as_numpy(output), want[output])


def test_archive_endpoints_by_model_name_and_by_signature(client, http, references):
    for model, endpoint in (("pair", "serve"), ("pair.twice", "twice")):
        want = references["pair"][endpoint]
        (output,) = want
        got = client.infer(model, triton_inputs(True)).as_numpy(output)
        assert np.array_equal(got, want[output])
    reply = http.post("/v1/models/pair:predict",
                      json={"signature_name": "twice", "inputs": {"a": A.tolist(),
                                                                  "b": B.tolist()}})
    assert reply.status_code == 200
    (output,) = want
    assert np.array_equal(np.asarray(reply.json()["outputs"], "float32"), want[output])


def test_tf_serving_predict_row_and_columnar(http, references):
    want = references["mixer_tf_saved_model"]["default"]
    (output,) = want
    rows = [{"a": a.tolist(), "b": b.tolist()} for a, b in zip(A, B, strict=True)]
    reply = http.post("/v1/models/mixer_tf_saved_model:predict", json={"instances": rows})
    assert reply.status_code == 200, reply.text
    assert np.array_equal(np.asarray(reply.json()["predictions"], "float32"), want[output])
    reply = http.post("/v1/models/mixer_onnx/versions/1:predict",
                      json={"inputs": {"a": A.tolist(), "b": B.tolist()}})
    assert reply.status_code == 200, reply.text
    assert np.array_equal(np.asarray(reply.json()["outputs"], "float32"),
                          references["mixer_onnx"]["default"][output])
    status = http.get("/v1/models/mixer_onnx").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def infer_body(**changes):
    request = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [3, 4],
                           "data": A.ravel().tolist()},
                          {"name": "b", "datatype": "FP32", "shape": [3, 2],
                           "data": B.ravel().tolist()}]}
    for key, value in changes.items():
        request["inputs"][0][key] = value
    return json.dumps(request).encode()


BAD = [
    ("malformed JSON", "/v2/models/mixer_onnx/infer", b'{"inputs": [', 400,
     ["Expected a JSON inference request", "invalid JSON"]),
    ("wrong datatype", "/v2/models/mixer_onnx/infer", infer_body(datatype="INT64"), 400,
     ["Input 'a': expected datatype FP32", "Received: \"INT64\""]),
    ("wrong shape", "/v2/models/mixer_openvino/infer",
     infer_body(shape=[4, 3]), 400, ["expected shape [-1, 4]", "Received: shape [4, 3]"]),
    ("data length", "/v2/models/mixer_litert/infer",
     infer_body(data=A.ravel().tolist()[:-1]), 400, ["expected 12 values", "Received: 11"]),
    ("unknown input", "/v2/models/mixer_torch/infer", infer_body(name="c"), 400,
     ["Expected inputs named ['a', 'b']", "Received: an input named 'c'"]),
    ("strings for floats", "/v2/models/mixer_tf_saved_model/infer",
     infer_body(data=["x"] * 12), 400, ["expected floating-point numbers (FP32)",
                                        "Received: strings"]),
    ("unknown model", "/v2/models/nope/infer", infer_body(), 404,
     ["Expected a model name, one of", "Received: 'nope'"]),
    ("oversized body", "/v2/models/mixer_onnx/infer", b" " * (MAX_BODY + 1), 413,
     [f"at most {MAX_BODY} bytes", f"Received: Content-Length {MAX_BODY + 1}"]),
    ("batch sizes differ", "/v2/models/mixer_onnx/infer",
     infer_body(shape=[2, 4], data=A[:2].ravel().tolist()), 400,
     ["share the dimension", "expected equal sizes. Received: 2 and 3"]),
    ("predict: both forms", "/v1/models/mixer_onnx:predict",
     json.dumps({"instances": [], "inputs": {}}).encode(), 400,
     ['exactly one of "instances"', "Received: keys ['inputs', 'instances']"]),
    ("predict: ragged rows", "/v1/models/mixer_onnx:predict",
     json.dumps({"inputs": {"a": [[1, 2, 3, 4], [1]], "b": B.tolist()}}).encode(), 400,
     ["Input 'a': expected a rectangular array", "Received: nested lists of uneven"]),
    ("predict: missing input", "/v1/models/mixer_onnx:predict",
     json.dumps({"instances": [{"a": A[0].tolist()}]}).encode(), 400,
     ["Expected each instance keyed by the input names ['a', 'b']", "missing ['b']"]),
    ("predict: bools for floats", "/v1/models/mixer_onnx:predict",
     json.dumps({"inputs": {"a": [[True] * 4], "b": [[0.5, 1.0]]}}).encode(), 400,
     ["expected floating-point numbers", "Received: booleans"]),
]


@pytest.mark.parametrize("path,body,status,fragments",
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_get_4xx_naming_expected_and_received(http, folder, references, path,
                                                           body, status, fragments):
    reply = http.post(path, content=body)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    for fragment in fragments:
        assert fragment in message
    assert str(folder) not in message
    # still serving, and still right
    good = http.post("/v2/models/mixer_onnx/infer", content=infer_body())
    assert good.status_code == 200
    (output,) = good.json()["outputs"]
    assert np.array_equal(np.asarray(output["data"], "float32").reshape(output["shape"]),
                          references["mixer_onnx"]["default"][output["name"]])


def test_tritonclient_sees_the_message_and_binary_sizes_are_checked(client, server):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"expected datatype FP32\. Received: "
                                                       r"\"FP64\""):
        client.infer("mixer_onnx", triton_inputs(True, A.astype("float64"),
                                                 B.astype("float64"), "FP64"))
    # binary_data_size says 48 bytes but shape [3, 4] x FP32 needs... a lie in the header
    header = json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [3, 4],
                                     "parameters": {"binary_data_size": 40}},
                                    {"name": "b", "datatype": "FP32", "shape": [3, 2],
                                     "data": B.ravel().tolist()}]}).encode()
    import httpx

    reply = httpx.post(server.url + "/v2/models/mixer_onnx/infer",
                       content=header + A.tobytes()[:40],
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert reply.status_code == 400
    assert "expected 48 bytes of binary data" in reply.json()["error"]
    assert "Received: binary_data_size 40" in reply.json()["error"]


def test_a_client_that_leaves_mid_request_does_not_stop_the_server(client, server):
    body = infer_body()
    head = (f"POST /v2/models/mixer_onnx/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(3):
        send_and_close(server.host_port, head + body[: len(body) // 2])
    assert server.alive() and client.is_server_live()
    assert client.infer("mixer_onnx", triton_inputs(True)).as_numpy(
        client.get_model_metadata("mixer_onnx")["outputs"][0]["name"]).shape == (3, 3)


def test_models_in_names_and_clashes(folder, tmp_path):
    found = _models_in(folder)
    assert found["mixer_onnx"] == folder / "mixer_onnx.onnx"
    assert found["mixer_openvino"] == folder / "mixer_openvino.xml"
    assert found["pair"] == folder / "pair" and "notes" not in found
    assert _models_in(folder / "mixer_onnx.onnx") == {"mixer_onnx": folder / "mixer_onnx.onnx"}
    assert _models_in(folder / "pair", name="p") == {"p": folder / "pair"}
    with pytest.raises(ArtifactError, match=r"only for a single artifact\. Received: a folder "
                                            r"of 6 artifacts"):
        _models_in(folder, name="x")
    shutil.copy(folder / "mixer_onnx.onnx", tmp_path / "m.onnx")
    shutil.copy(folder / "mixer_litert.tflite", tmp_path / "m.tflite")
    with pytest.raises(ArtifactError, match=r"'m\.onnx' and 'm\.tflite' would both be served "
                                            r"as 'm'"):
        _models_in(tmp_path)
    with pytest.raises(ArtifactError, match="Received: a path that does not exist"):
        _models_in(tmp_path / "missing")


def test_cli_refuses_what_it_cannot_serve(folder, tmp_path):
    import subprocess
    import sys

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "kexport", "serve", *map(str, args),
                               "--json"], capture_output=True, text=True, timeout=300)

    proc = serve(tmp_path / "missing")
    assert proc.returncode == 2
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "ArtifactError" and "a path that does not exist" in error["message"]
    proc = serve(folder, "--name", "x", "--port", "0")
    assert proc.returncode == 2
    assert "Expected --name/name= only for a single artifact" in \
        json.loads(proc.stdout)["error"]["message"]


def test_a_runtime_failure_is_a_400_without_paths_and_the_server_keeps_serving():
    """What the checks cannot foresee (a runtime refusing values) is the request's 400; the
    runtime's message reaches the client without local paths."""
    from starlette.testclient import TestClient

    from kexport.runtime import Artifact, EndpointInfo, TensorInfo
    from kexport.serve._app import build_app
    from kexport.serve._models import Served, ServedModel

    class Picky(Artifact):
        def _run(self, endpoint, feeds):
            if (feeds["x"] < 0).any():
                raise RuntimeError("negative input refused by /home/someone/models/picky.onnx "
                                   "node Sqrt\nTraceback (most recent call last): ...")
            return {"y": np.sqrt(feeds["x"])}

    info = EndpointInfo("serve", (TensorInfo("x", (None, 2), "float32"),),
                        (TensorInfo("y", (None, 2), "float32"),))
    artifact = Picky(path="picky.onnx", format="onnx", endpoints={"serve": info},
                     default_endpoint="serve")
    served = Served("picky", artifact)
    app = build_app({"picky": served}, {"picky": ServedModel("picky", served, info)},
                    max_body_bytes=4096, workers=2)

    def ask(values):
        return http.post("/v2/models/picky/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": values}]})

    with TestClient(app) as http:
        reply = ask([-1.0, 4.0])
        assert reply.status_code == 400
        message = reply.json()["error"]
        assert message == ("Model 'picky': the onnx runtime refused the request: RuntimeError: "
                           "negative input refused by <path> node Sqrt")
        reply = ask([1.0, 4.0])
        assert reply.status_code == 200
        assert reply.json()["outputs"][0]["data"] == [1.0, 2.0]


def test_layouts_are_served_as_their_systems_would(folder, tmp_path):
    """A repository written by ``kexport.write_layout`` is served one model per model folder
    (named by the folder, at its highest version); a model or version folder as that model;
    answers equal ``kexport.load`` of the layout's artifact."""
    import tritonclient.http as httpclient

    repo = tmp_path / "repo"
    kexport.write_layout(folder / "mixer_onnx.onnx", repo, name="mixer", layout="triton")
    kexport.write_layout(folder / "mixer_onnx.onnx", repo, name="mixer", layout="triton")
    kexport.write_layout(folder / "mixer_tf_saved_model", repo, name="saved",
                         layout="kserve")
    found = _models_in(repo)
    assert sorted(found) == ["mixer", "saved"]
    assert found["mixer"].parent.name == "2"  # the highest version
    assert _models_in(repo / "mixer" / "1") == {"mixer": repo / "mixer" / "1" / "model.onnx"}
    assert _models_in(repo / "saved", name="s").keys() == {"s"}
    with pytest.raises(ArtifactError, match=r"only for a single model\. Received: a "
                                            r"repository of 2 models \['mixer', 'saved'\]"):
        _models_in(repo, name="x")
    server = Server(repo)
    try:
        assert sorted(server.models) == ["mixer", "saved"]
        with httpclient.InferenceServerClient(server.host_port) as client:
            for model, artifact in found.items():
                loaded = kexport.load(artifact)
                expected = loaded.run(loaded.default_endpoint, {"a": A, "b": B})
                out = client.get_model_metadata(model)["outputs"][0]["name"]
                got = client.infer(model, triton_inputs(True)).as_numpy(out)
                np.testing.assert_array_equal(got, expected[out])
    finally:
        server.stop()

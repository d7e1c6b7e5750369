"""Raw string inputs in OpenVINO IR (openvino-tokenizers), LiteRT (builtin hash-table
ops) and through ``kexport serve`` (issue #27): each artifact reloaded in a fresh process
with its format's own runtime, fed raw strings (vocabulary and out-of-vocabulary words,
upper case, punctuation, non-ASCII, empty strings) and compared with the live model;
integer outputs (ids, hash buckets, bins) exactly."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.errors import UnsupportedRouteError

pytestmark = pytest.mark.backends("tensorflow")  # Keras builds string layers on TensorFlow

CORPUS = ["the cat sat on the mat", "a dog ate my homework", "hello world",
          "grüße café 東京!", "Dog's day, a-ok.", "naïve (people) can't; stop"]
TEXT = np.array(["The CAT sat, on the MAT!", "Grüße, naïve café — 東京!", "",
                 "  the\tdog\n\nate  my\x0bhomework ", "[UNK] zyxwvut dog's", "a-ok..."],
                dtype=object)
WORDS = np.array([["red"], ["RED"], ["blue"], [""], ["Grüße"], ["green!"]], dtype=object)
IDS = np.array([[10, 0, 99], [30, 20, -1], [20, 20, 20], [7, 10, 30], [0, 0, 0], [30, 1, 2]],
               dtype="int64")
NUM = np.array([[-2, 0, 0.5], [3, 1.5, -1], [0.25, 2, 9], [-1, -0.5, 0], [1, 1, 1], [0, 2, 5]],
               dtype="float32")


def _lookup_model(text_layers=True, hashing=True):
    """Every layer a format converts exactly, each output kept (ids and buckets compared
    exactly), and a float score computed from them."""
    word = keras.Input(shape=(1,), dtype="string", name="word")
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    num = keras.Input(shape=(3,), dtype="float32", name="num")
    inputs, outputs = [word, ids, num], {}
    outputs["color"] = keras.layers.StringLookup(vocabulary=["red", "green", "blue", "東京"],
                                                 output_mode="one_hot", name="color")(word)
    outputs["color_id"] = keras.layers.StringLookup(vocabulary=["red", "green"], mask_token="",
                                                    name="color_id")(word)
    outputs["code"] = keras.layers.IntegerLookup(vocabulary=[10, 20, 30], num_oov_indices=2,
                                                 name="code")(ids)
    outputs["color_bag"] = keras.layers.StringLookup(vocabulary=["red", "blue"],
                                                     output_mode="multi_hot",
                                                     name="color_bag")(word)
    outputs["code_count"] = keras.layers.IntegerLookup(vocabulary=[10, 20, 30],
                                                       output_mode="count",
                                                       name="code_count")(ids)
    outputs["bins"] = keras.layers.Discretization(bin_boundaries=[-1.0, 0.0, 0.5, 2.0],
                                                  name="bins")(num)
    if hashing:
        outputs["bucket"] = keras.layers.Hashing(num_bins=1009, name="bucket")(word)
    floats = [outputs["color"], keras.ops.cast(outputs["bins"], "float32")]
    if text_layers:
        text = keras.Input(shape=(), dtype="string", name="text")
        inputs.insert(0, text)
        for name, options in {"tokens": {}, "raw_tokens": {"standardize": None},
                              "lower_tokens": {"standardize": "lower"},
                              "punct_tokens": {"standardize": "strip_punctuation"}}.items():
            tv = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6,
                                                name=name, **options)
            tv.adapt(CORPUS)
            outputs[name] = tv(text)
        for mode in ("multi_hot", "tf_idf"):
            bag = keras.layers.TextVectorization(max_tokens=40, output_mode=mode, name=mode)
            bag.adapt(CORPUS)
            outputs[mode] = bag(text)
        padded = keras.layers.TextVectorization(max_tokens=40, name="padded_tokens")
        padded.adapt(CORPUS)  # no output_sequence_length: padded to the longest row
        outputs["padded_tokens"] = padded(text)
        whole = keras.layers.TextVectorization(max_tokens=40, split=None, name="whole",
                                               output_sequence_length=1)
        whole.adapt(["hello world", "red", "blue"])
        outputs["whole"] = whole(keras.layers.Reshape((1,))(text))
        embedded = keras.layers.Embedding(40, 4)(outputs["tokens"])
        floats.append(keras.layers.GlobalAveragePooling1D()(embedded))
    outputs["score"] = keras.layers.Dense(2, name="score")(keras.layers.Concatenate()(floats))
    return keras.Model(inputs, outputs)


def _feeds(model):
    all_feeds = {"text": TEXT, "word": WORDS, "ids": IDS, "num": NUM}
    return {i.name: all_feeds[i.name] for i in model.inputs}


def _assert_equal_live(model, feeds, got):
    want = {k: np.asarray(v) for k, v in model({k: v for k, v in feeds.items()}).items()}
    for name, value in want.items():
        if name in ("score", "tf_idf"):
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
        else:  # ids, one-hot rows, hash buckets and bins: exactly
            assert got[name].shape == value.shape, name
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_openvino_runs_lookups_hashing_bins_and_text_with_tokenizers(tmp_path, fresh_process):
    model = _lookup_model()
    path = str(tmp_path / "m.xml")
    kexport.export_model(model, path, format="openvino", verbose=False)  # checked before placing
    feeds = _feeds(model)
    got, types = fresh_process("fresh_raw_inputs:openvino_run", path, feeds)
    assert types == ["string", "string", "i64", "f32"]  # kexport's flat input order
    _assert_equal_live(model, feeds, got)
    artifact = kexport.load(path)
    assert artifact.metadata["extensions"] == ["openvino_tokenizers"]
    assert artifact.endpoints["serve"].inputs[0].dtype == "string"
    bytes_feeds = {**feeds, "text": np.array([t.encode() for t in TEXT], dtype=object)}
    _assert_equal_live(model, feeds, artifact(bytes_feeds))
    kind, message = fresh_process("fresh_raw_inputs:load_without", "openvino_tokenizers", path)
    assert kind == "ArtifactError"
    assert "needs openvino-tokenizers" in message and "kexport[strings]" in message


@pytest.mark.full_matrix  # ~9 s
def test_openvino_ir_of_standard_ops_records_no_extension(tmp_path):
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    num = keras.Input(shape=(3,), dtype="float32", name="num")
    model = keras.Model([ids, num], [keras.layers.IntegerLookup(vocabulary=[10, 20])(ids),
                                     keras.layers.Discretization([0.0, 1.0])(num)])
    path = tmp_path / "m.xml"
    kexport.export_model(model, path, format="openvino", verbose=False)  # checked before placing
    artifact = kexport.load(path)
    assert "extensions" not in artifact.metadata
    got = artifact({"ids": IDS, "num": NUM})
    want = model([IDS, NUM])
    for g, w in zip(got.values(), want, strict=True):
        np.testing.assert_array_equal(g, np.asarray(w))


@pytest.mark.parametrize("layer,why", [
    (lambda: keras.layers.Hashing(num_bins=4, salt=7), r"StringToHashBucketStrong \(Hashing "
                                                       r"with a salt"),
    pytest.param(lambda: keras.layers.TextVectorization(vocabulary=["a"], split="character"),
                 "UnicodeDecode", marks=pytest.mark.full_matrix),  # ~9 s
])
def test_openvino_refuses_what_tokenizers_cannot_convert_before_writing(layer, why, tmp_path):
    inp = keras.Input(shape=(), dtype="string", name="s")
    model = keras.Model(inp, layer()(inp))
    path = tmp_path / "m.xml"
    with pytest.raises(UnsupportedRouteError, match=rf"cannot be exported to OpenVINO exactly: "
                                                    rf".*{why}.*format='tf_saved_model'"):
        kexport.export_model(model, path, format="openvino", verbose=False)
    assert not path.exists() and not path.with_suffix(".bin").exists()


def test_litert_runs_string_lookups_and_bins_as_builtin_ops(tmp_path, fresh_process):
    word = keras.Input(shape=(1,), dtype="string", name="word")
    num = keras.Input(shape=(3,), dtype="float32", name="num")
    color = keras.layers.StringLookup(vocabulary=["red", "green", "blue", "東京"],
                                      output_mode="one_hot", name="color")(word)
    outputs = {"color": color,
               "color_id": keras.layers.StringLookup(vocabulary=["red", "green"],
                                                     name="color_id")(word),
               # a mask token: SELECT_V2 after the table (kexport.formats.litert._tables)
               "masked_id": keras.layers.StringLookup(vocabulary=["red", "green"],
                                                      mask_token="", name="masked_id")(word),
               "bins": keras.layers.Discretization(bin_boundaries=[-1.0, 0.0, 0.5, 2.0],
                                                   name="bins")(num)}
    outputs["score"] = keras.layers.Dense(2, name="score")(keras.layers.Concatenate()(
        [color, keras.ops.cast(outputs["bins"], "float32")]))
    model = keras.Model([word, num], outputs)
    path = str(tmp_path / "m.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)  # checked before placing
    feeds = _feeds(model)
    got, kinds = fresh_process("fresh_raw_inputs:litert_run", path, feeds)
    assert kinds == {"word": "S", "num": "f"}  # LiteRT reports a string input as bytes
    _assert_equal_live(model, feeds, got)
    artifact = kexport.load(path)
    assert artifact.endpoints["serve"].inputs[0].dtype == "string"
    assert {"HASHTABLE", "HASHTABLE_FIND", "BUCKETIZE"} <= set(artifact.op_counts()["serve"])
    assert not {"FlexHashTableV2", "FlexLookupTableFindV2"} & set(artifact.op_counts()["serve"])
    _assert_equal_live(model, feeds, artifact(feeds))


@pytest.mark.parametrize("layer,dtype,why", [
    (lambda: keras.layers.IntegerLookup(vocabulary=[1, 2]), "int64",
     r"string -> int64 and int64 -> string tables only"),
    (lambda: keras.layers.Hashing(num_bins=4), "string", r"StringToHashBucketFast"),
])
def test_litert_refuses_what_builtins_cannot_hold_before_writing(layer, dtype, why, tmp_path):
    from kexport.errors import CaptureError

    inp = keras.Input(shape=(1,), dtype=dtype, name="s")
    path = tmp_path / "m.tflite"
    with pytest.raises(CaptureError, match=why):
        kexport.export_model(keras.Model(inp, layer()(inp)), path, format="litert",
                             verbose=False)
    assert not path.exists()


def test_serve_answers_bytes_tensors_and_string_instances_in_every_string_format(tmp_path):
    """``kexport serve`` of one text model in SavedModel, ONNX and OpenVINO and a lookup model
    in LiteRT: tritonclient ``BYTES`` tensors (JSON and binary) and TF-Serving string
    instances (plain and ``{"b64": ...}``) answer what the live model computes; the Triton
    layout declares ``TYPE_STRING`` and the TF-Serving layout warms up with ``DT_STRING``."""
    import base64

    import httpx
    import tritonclient.http as httpclient
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    import fresh_layouts
    from serving import Server, wait_live

    tv = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    tv.adapt(CORPUS)
    text = keras.Input(shape=(), dtype="string", name="text")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 4)(tv(text)))
    model = keras.Model(text, keras.layers.Dense(2, name="score")(pooled))
    word = keras.Input(shape=(1,), dtype="string", name="text")
    lookup = keras.Model(word, keras.layers.Dense(2, name="score")(keras.layers.StringLookup(
        vocabulary=["the", "cat", "dog", "東京"], output_mode="one_hot")(word)))
    root = tmp_path / "served"
    for format, suffix in (("tf_saved_model", ""), ("onnx", ".onnx"), ("openvino", ".xml")):
        kexport.export_model(model, root / f"text_{format}{suffix}", format=format,
                             verbose=False, verify=False)  # checked by the tests above
    kexport.export_model(lookup, root / "words_litert.tflite", format="litert", verbose=False,
                         verify=False)
    texts = {"text": TEXT, "words": TEXT[:, None]}
    want = {"text": np.asarray(model(TEXT)), "words": np.asarray(lookup(TEXT[:, None]))}
    server = Server(root)
    try:
        wait_live(server.url)
        with httpclient.InferenceServerClient(server.host_port) as client, \
                httpx.Client(base_url=server.url, timeout=60) as http:
            for name in server.models:
                kind = name.split("_")[0]
                x = texts[kind]
                [meta] = client.get_model_metadata(name)["inputs"]
                assert meta["datatype"] == "BYTES", name
                for binary in (False, True):
                    tensor = httpclient.InferInput("text", list(x.shape), "BYTES")
                    tensor.set_data_from_numpy(x, binary_data=binary)
                    got = client.infer(name, [tensor]).as_numpy("score")
                    np.testing.assert_allclose(got, want[kind], rtol=1e-5, atol=1e-6,
                                               err_msg=f"{name} binary={binary}")
                rows = [[str(s) for s in r] if x.ndim > 1 else str(r) for r in x]
                reply = http.post(f"/v1/models/{name}:predict", json={"instances": rows})
                assert reply.status_code == 200, reply.text
                np.testing.assert_allclose(reply.json()["predictions"], want[kind],
                                           rtol=1e-5, atol=1e-6)
                b64 = [{"text": [{"b64": base64.b64encode(s.encode()).decode()} for s in r]}
                       if x.ndim > 1 else {"text": {"b64": base64.b64encode(r.encode()).decode()}}
                       for r in x]
                reply = http.post(f"/v1/models/{name}:predict", json={"instances": b64})
                assert reply.status_code == 200, reply.text
                np.testing.assert_allclose(reply.json()["predictions"], want[kind],
                                           rtol=1e-5, atol=1e-6)
                meta = http.get(f"/v1/models/{name}/metadata").json()["metadata"]
                [signature] = meta["signature_def"]["signature_def"].values()
                assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    finally:
        server.stop()
    repo = tmp_path / "repo"
    for format, suffix in (("onnx", ".onnx"), ("openvino", ".xml")):
        kexport.write_layout(root / f"text_{format}{suffix}", repo, name=format,
                             layout="triton")
        config = text_format.Parse((repo / format / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_STRING"
    [written] = kexport.write_layout(root / "text_tf_saved_model", tmp_path / "tfs",
                                     name="text", layout="tf-serving")
    records, signatures = fresh_layouts.warmup_records(written.artifact_path)
    assert {sig: inputs for _, sig, inputs in records} == {
        "serve": {"text": ("object", [1])}, "serving_default": {"text": ("object", [1])}}
    assert signatures["serve"] == {"text": ("string", [None])}


def test_litert_with_tf_text_ops_records_and_registers_them(tmp_path, fresh_process):
    """A layer tokenizing with TF Text (as keras_hub tokenizers do) reaches LiteRT as TF
    Text's custom ops; the manifest lists ``tensorflow_text`` and kexport's LiteRT runtime
    opens it with ``InterpreterWithCustomOps`` and TF Text's registrar."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class Words(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.lookup = keras.layers.StringLookup(vocabulary=["the", "cat", "dog", "東京"])

        def call(self, text):
            tokens = tf_text.WhitespaceTokenizer().tokenize(text)
            ids = tokens.with_flat_values(self.lookup(tokens.flat_values))
            return tf.cast(ids.to_tensor(shape=[None, 6]), "float32")

    text = keras.Input(shape=(), dtype="string", name="text")
    model = keras.Model(text, keras.layers.Dense(2, name="score")(Words()(text)))
    path = str(tmp_path / "m.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)  # checked before placing
    want = np.asarray(model(TEXT))
    got = fresh_process("fresh_raw_inputs:litert_text_run", path, {"text": TEXT})
    np.testing.assert_allclose(got["score"], want, rtol=1e-5, atol=1e-6)
    artifact = kexport.load(path)
    assert artifact.metadata["extensions"] == ["tensorflow_text"]
    assert "TFText>WhitespaceTokenizeWithOffsetsV2" in artifact.op_counts()["serve"]
    np.testing.assert_allclose(artifact(TEXT)["score"], want, rtol=1e-5, atol=1e-6)

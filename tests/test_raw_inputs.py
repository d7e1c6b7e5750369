"""Raw string inputs inside the artifact (issue #27): TextVectorization, StringLookup and
IntegerLookup to SavedModel and to ONNX (kexport's own lowering, standard ops only),
reloaded in a fresh process with the format's own runtime and compared with the live
model on generated real text (vocabulary, out-of-vocabulary words, case, punctuation,
non-ASCII text, empty strings)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

import kexport
from kexport.check.samples import SamplePolicy, sample_inputs
from kexport.errors import SampleDataError, SignatureError, UnsupportedRouteError
from kexport.signature import Spec

pytestmark = pytest.mark.backends("tensorflow")

CORPUS = ["the cat sat on the mat", "a dog ate my homework", "hello world",
          "grüße café 東京!", "Dog's day, a-ok.", "naïve (people) can't; stop"]
TEXT = np.array(["The CAT sat, on the MAT!", "Grüße, naïve café — 東京!", "",
                 "  the\tdog\n\nate  my\x0bhomework ", "[UNK] zyxwvut dog's", "a-ok..."],
                dtype=object)


def _text_model(**options):
    tv = keras.layers.TextVectorization(max_tokens=40, **options)
    tv.adapt(CORPUS)
    inp = keras.Input(shape=(), dtype="string", name="text")
    x = tv(inp)
    if tv._output_mode == "int":
        x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 4)(x))
    return keras.Model(inp, keras.layers.Dense(2, name="score")(x))


def _prefix_outputs(model, x, shape, dtype="string"):
    """The lowered prefix alone, in ONNX Runtime: ``(keras, onnx)`` outputs of the layer."""
    import onnxruntime as ort

    from kexport.formats.onnx.strings._prefix import find_prefix, prefix_model

    prefix = find_prefix(model, 1)
    graph = prefix_model(prefix, ["x"], [Spec(shape, dtype, "x")], ["y"], 20)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    layer_model = keras.Model(model.inputs, prefix.outputs)
    got = session.run(None, {"x": x})[0]
    # the dtype the rest of the model is built for (Keras's eager TextVectorization gives
    # int64 counts where its symbolic output says float32)
    assert got.dtype == np.dtype(prefix.outputs[0].dtype)
    return np.asarray(layer_model(x)), got


_TV_CASES = [c for c in itertools.product(
    [None, "lower", "strip_punctuation", "lower_and_strip_punctuation"],
    ["whitespace", None], [None, 5], ["int", "multi_hot", "count", "tf_idf"])
    if c[3] == "int" or c[2] is None]


@pytest.mark.parametrize("standardize,split,length,mode", _TV_CASES)
def test_text_vectorization_lowering_equals_keras_on_real_text(standardize, split, length, mode):
    tv = keras.layers.TextVectorization(max_tokens=40, standardize=standardize, split=split,
                                        output_sequence_length=length, output_mode=mode)
    tv.adapt(CORPUS)
    shape = (None,) if split else (None, 1)
    inp = keras.Input(shape=shape[1:], dtype="string", name="x")
    model = keras.Model(inp, tv(inp))
    vocab = tuple(tv.get_vocabulary(include_special_tokens=False))
    policy = SamplePolicy(names=("x",), texts={"x": (vocab, split is not None)})
    generated = sample_inputs([Spec(shape, "string", "x")], 24, 7, policy=policy)[0]
    for x in (TEXT if split else TEXT[:, None], generated):
        want, got = _prefix_outputs(model, x, shape)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["int", "one_hot", "multi_hot", "count"])
@pytest.mark.parametrize("mask", [None, "[MASK]"])
def test_string_and_integer_lookup_lowering_equals_keras(mode, mask):
    words = np.array(["cat", "Cat", "東京", "", "zzz", "dog", "[MASK]", "[UNK]"], dtype=object)
    shape = (None, 1) if mode != "int" else (None,)
    sl = keras.layers.StringLookup(vocabulary=["cat", "dog", "Grüße", "東京"], output_mode=mode,
                                   mask_token=mask)
    inp = keras.Input(shape=shape[1:], dtype="string", name="x")
    want, got = _prefix_outputs(keras.Model(inp, sl(inp)),
                                words[:, None] if mode != "int" else words, shape)
    np.testing.assert_array_equal(got, want)
    il = keras.layers.IntegerLookup(vocabulary=[3, 7, 11], output_mode=mode,
                                    mask_token=None if mask is None else 0,
                                    num_oov_indices=2 if mode == "int" else 1)
    inp = keras.Input(shape=(4,), dtype="int64", name="x")
    ids = np.array([[3, 0, 9, 11], [7, 7, -1, 5]], dtype="int64")
    want, got = _prefix_outputs(keras.Model(inp, il(inp)), ids, (None, 4), "int64")
    np.testing.assert_array_equal(got, want)


def test_generated_text_covers_what_real_text_brings():
    vocab = ("the", "cat", "sat")
    policy = SamplePolicy(names=("t",), texts={"t": (vocab, True)})
    rows = [s for seed in range(4) for size in (1, 3)
            for s in sample_inputs([Spec((None,), "string", "t")], size, seed,
                                   policy=policy)[0]]
    joined = " ".join(rows)
    assert all(isinstance(s, str) for s in rows)
    assert "" in rows and len({len(s) for s in rows}) > 4  # empty strings, varied lengths
    assert any(w in joined for w in vocab) and any(w.upper() in joined for w in vocab)
    assert any(c in joined for c in ",.!?") and any(ord(c) > 127 for c in joined)
    assert "\t" in joined or "\n" in joined or "  " in joined
    single = sample_inputs([Spec((None,), "string", "t")], 1, 0, policy=policy)[0]
    assert single[0]  # a case of one string is never only the empty string


def test_text_model_onnx_and_saved_model_equal_live_in_fresh_process(tmp_path, fresh_process):
    model = _text_model(output_sequence_length=6)
    want = np.asarray(model(TEXT))
    onnx_path, sm_path = str(tmp_path / "m.onnx"), str(tmp_path / "m")
    kexport.export_model(model, onnx_path, format="onnx", verify=True, verbose=False)
    kexport.export_model(model, sm_path, verify=True, verbose=False)
    outs, types, ops = fresh_process("fresh_raw_inputs:onnx_run", onnx_path, {"text": TEXT})
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-6)
    assert types == ["tensor(string)"]
    assert {d for d, _ in ops} <= {"ai.onnx", "ai.onnx.ml"}  # standard operators only
    assert ("ai.onnx", "StringSplit") in ops and ("ai.onnx.ml", "LabelEncoder") in ops
    got = fresh_process("saved_model_call", sm_path, "serve", [TEXT.astype(str)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    for path in (onnx_path, sm_path):  # Artifact.run takes str and bytes arrays
        artifact = kexport.load(path)
        for texts in (TEXT, TEXT.astype(str), np.array([t.encode() for t in TEXT], dtype=object)):
            np.testing.assert_allclose(artifact(texts)["score"], want, rtol=1e-5, atol=1e-6)
        with pytest.raises(SignatureError, match=r"input 'text': expected strings\. Received: "
                                                 r"dtype float32"):
            artifact(np.zeros(2, "float32"))


def test_lookup_models_to_onnx_with_their_outputs_after_the_lookup(tmp_path, fresh_process):
    words = keras.Input(shape=(1,), dtype="string", name="word")
    hot = keras.layers.StringLookup(vocabulary=["red", "green", "blue"],
                                    output_mode="one_hot")(words)
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    multi = keras.layers.IntegerLookup(vocabulary=[10, 20, 30], output_mode="multi_hot")(ids)
    out = keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([hot, multi]))
    model = keras.Model([words, ids], out)
    feeds = {"word": np.array([["red"], ["RED"], ["blue"], [""]], dtype=object),
             "ids": np.array([[10, 99, 30], [20, 20, 0], [-5, 10, 10], [30, 30, 30]], "int64")}
    path = str(tmp_path / "lookup.onnx")
    kexport.export_model(model, path, format="onnx", verify=True, verbose=False)
    outs, types, _ = fresh_process("fresh_raw_inputs:onnx_run", path, feeds)
    np.testing.assert_allclose(outs[0], np.asarray(model([feeds["word"], feeds["ids"]])),
                               rtol=1e-5, atol=1e-6)
    assert types == ["tensor(string)", "tensor(int64)"]


def test_sample_data_takes_the_users_strings(tmp_path):
    model = _text_model(output_sequence_length=4)
    path = tmp_path / "m.onnx"
    kexport.export_model(model, path, format="onnx", verbose=False,
                         sample_data=np.array(["my own text", "Another one!"]), verify=True)
    report = kexport.verify(model, str(path), data=np.array(["The user's words"]))
    assert report.ok, report
    with pytest.raises(SampleDataError, match=r"input 'text' of dtype string\. Received dtype "
                                              r"float32"):
        kexport.export_model(model, tmp_path / "bad.onnx", format="onnx",
                             sample_data=np.zeros(2, "float32"))
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("layer,why", [
    (lambda: keras.layers.Hashing(num_bins=4), "no ONNX lowering"),
    (lambda: keras.layers.TextVectorization(split="character", vocabulary=["a", "b"]),
     r"split='character'"),
    (lambda: keras.layers.StringLookup(vocabulary=["a"], num_oov_indices=2),
     "FarmHash"),
    (lambda: keras.layers.StringLookup(vocabulary=["a"], invert=True), "invert=True"),
])
def test_layers_onnx_cannot_hold_exactly_are_refused_before_writing(layer, why, tmp_path):
    inp = keras.Input(shape=(), dtype="string", name="s")
    model = keras.Model(inp, layer()(inp))
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedRouteError, match=rf"cannot be exported to ONNX exactly: .*"
                                                    rf"{why}.*format='tf_saved_model'"):
        kexport.export_model(model, path, format="onnx", verbose=False)
    assert not path.exists()


def test_opset_below_string_split_is_refused(tmp_path):
    with pytest.raises(SignatureError, match=r"Expected `opset_version` >= 20 .* Received: "
                                             r"opset_version=18"):
        kexport.export_model(_text_model(), tmp_path / "m.onnx", format="onnx",
                             opset_version=18, verbose=False)
    assert not (tmp_path / "m.onnx").exists()


def test_a_wrong_lowering_is_caught_by_the_check_and_nothing_is_written(tmp_path, monkeypatch):
    from kexport.formats.onnx.strings._ops import Builder

    monkeypatch.setattr(Builder, "lower", lambda self, x: x)  # forgets to lowercase
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedRouteError, match=r"does not reproduce the model on "
                                                    r"generated text .* nothing was written"):
        kexport.export_model(_text_model(standardize="lower"), path, format="onnx",
                             verbose=False)
    assert not path.exists()

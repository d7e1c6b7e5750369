"""Dimension symbols and bounds come from the model (#15 "Shared dimension symbols",
"Bounded dimensions"; #14 item 5): the artifact takes independent lengths
independently, equal ones as one symbol, and bounded ones up to their bound."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from kexport._dims import plan_signature
from kexport.signature import Spec, normalize


def _seq2seq():
    """An encoder/decoder-like model: cross attention from the decoder sequence to
    the encoder sequence; each mask must match its own sequence's length."""

    class Seq2Seq(keras.Model):
        def __init__(self):
            super().__init__()
            self.enc_emb = keras.layers.Embedding(20, 8)
            self.dec_emb = keras.layers.Embedding(20, 8)
            self.cross = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
            self.head = keras.layers.Dense(5)

        def call(self, inputs):
            ops = keras.ops
            enc = self.enc_emb(inputs["encoder_ids"]) * ops.expand_dims(inputs["encoder_mask"], -1)
            dec = self.dec_emb(inputs["decoder_ids"]) * ops.expand_dims(inputs["decoder_mask"], -1)
            return self.head(self.cross(dec, enc))

    model = Seq2Seq()
    spec = {"encoder_ids": keras.InputSpec(shape=(None, None), dtype="int32"),
            "encoder_mask": keras.InputSpec(shape=(None, None), dtype="float32"),
            "decoder_ids": keras.InputSpec(shape=(None, None), dtype="int32"),
            "decoder_mask": keras.InputSpec(shape=(None, None), dtype="float32")}
    return model, [spec]


def _feed(batch, enc, dec, seed=0):
    rng = np.random.default_rng(seed)
    return {"decoder_ids": rng.integers(0, 20, (batch, dec)).astype("int32"),
            "decoder_mask": (rng.random((batch, dec)) < 0.8).astype("float32"),
            "encoder_ids": rng.integers(0, 20, (batch, enc)).astype("int32"),
            "encoder_mask": (rng.random((batch, enc)) < 0.8).astype("float32")}


def _live(model, feed):
    out = model({k: keras.ops.convert_to_tensor(v) for k, v in feed.items()})
    return np.asarray(keras.ops.convert_to_numpy(out))


# Lengths the export never saw, encoder and decoder always different.
_CALLS = [(2, 7, 3), (1, 4, 9), (3, 6, 6)]


def test_plan_groups_axes_the_model_forces_equal():
    model, sig = _seq2seq()
    _live(model, _feed(2, 5, 3))
    planned = plan_signature(lambda x: model(x, training=False), normalize(sig))[0]
    symbols = {k: s.symbols for k, s in planned.items()}
    assert symbols["encoder_ids"] == symbols["encoder_mask"] == ("batch", "encoder_ids_d1")
    assert symbols["decoder_ids"] == symbols["decoder_mask"] == ("batch", "decoder_ids_d1")
    # the plan travels in the manifest's spec JSON, and old entries without it still read
    again = Spec.from_json(json.loads(json.dumps(planned["encoder_ids"].to_json())))
    assert again == planned["encoder_ids"]
    assert Spec.from_json({"name": "x", "shape": [None, 3], "dtype": "float32"}).symbols is None


def test_plan_falls_back_to_axis_positions_and_says_so():
    def refuses(x):
        raise ValueError("this model runs on nothing")

    said = []
    sig = [[Spec((None, None), "float32", "a"), Spec((None, None), "float32", "b")]]
    planned = plan_signature(refuses, sig, say=said.append)[0]
    assert [s.symbols for s in planned] == [("batch", "d1"), ("batch", "d1")]
    assert len(said) == 1 and "a[1], b[1]" in said[0] and "(d1)" in said[0]


def test_symbols_given_by_the_user_are_kept_and_sized_by_the_check():
    from kexport.check.samples import sample_inputs

    calls = []
    sig = [[Spec((None, None), "float32", "a", ("batch", "src")),
            Spec((None, None, 2), "float32", "b", ("batch", "src", None), (None, 4, None)),
            Spec((None, None), "float32", "c", ("batch", "tgt"))]]
    assert plan_signature(calls.append, sig) is sig and calls == []  # not probed
    for size in (1, 3):
        a, b, c = sample_inputs(sig[0], size, 0)
        assert a.shape[1] == b.shape[1] <= 4 and c.shape[1] != a.shape[1]
        assert a.shape[0] == b.shape[0] == c.shape[0] == size
    with pytest.raises(kexport.SignatureError, match="Expected `symbols` to hold one identifier"):
        Spec((None, 3), "float32", "x", ("batch", "three"))


def _onnx_check(model, path, fresh_process):
    feeds = [_feed(*c, seed=i) for i, c in enumerate(_CALLS)]
    got = fresh_process("fresh_onnx:inspect_and_run", path, feeds)
    dims = dict(got["inputs"])
    assert dims["encoder_ids"] == dims["encoder_mask"] == ["batch", "encoder_ids_d1"]
    assert dims["decoder_ids"] == dims["decoder_mask"] == ["batch", "decoder_ids_d1"]
    for feed, (y,) in zip(feeds, got["results"], strict=True):
        np.testing.assert_allclose(y, _live(model, feed), atol=1e-5, rtol=1e-4)


def test_independent_lengths_onnx(tmp_path, fresh_process):
    model, sig = _seq2seq()
    _live(model, _feed(2, 5, 3))
    path = str(tmp_path / "s2s.onnx")
    kexport.export_onnx(model, path, input_signature=sig, verbose=False)
    _onnx_check(model, path, fresh_process)


@pytest.mark.backends("tensorflow", "jax")
def test_independent_lengths_saved_model(tmp_path, fresh_process):
    model, sig = _seq2seq()
    _live(model, _feed(2, 5, 3))
    path = str(tmp_path / "s2s")
    kexport.export_saved_model(model, path, input_signature=sig, verbose=False)
    feeds = [_feed(*c, seed=i) for i, c in enumerate(_CALLS)]
    got = fresh_process("fresh_dims:saved_model_calls", path, feeds)
    for feed, out in zip(feeds, got, strict=True):
        (y,) = out.values()
        np.testing.assert_allclose(y, _live(model, feed), atol=1e-5, rtol=1e-4)
    manifest = json.loads((tmp_path / "s2s" / "assets.extra" / "kexport.json").read_text())
    entry = {t["name"]: t for t in manifest["endpoints"]["serve"]["inputs"]}
    assert entry["encoder_mask"]["symbols"] == ["batch", "encoder_ids_d1"]
    assert entry["decoder_ids"]["symbols"] == ["batch", "decoder_ids_d1"]


@pytest.mark.backends("torch")
def test_independent_lengths_torch_program(tmp_path, fresh_process):
    model, sig = _seq2seq()
    _live(model, _feed(2, 5, 3))
    path = str(tmp_path / "s2s.pt2")
    kexport.export_torch(model, path, input_signature=sig, verbose=False)
    names = ["decoder_ids", "decoder_mask", "encoder_ids", "encoder_mask"]
    feeds = [_feed(*c, seed=i) for i, c in enumerate(_CALLS)]
    (got,) = fresh_process("fresh_formats:torch_run", [(path, [[f[n] for n in names]
                                                               for f in feeds])])
    assert got["inputs"] == names
    for feed, (y,) in zip(feeds, got["outputs"], strict=True):
        np.testing.assert_allclose(y, _live(model, feed), atol=1e-5, rtol=1e-4)


# -- bounded lengths: a position embedding of max_sequence_length rows --------------------------
def _bert():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=16)


def _bert_feed(batch, length, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), "int32")
    mask[:, length - 1:] = 0
    return {"padding_mask": mask,
            "segment_ids": rng.integers(0, 2, (batch, length)).astype("int32"),
            "token_ids": rng.integers(0, 50, (batch, length)).astype("int32")}


def _bert_live(model, feed):
    out = model({k: keras.ops.convert_to_tensor(v) for k, v in feed.items()})
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in out.items()}


_BERT_CALLS = [(2, 5), (1, 12)]  # two lengths within the bound of 16


@pytest.mark.backends("torch")
def test_bounded_length_torch_program(tmp_path, fresh_process):
    model = _bert()
    path = str(tmp_path / "bert.pt2")
    kexport.export_torch(model, path, verbose=False)
    ranges = fresh_process("fresh_dims:torch_ranges", path)
    assert sorted(ranges) == ["padding_mask", "segment_ids", "token_ids"]
    for axes in ranges.values():  # one length, bounded by the position embedding
        assert axes[1][1] == 16 and axes[0][1] is None, ranges
    feeds = [_bert_feed(*c, seed=i) for i, c in enumerate(_BERT_CALLS)]
    names = sorted(feeds[0])
    (got,) = fresh_process("fresh_formats:torch_run", [(path, [[f[n] for n in names]
                                                               for f in feeds])])
    for feed, outs in zip(feeds, got["outputs"], strict=True):
        want = _bert_live(model, feed)
        for y, key in zip(outs, sorted(want), strict=True):
            np.testing.assert_allclose(y, want[key], atol=1e-5, rtol=1e-4)
    manifest = json.loads(got["manifest"])
    entry = {t["name"]: t for t in manifest["endpoints"]["serve"]["inputs"]}
    assert entry["token_ids"]["bounds"] == [None, 16]
    assert entry["token_ids"]["symbols"] == entry["padding_mask"]["symbols"] == ["batch", "d1"]


@pytest.mark.backends("torch")
def test_guard_no_dim_states_becomes_runtime_check_torch_program(tmp_path, fresh_process):
    # A stride-2 convolution, then a position table of 8 rows sliced to the frame
    # count (Whisper's encoder). torch.export suggests `Dim(min=3, max=16)` for the
    # length, then still cannot prove the guard `1 % ((d1 - 1) // 2 + 1) != 0`
    # (frames != 1) over that range and suggests nothing: "Constraints violated (d1)".
    # The export keeps that guard as a runtime assertion in the program instead.
    class Positions(keras.layers.Layer):
        def build(self, shape):
            self.table = self.add_weight(shape=(8, shape[-1]), initializer="random_normal")

        def call(self, x):
            frames = keras.ops.shape(x)[1]
            rows = keras.ops.slice(self.table, (0, 0), (frames, keras.ops.shape(x)[-1]))
            return x + keras.ops.broadcast_to(rows, keras.ops.shape(x))

    class Frames(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv1D(6, 3, padding="same", activation="gelu")
            self.pad = keras.layers.ZeroPadding1D(1)
            self.down = keras.layers.Conv1D(6, 3, strides=2)
            self.positions = Positions()

        def call(self, x):
            return self.positions(self.down(self.pad(self.conv(x))))

    model = Frames()
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, n, 4)).astype("float32") for b, n in ((2, 5), (1, 16), (3, 17))]
    model(xs[0])
    path = str(tmp_path / "frames.pt2")
    kexport.export_torch(model, path, input_signature=[keras.InputSpec(shape=(None, None, 4))],
                         verbose=False)
    (ranges,) = fresh_process("fresh_dims:torch_ranges", path).values()
    assert ranges == [(0, None), (3, 16), None]  # 8 positions: at most 16 frames in
    ok5, ok16, past = fresh_process("fresh_dims:torch_outcomes", path, [[x] for x in xs])
    for x, (status, (y,)) in zip(xs, (ok5, ok16), strict=False):
        assert status == "ok"
        np.testing.assert_allclose(y, keras.ops.convert_to_numpy(model(x)), atol=1e-5, rtol=1e-4)
    assert past == ["error", "AssertionError", "Guard failed: input_0.size()[1] <= 16"]
    manifest = json.loads(fresh_process("fresh_formats:torch_run", [(path, [])])[0]["manifest"])
    assert manifest["endpoints"]["serve"]["inputs"][0]["bounds"] == [None, 16, None]


@pytest.mark.backends("jax")
def test_bounded_length_jax_saved_model(tmp_path, fresh_process):
    model = _bert()
    path = tmp_path / "bert"
    kexport.export_saved_model(model, str(path), verbose=False)
    manifest = json.loads((path / "assets.extra" / "kexport.json").read_text())
    entry = {t["name"]: t for t in manifest["endpoints"]["serve"]["inputs"]}
    assert entry["token_ids"]["bounds"] == [None, 16]
    assert entry["segment_ids"]["symbols"] == entry["token_ids"]["symbols"] == ["batch", "d1"]
    feeds = [_bert_feed(*c, seed=i) for i, c in enumerate(_BERT_CALLS)]
    got = fresh_process("fresh_dims:saved_model_calls", str(path), feeds)
    for feed, out in zip(feeds, got, strict=True):
        want = _bert_live(model, feed)
        assert sorted(out) == sorted(want)
        for key in want:
            np.testing.assert_allclose(out[key], want[key], atol=1e-5, rtol=1e-4)


# -- #14 item 5: JAX export_saved_model with several dynamic dims --------------------------------
@pytest.mark.backends("jax", "tensorflow", "torch")
def test_dims_forced_equal_across_inputs_saved_model(tmp_path, fresh_process):
    class Scores(keras.Model):
        def __init__(self):
            super().__init__()
            self.scale = keras.layers.Dense(1)

        def call(self, inputs):
            x, y = inputs  # x: (batch, n), y: (batch, k, n): n must agree
            return self.scale(keras.ops.expand_dims(keras.ops.einsum("bn,bkn->bk", x, y), -1))

    model = Scores()
    sig = [(keras.InputSpec(shape=(None, None), name="x"),
            keras.InputSpec(shape=(None, 3, None), name="y"))]
    model((np.ones((2, 4), "float32"), np.ones((2, 3, 4), "float32")))
    path = str(tmp_path / "scores")
    kexport.export_saved_model(model, path, input_signature=sig, verbose=False)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((b, n)).astype("float32"),
              "y": rng.standard_normal((b, 3, n)).astype("float32")} for b, n in ((3, 7), (1, 2))]
    got = fresh_process("fresh_dims:saved_model_calls", path, feeds)
    for feed, out in zip(feeds, got, strict=True):
        (y,) = out.values()
        want = keras.ops.convert_to_numpy(model((feed["x"], feed["y"])))
        np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-4)

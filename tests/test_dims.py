"""Dimension symbols and bounds come from the model (#15 "Shared dimension symbols",
"Bounded dimensions"; #14 item 5): the artifact takes independent lengths
independently, equal ones as one symbol, and bounded ones up to their bound."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
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

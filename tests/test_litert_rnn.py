"""Masked recurrent layers to LiteRT: builtin ops where the length is static,
a refusal naming the layer where it is not."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.artifact import read_litert_metadata
from kexport.errors import CaptureError


def _masked_lstm(length):
    inp = keras.Input((length, 8), name="frames")
    x = keras.layers.Masking()(inp)
    x = keras.layers.LSTM(4, name="lstm")(x)
    return keras.Model(inp, keras.layers.Dense(2, name="head")(x))


@pytest.mark.backends("tensorflow")
def test_masked_lstm_with_static_length_is_builtin_and_right(tmp_path, fresh_process):
    model = _masked_lstm(6)
    path = str(tmp_path / "m.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    ops = read_litert_metadata(path)["operators"]
    assert not any(op.startswith("Flex") or "TensorList" in op for op in ops), ops
    rng = np.random.default_rng(0)
    feeds = []
    for batch in (1, 3):
        x = rng.random((batch, 6, 8)).astype("float32")
        x[0, 2:] = 0.0  # a masked tail
        feeds.append({"frames": x})
    (res,) = fresh_process("fresh_formats:litert_run", [(path, "serve", feeds)])
    for feed, got in zip(feeds, res["outputs"]):
        np.testing.assert_allclose(got["head"], keras.ops.convert_to_numpy(model(feed)),
                                   atol=1e-5)


@pytest.mark.backends("tensorflow")
def test_masked_lstm_over_dynamic_length_is_refused_naming_the_layer(tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(CaptureError, match=r"recurrent layer\(s\) 'lstm' \(LSTM\) over a dynamic "
                                           r"time axis.*declare the length static.*"
                                           r"pass allow_flex=True"):
        kexport.export_model(_masked_lstm(None), path, format="litert", verbose=False)
    assert not path.exists()

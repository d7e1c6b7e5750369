"""TensorFlow and PyTorch (re-hosted on TensorFlow) -> LiteRT: new axes in builtin ops.

``x[:, None, :, :]`` of a tensor of dynamic shape is a ``StridedSlice`` with a
``new_axis_mask`` that the TFLite converter lowers only for static shapes
(keras_hub's Llama attention mask: a ``CaptureError`` asking for Flex ops, on
TensorFlow and PyTorch alike). The writer's trace adds new axes with
``expand_dims`` (``kexport.formats.litert._newaxis``); artifacts run in a fresh
LiteRT interpreter, compared with the live model.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

import kexport

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def _cells():
    """By default on TensorFlow only: from PyTorch the same TensorFlow trace runs in the
    re-host child (``KEXPORT_FULL_MATRIX=1`` runs it)."""
    return ["native" if BACKEND == "tensorflow"
            else pytest.param("rehost", marks=pytest.mark.full_matrix)]


def _run(path, feeds, fresh_process):
    (res,) = fresh_process("fresh_formats:litert_run", [(path, "serve", feeds)])
    return res


@pytest.mark.backends("tensorflow", "torch")
@pytest.mark.parametrize("route", _cells())
def test_new_axes_of_a_dynamic_mask_in_builtin_ops(route, tmp_path, fresh_process):
    class Scores(keras.layers.Layer):  # a mask broadcast over heads, as attention does
        def call(self, inputs):
            x, mask = inputs
            scores = x[:, None, :, :] * keras.ops.cast(mask[:, None, None, :], x.dtype)
            return scores[:, 0, ...] + x[None, 0]

    x_in = keras.Input((None, 4), name="x")
    mask_in = keras.Input((4,), dtype="int32", name="mask")
    model = keras.Model([x_in, mask_in], Scores(name="scores")([x_in, mask_in]))
    path = str(tmp_path / "m.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((b, n, 4)).astype("float32"),
              "mask": rng.integers(0, 2, (b, 4)).astype("int32")} for b, n in ((2, 3), (1, 5))]
    res = _run(path, feeds, fresh_process)
    for feed, got in zip(feeds, res["outputs"], strict=True):
        (y,) = got.values()
        want = keras.ops.convert_to_numpy(model([feed["x"], feed["mask"]]))
        np.testing.assert_allclose(y, want, atol=1e-6, rtol=1e-6)


@pytest.mark.backends("tensorflow", "torch")
@pytest.mark.parametrize("route", _cells())
def test_tiny_llama_backbone_right_in_litert(route, tmp_path, fresh_process):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    model = keras_hub.models.LlamaBackbone(vocabulary_size=1000, num_layers=2, num_query_heads=4,
                                           num_key_value_heads=2, hidden_dim=32,
                                           intermediate_dim=64)
    path = str(tmp_path / "llama.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    rng = np.random.default_rng(0)
    feeds = []
    for b, n in ((1, 7), (2, 5)):
        mask = np.ones((b, n), "int32")
        mask[-1, n - 2:] = 0  # a padded row
        feeds.append({"token_ids": rng.integers(1, 1000, (b, n)).astype("int32"),
                      "padding_mask": mask})
    res = _run(path, feeds, fresh_process)
    for feed, got in zip(feeds, res["outputs"], strict=True):
        (y,) = got.values()
        want = keras.ops.convert_to_numpy(model(feed))
        keep = feed["padding_mask"].astype(bool)  # padded positions are undefined
        np.testing.assert_allclose(y[keep], want[keep], atol=1e-4, rtol=1e-4)

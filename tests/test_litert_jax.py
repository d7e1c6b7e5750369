"""JAX -> LiteRT: the forms the TFLite converter got wrong or refused.

A ``dot_general`` contracting two axes (the attention output projection of
keras_hub's decoders) came out wrong; constant indexing on a symbolic axis
(BERT's ``[CLS]`` token) needed ``dynamic_gather``. The writer's trace rewrites
both (``kexport.formats.litert._jax_forms``); artifacts run in a fresh
LiteRT interpreter.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.formats.litert._jax_forms import merged_subscripts, slice_plan


@pytest.mark.fast
def test_merged_subscripts_contract_one_axis():
    assert merged_subscripts("bquh,uhm->bqm") == ("bqa,ma->bqm", [0, 1, 2, 3], [2, 0, 1], 2)
    assert merged_subscripts("abcd,cde->abe") == ("abf,ef->abe", [0, 1, 2, 3], [2, 0, 1], 2)
    for kept in ("bqm,muh->bquh", "ab,bc->ac", "...ij,jk->...ik", "ii->i", "abc,bcd", "abc->a",
                 "abcx,bcd->ad"):
        assert merged_subscripts(kept) is None, kept


@pytest.mark.fast
def test_slice_plan_of_constant_keys():
    assert slice_plan((slice(None), 0, slice(None)), (None, 7, 32)) == (
        [0, 0, 0], [None, 1, 32], [1])
    assert slice_plan((Ellipsis, 1), (2, 3, 4)) == ([0, 0, 1], [2, 3, 2], [2])
    assert slice_plan(slice(1, 9), (4, 5)) == ([1, 0], [4, 5], [])
    for refused in ((slice(None), -1), (slice(None, None, 2),), (0, 0, 0), ((0, 1),),
                    (slice(None), 5)):
        assert slice_plan(refused, (3, 5)) is None, refused


def _run(path, feeds, fresh_process):
    (res,) = fresh_process("fresh_formats:litert_run", [(path, "serve", feeds)])
    return res


def _compare(model, path, feeds, fresh_process, atol):
    res = _run(path, feeds, fresh_process)
    for feed, got in zip(feeds, res["outputs"]):
        (y,) = got.values()
        want = keras.ops.convert_to_numpy(model(feed))
        np.testing.assert_allclose(y, want, atol=atol, rtol=1e-4)
    return res


@pytest.mark.backends("jax")
def test_two_axis_contraction_and_cls_slice_right_in_litert(tmp_path, fresh_process):
    inp = keras.Input((None, 4, 8), name="x")
    y = keras.layers.EinsumDense("bquh,uhm->bqm", output_shape=(None, 16), name="proj")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(y[:, 0, :]))
    path = str(tmp_path / "m.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(b, t, 4, 8)).astype("float32")} for b, t in [(1, 7), (3, 2)]]
    res = _compare(model, path, feeds, fresh_process, atol=1e-5)
    assert res["shape_signature"]["x"] == [-1, -1, 4, 8]


def _tokens(batch, length, seed, segments=False):
    rng = np.random.default_rng(seed)
    x = {"token_ids": rng.integers(1, 1000, (batch, length)).astype("int32"),
         "padding_mask": np.ones((batch, length), "int32")}
    if segments:
        x["segment_ids"] = np.zeros((batch, length), "int32")
    return x


@pytest.mark.backends("jax")
@pytest.mark.full_matrix
def test_tiny_llama_backbone_right_in_litert(tmp_path, fresh_process):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    model = keras_hub.models.LlamaBackbone(vocabulary_size=1000, num_layers=2, num_query_heads=4,
                                           num_key_value_heads=2, hidden_dim=32,
                                           intermediate_dim=64)
    path = str(tmp_path / "llama.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    _compare(model, path, [_tokens(1, 7, 0), _tokens(2, 5, 1)], fresh_process, atol=1e-4)


@pytest.mark.backends("jax")
@pytest.mark.full_matrix
def test_tiny_bert_classifier_right_in_litert(tmp_path, fresh_process):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=1000, num_layers=2, num_heads=2,
                                             hidden_dim=32, intermediate_dim=64,
                                             max_sequence_length=64)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=None)
    path = str(tmp_path / "bert.tflite")
    kexport.export_model(model, path, format="litert", verbose=False)
    _compare(model, path, [_tokens(1, 7, 0, True), _tokens(2, 5, 1, True)], fresh_process,
             atol=1e-5)

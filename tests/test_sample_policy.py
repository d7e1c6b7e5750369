"""Check inputs the model can take (#15): ids over each Embedding's range, masks
with a kept prefix, read from the model once at export; user sample data that
drives every check; bad sample data refused by type and message."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import kexport
from kexport.check.policy import flat_sample_data, policy_for
from kexport.check.samples import recorded_policy, sample_inputs
from kexport.context import ExportContext
from kexport.errors import SampleDataError
from kexport.signature import Spec, flatten, normalize_for_model


def _assert_prefix_mask(mask):
    """Every row: ones then zeros, at least one kept; some row really padded."""
    rows = np.asarray(mask).reshape(-1, mask.shape[-1]).astype(int)
    kept = rows.sum(axis=1)
    assert (kept >= 1).all()
    for row, k in zip(rows, kept, strict=True):
        assert row[:k].all() and not row[k:].any()
    assert (kept < rows.shape[1]).any()


@pytest.mark.fast
def test_masks_keep_a_prefix_and_pad_a_suffix():
    specs = [Spec((None, None), "bool", "anything"), Spec((None, None), "int32", "padding_mask"),
             Spec((None, 6, 6), "float32", "x"), Spec((None, None), "int32", "ids")]
    for size in (1, 3, 8):
        boolean, padding, _, ids = sample_inputs(specs, size, 0)
        assert boolean.dtype == np.bool_ and padding.dtype == np.int32
        _assert_prefix_mask(boolean)
        _assert_prefix_mask(padding)
        assert set(np.unique(ids)) <= {0, 1}  # no model, no id range: today's policy
    # a 3-d attention mask: every (batch, query) row keeps at least one key
    (attention,) = sample_inputs([Spec((None, 5, 5), "bool", "attention_mask")], 3, 1)
    _assert_prefix_mask(attention)


@pytest.mark.fast
def test_ids_cover_the_embedding_range_read_from_the_model():
    import keras

    ids_in = keras.Input((None,), dtype="int32", name="tokens")
    flags = keras.Input((None,), dtype="int32", name="flags")  # reaches no Embedding
    x = keras.layers.Embedding(1000, 4)(ids_in)
    y = keras.ops.expand_dims(keras.ops.cast(flags, "float32"), -1)
    functional = keras.Model([ids_in, flags], keras.layers.GlobalAveragePooling1D()(x * y))
    signature = normalize_for_model(functional, None)
    policy = policy_for(functional, signature)
    assert dict(policy.ids) == {"tokens": 1000} and policy.masks == ()
    specs = flatten(signature)
    by_name = dict(zip([s.name for s in specs], sample_inputs(specs, 64, 0, policy=policy),
                       strict=True))
    tokens = by_name["tokens"]
    assert tokens.min() >= 0 and tokens.max() < 1000 and tokens.max() > 900
    assert len(np.unique(tokens)) > 500  # the whole range, not {0, 1}
    assert set(np.unique(by_name["flags"])) == {0, 1}
    # the same facts from what an export records of its context (kexport verify ARTIFACT)
    replayed = recorded_policy(ExportContext(samples=policy).recorded())
    again = dict(zip([s.name for s in specs], sample_inputs(specs, 64, 0, policy=replayed),
                     strict=True))
    np.testing.assert_array_equal(again["tokens"], tokens)
    assert sample_inputs(specs, 64, 0)[[s.name for s in specs].index("tokens")].max() <= 1

    # a backbone nested in a task model: walked from its own matching input
    tok, seg = keras.Input((None,), dtype="int32", name="tok"), keras.Input(
        (None,), dtype="int32", name="seg")
    h = keras.layers.Embedding(1000, 4)(tok) + keras.layers.Embedding(2, 4)(seg)
    backbone = keras.Model({"tok": tok, "seg": seg}, h)
    outer = {"tok": keras.Input((None,), dtype="int32", name="tok"),
             "seg": keras.Input((None,), dtype="int32", name="seg")}
    task = keras.Model(outer, keras.layers.Dense(1)(backbone(outer)))
    assert dict(policy_for(task, normalize_for_model(task, None)).ids) == {"tok": 1000,
                                                                           "seg": 2}

    class TwoTables(keras.Model):  # subclassed: no graph, the smallest input_dim is safe
        def __init__(self):
            super().__init__()
            self.big = keras.layers.Embedding(1000, 4)
            self.small = keras.layers.Embedding(300, 4)

        def call(self, ids):
            return self.big(ids) + self.small(ids)

    model = TwoTables()
    model(np.zeros((1, 5), "int32"))
    sig = normalize_for_model(model, [keras.InputSpec(shape=(None, 5), dtype="int32")])
    policy = policy_for(model, sig)
    (ids,) = sample_inputs(flatten(sig), 50, 0, policy=policy)
    assert 1 < ids.max() < 300
    # what the manifest records reads back (and garbage is the default policy)
    again = recorded_policy({"samples": policy.to_json()})
    assert again.ids == policy.ids and again.names == policy.names
    assert recorded_policy({"kexport.samples": json.dumps(policy.to_json())}).ids == policy.ids
    assert not recorded_policy({"samples": {"ids": {"x": "big"}}})
    assert not recorded_policy({})


@pytest.mark.fast
def test_float_inputs_take_the_range_a_rescaling_layer_declares(tmp_path):
    """Pixels in [0, 255] for an image model that rescales them (as keras.applications'
    EfficientNet does), directly or inside a nested model; recorded for `kexport verify`;
    an input also read without rescaling keeps the standard normal."""
    import keras

    image = keras.Input((8, 8, 3), name="image")
    centred = keras.Input((4,), name="centred")
    raw = keras.Input((4,), name="raw")
    stem = keras.Sequential([keras.layers.Rescaling(1 / 127.5, offset=-1.0),
                             keras.layers.Conv2D(2, 3)], name="stem")
    features = keras.layers.GlobalAveragePooling2D()(stem(image))
    mixed = keras.layers.Rescaling(1 / 255.0)(centred)
    both = keras.layers.Concatenate()([keras.layers.Rescaling(0.5)(raw), raw])
    model = keras.Model([image, centred, raw],
                        keras.layers.Concatenate()([features, mixed, both]))
    signature = normalize_for_model(model, None)
    policy = policy_for(model, signature)
    assert policy.ranges == {"image": pytest.approx((0.0, 255.0)),
                             "centred": pytest.approx((0.0, 255.0))}
    x, c, r = sample_inputs(flatten(signature), 64, 0, policy=policy)
    assert x.min() >= 0.0 and x.max() <= 255.0 and x.max() > 200.0
    assert c.min() >= 0.0 and c.max() <= 255.0
    assert r.min() < 0.0  # the raw input: standard normal
    assert recorded_policy({"samples": json.dumps(policy.to_json())}).ranges == policy.ranges
    # malformed recorded ranges are ignored, not trusted
    assert recorded_policy({"samples": {"ranges": {"image": [5, 1]}}}).ranges == {}


@pytest.mark.fast
def test_bad_sample_data_is_a_typed_error_naming_expected_and_received(tmp_path):
    import keras

    class Pair(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = keras.layers.Embedding(50, 3)

        def call(self, inputs):
            return keras.ops.sum(self.emb(inputs["ids"]), axis=1) + inputs["x"]

    model = Pair()
    good = {"ids": np.zeros((2, 4), "int32"), "x": np.zeros((2, 3), "float32")}
    model(good)
    signature = [{"ids": keras.InputSpec(shape=(None, 4), dtype="int32"),
                  "x": keras.InputSpec(shape=(None, 3), dtype="float32")}]
    specs = flatten(normalize_for_model(model, signature))
    names = ["ids", "x"]
    # int64 ids for an int32 input are fine (same kind), cast
    assert flat_sample_data({"ids": np.ones((2, 4)).astype("int64"), "x": good["x"]}, specs,
                            names)["ids"].dtype == np.int32
    cases = [
        ({"ids": good["ids"], "y": good["x"]}, r"input names \['ids', 'x'\].*Received keys "
                                                r"\['ids', 'y'\].*missing \['x'\].*unknown \['y'\]"),
        ({"ids": good["ids"].astype("float32"), "x": good["x"]},
         r"input 'ids' of dtype int32. Received dtype float32"),
        ({"ids": good["ids"][0], "x": good["x"]}, r"input 'ids' of rank 2.*Received rank 1"),
        ({"ids": good["ids"], "x": np.zeros((2, 5), "float32")},
         r"input 'x' with size 3 on axis 1.*Received shape \(2, 5\)"),
        ([good["ids"]], r"Expected sample data for 2 input\(s\).*Received 1 array"),
        ({"ids": good["ids"], "x": np.zeros((3, 3), "float32")}, r"same number of rows"),
    ]
    for data, message in cases:
        with pytest.raises(SampleDataError, match=message) as info:
            flat_sample_data(data, specs, names)
        assert isinstance(info.value, ValueError)
        out = tmp_path / "model"
        with pytest.raises(SampleDataError, match=message):
            kexport.export_model(model, out, input_signature=signature, sample_data=data,
                                 verbose=False)
        assert not os.path.exists(out) and os.listdir(tmp_path) == []


def _llama():
    import keras_hub

    return keras_hub.models.LlamaBackbone(
        vocabulary_size=64, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32)


def _padded_inputs(batch, length, seed):
    rng = np.random.default_rng(seed)
    kept = np.array([length] + [int(k) for k in rng.integers(1, length, batch - 1)])
    mask = (np.arange(length)[None, :] < kept[:, None]).astype("int32")
    ids = rng.integers(0, 64, (batch, length)).astype("int32")
    return {"token_ids": ids, "padding_mask": mask}


# The cells the zoo found refused ("does not compute what the live model computes ...
# max abs error 3.22"): SavedModel from PyTorch, ONNX from JAX (both re-hosted).
_LLAMA_FORMAT = {"torch": "tf_saved_model", "jax": "onnx", "tensorflow": "onnx"}


def test_llama_backbone_exports_and_matches_on_real_padding(tmp_path, fresh_process):
    import keras

    model = _llama()
    format = _LLAMA_FORMAT[keras.backend.backend()]
    out = tmp_path / ("llama.onnx" if format == "onnx" else "llama")
    kexport.export_model(model, out, format=format, verify=True, verbose=False)
    feeds = [_padded_inputs(3, 7, 0), _padded_inputs(2, 5, 1)]
    got = fresh_process("fresh_runtime:load_and_run", str(out),
                        [("serve", f) for f in feeds])
    for f, outputs in zip(feeds, got["outputs"], strict=True):
        want = keras.ops.convert_to_numpy(model(f))
        (value,) = outputs.values()
        np.testing.assert_allclose(value, want, atol=1e-4, rtol=1e-4)
    # kexport verify without the model's code draws valid inputs: the recorded policy
    metadata = kexport.load(out).metadata
    policy = recorded_policy(metadata)
    assert dict(policy.ids) == {"token_ids": 64} and policy.masks == ("padding_mask",)
    assert kexport.verify(model, out).ok


def test_user_sample_data_drives_export_and_verify(tmp_path):
    import keras

    class Gate(keras.Model):  # only agrees with Gate2 below on values under 10
        def call(self, x):
            return x * 2.0

    class Gate2(keras.Model):
        def call(self, x):
            return keras.ops.where(x > 10.0, x * 3.0, x * 2.0)

    model = Gate()
    model(np.zeros((1, 4), "float32"))
    data = np.full((5, 4), 20.0, "float32")
    out = tmp_path / "gate.onnx"
    kexport.export_model(model, out, format="onnx", verify=True, verbose=False,
                         sample_data=data)
    report = kexport.load(out).verification
    assert report["ok"]
    # the export's own check ran on batch slices of the data (1 and 3 rows of it)
    shapes = sorted({tuple(s) for c in report["checks"] for s in c["input_shapes"].values()})
    assert shapes == [(1, 4), (3, 4)]
    other = Gate2()
    other(np.zeros((1, 4), "float32"))
    assert kexport.verify(other, out, store=False).ok  # generated inputs never reach 10
    failed = kexport.verify(other, out, data=data, store=False)
    assert not failed.ok and failed.failures
    with pytest.raises(SampleDataError, match=r"rank 2.*Received rank 1"):
        kexport.verify(other, out, data=np.zeros(4, "float32"), store=False)


@pytest.mark.backends("tensorflow")
def test_cli_data_drives_export_and_verify_and_bad_data_writes_nothing(tmp_path):
    import keras

    from test_cli import kexport as cli

    inputs = keras.Input((None, 5), name="seq")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "data.npz", seq=np.ones((4, 9, 5), "float32"))
    out = tmp_path / "sm"
    proc = cli("export", tmp_path / "m.keras", "-f", "tf_saved_model", "-o", out, "--data",
               tmp_path / "data.npz", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)["verification"]
    assert report["ok"]
    assert [c["input_shapes"]["seq"] for c in report["checks"]] == [[1, 9, 5], [3, 9, 5]]
    proc = cli("verify", tmp_path / "m.keras", out, "--data", tmp_path / "data.npz", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"]
    np.savez(tmp_path / "bad.npz", sequence=np.ones((4, 9, 5), "float32"))
    bad_out = tmp_path / "bad_sm"
    proc = cli("export", tmp_path / "m.keras", "-o", bad_out, "--data", tmp_path / "bad.npz",
               "--json")
    error = json.loads(proc.stdout)["error"]
    assert proc.returncode == 2 and error["type"] == "SampleDataError"
    assert "['seq']" in error["message"] and "Received keys ['sequence']" in error["message"]
    assert not bad_out.exists()


def test_archive_write_out_sample_data(tmp_path):
    import keras

    class Scale(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Scale()
    model(np.zeros((1, 3), "float32"))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [keras.InputSpec(shape=(None, 3), dtype="float32")])
    out = tmp_path / "archive"
    with pytest.raises(SampleDataError, match=r"input 'x' with size 3 on axis 1|"
                                              r"size 3 on axis 1.*Received shape \(4, 5\)"):
        archive.write_out(out, sample_data=np.zeros((4, 5), "float32"), verbose=False)
    assert not out.exists()
    archive.write_out(out, sample_data=np.ones((4, 3), "float32"), verbose=False)
    assert kexport.verify(model, out, data=np.ones((4, 3), "float32"), store=False).ok

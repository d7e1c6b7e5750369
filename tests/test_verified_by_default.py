"""Every export is checked before it is placed (docs/verification.md, "What runs by default").

The staged artifact runs with the format's own runtime in the exporting process and is
compared with the live model; a failed check writes nothing and keeps what was at the
path; the check leaves the model as it was; ``verify=False`` opts out.
"""

from __future__ import annotations

import hashlib
import os

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.errors import SampleDataError, VerificationError

# the format each backend writes natively, in process (re-hosted routes check themselves)
FORMAT, SUFFIX = {"tensorflow": ("tf_saved_model", ""), "jax": ("tf_saved_model", ""),
                  "torch": ("torch", ".pt2")}[BACKEND]


def _mlp() -> keras.Model:
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="scores")(hidden))


def _digest(path: str) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)) if os.path.isdir(path) else [("", [], [path])]:
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def _plant_wrong_runtime(monkeypatch) -> None:
    """The artifact's runtime, in this process, returns its outputs plus one: what a
    silently wrong converter would give."""
    from kexport.runtime import _worker

    real = _worker._handle

    def off_by_one(request, state):
        reply = real(request, state)
        if request["cmd"] == "run":
            with np.load(request["outputs"]) as data:
                wrong = {k: data[k] + 1 for k in data.files}
            np.savez(request["outputs"], **wrong)
        return reply

    monkeypatch.setattr(_worker, "_handle", off_by_one)


@pytest.fixture
def wrong_runtime(monkeypatch):
    _plant_wrong_runtime(monkeypatch)


def test_a_wrong_artifact_is_not_placed_and_the_previous_one_is_kept(tmp_path, monkeypatch):
    model = _mlp()
    path = str(tmp_path / f"model{SUFFIX}")
    kexport.export_model(model, path, format=FORMAT, verbose=False)  # checked, placed
    before = _digest(path)
    _plant_wrong_runtime(monkeypatch)
    model.layers[-1].bias.assign(np.full((3,), 5.0, "float32"))  # a new model to write
    with pytest.raises(VerificationError, match=r"checked before it was placed and does not "
                                                r"compute what the model computes.*Nothing was "
                                                r"written: what was at the path is kept") as e:
        kexport.export_model(model, path, format=FORMAT, verbose=False)
    assert not e.value.report.ok and e.value.report.failed_outputs
    assert _digest(path) == before  # the previous artifact, untouched
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no temporaries left


def test_nothing_is_written_where_there_was_nothing(tmp_path, wrong_runtime):
    path = str(tmp_path / "new" / f"model{SUFFIX}")
    with pytest.raises(VerificationError, match="Nothing was written"):
        kexport.export_model(_mlp(), path, format=FORMAT, verbose=False)
    assert not os.path.exists(tmp_path / "new")  # the folders it made are gone too


def test_verify_false_writes_unchecked(tmp_path, wrong_runtime):
    path = str(tmp_path / f"model{SUFFIX}")
    kexport.export_model(_mlp(), path, format=FORMAT, verbose=False, verify=False)
    assert os.path.exists(path)


def test_the_check_runs_every_format_this_backend_writes_in_process(tmp_path, wrong_runtime):
    """Not one writer but all of them: each calls the check on its staged artifact."""
    native = {r.format for r in kexport.routes(BACKEND) if r.kind == "native" and r.available}
    suffix = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
              "torch": ".pt2"}
    for fmt in sorted(native):
        if fmt == "onnx" and BACKEND != "tensorflow":
            continue  # the fast converters' ONNX Runtime acceptance is that check (test_check.py)
        path = str(tmp_path / f"m_{fmt}{suffix[fmt]}")
        with pytest.raises(VerificationError, match="checked before it was placed"):
            kexport.export_model(_mlp(), path, format=fmt, verbose=False)
        assert not os.path.exists(path), fmt


class Noisy(keras.layers.Layer):
    """Random at inference (a seed generator's state advances at every call)."""

    def __init__(self):
        super().__init__()
        self.seed = keras.random.SeedGenerator(3)

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), seed=self.seed)


@pytest.mark.backends("tensorflow", "jax")  # torch.export cannot trace keras.random here
def test_the_check_leaves_the_model_as_it_was(tmp_path):
    noisy = Noisy()
    noisy(np.zeros((2, 4), "float32"))
    state = [keras.ops.convert_to_numpy(v.value).copy() for v in noisy.non_trainable_variables]
    assert state  # the seed state
    kexport.export_model(noisy, str(tmp_path / f"noisy{SUFFIX}"), format=FORMAT, verbose=False,
                         input_signature=[keras.InputSpec(shape=(None, 4))])
    after = [keras.ops.convert_to_numpy(v.value) for v in noisy.non_trainable_variables]
    for a, b in zip(state, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_archive_training_endpoint_does_not_move_batch_norm_statistics(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs)))
    archive = kexport.ExportArchive()
    archive.track(model)
    spec = [keras.InputSpec(shape=(None, 4))]
    archive.add_endpoint("serve", lambda x: model(x, training=False), spec)
    archive.add_endpoint("train_step", lambda x: model(x, training=True), spec)
    moving = [keras.ops.convert_to_numpy(v.value).copy() for v in model.non_trainable_variables]
    if FORMAT == "torch":
        pytest.skip("an ExportArchive of the PyTorch backend is written to .pt2 in its own test")
    archive.write_out(str(tmp_path / "archive"), verbose=False, format=FORMAT)
    for a, v in zip(moving, model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v.value))


@pytest.mark.backends("tensorflow")
def test_an_endpoint_that_refuses_generated_inputs_says_what_to_pass(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 8), tf.float32, name="x")])
    def counts(x):  # bincount refuses negative values, which generated floats have
        return tf.math.bincount(tf.cast(x * 4, tf.int32), minlength=5, axis=-1)

    archive = kexport.ExportArchive()
    archive.add_endpoint("serve", counts)
    path = str(tmp_path / "counts")
    with pytest.raises(SampleDataError, match=r"Endpoint 'serve': the live model raised on "
                                              r"the check's inputs .*pass sample_data="):
        archive.write_out(path, verbose=False)
    assert not os.path.exists(path)
    archive.write_out(path, verbose=False,  # on inputs it takes, it is checked and placed
                      sample_data=np.random.default_rng(0).random((3, 8), dtype="float32"))
    assert os.path.exists(path)

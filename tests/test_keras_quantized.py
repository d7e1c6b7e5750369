"""Models quantized by Keras itself (``model.quantize(mode)``; issue #16 item 2).

Each backend exports its cells of the table in docs/quantization.md ("Models
quantized by Keras"): ONNX and the backend's own format, in each Keras mode a
route holds. Every artifact is reloaded in a fresh process with its own
runtime and must compute what the *quantized* Keras model computes, within the
float32 row of the tolerance table (the artifact adds no error of its own).
Cells no route holds raise ``QuantizedModelError`` before anything is written.
"""

from __future__ import annotations

import importlib.util
import os

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.check.tolerance import FLOAT32
from kexport.errors import QuantizedModelError, UnsupportedRouteError
from kexport.routing.table import usable

SUFFIX = {"onnx": ".onnx", "torch": ".pt2"}
# (mode, format) exported on each backend, within the suite's time budget: ONNX and
# OpenVINO (the fixed int8 matmul: OpenVINO's TensorFlow frontend dropped Tout) on
# TensorFlow, each backend's own format elsewhere. The cells that take a re-host (PyTorch
# int8 ONNX, JAX int8 ONNX's verified jax2onnx) cost minutes: their route choice is
# tested below without exporting, and scripts/measure_keras_quantized.py exports them.
CELLS = {
    "tensorflow": [("int8", "onnx"), ("int8", "openvino"), ("float8", "tf_saved_model")],
    "jax": [("int4", "tf_saved_model")],
    "torch": [("int4", "torch"), ("float8", "torch")],
}[BACKEND]
# The quantized model is the reference, so the float32 row applies, except where the
# runtime reorders float arithmetic (OpenVINO computes x / s as x * (1 / s)): an ulp
# there can flip one rounding of the per-call int8 input quantization of the next
# Dense: one int8 step of that row (measured 2.3e-3 here; the float model is 1.1e-2 away).
TOLERANCE = {"openvino": (5e-3, 5e-3)}
IDS = [keras.InputSpec(shape=(None, 6), dtype="int32")]  # token ids


def _quantized(mode):
    """A tiny subclassed token model (Embedding, EinsumDense, two Dense), quantized by Keras."""

    class TokenBlock(keras.Model):
        def __init__(self):
            super().__init__()
            # unit-scale activations: quantization changes the outputs far beyond tolerance
            self.emb = keras.layers.Embedding(
                50, 16, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))
            self.proj = keras.layers.EinsumDense("btd,dh->bth", output_shape=(None, 32),
                                                 bias_axes="h")
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.head = keras.layers.Dense(5)

        def call(self, ids):
            x = self.hidden(self.proj(self.emb(ids)))
            return self.head(keras.ops.mean(x, axis=1))

    keras.utils.set_random_seed(7)
    model = TokenBlock()
    model(np.zeros((2, 6), "int32"))
    if mode is not None:
        model.quantize(mode)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fresh_process):
    """Every cell of this backend exported once, run once in the shared fresh process."""
    ids = np.random.default_rng(0).integers(0, 50, (4, 6)).astype("int32")
    tmp = tmp_path_factory.mktemp("keras_quantized")
    jobs, expected = [], []
    for mode, fmt in CELLS:
        model = _quantized(mode)
        path = str(tmp / f"{mode}_{fmt}{SUFFIX.get(fmt, '')}")
        kexport.export_model(model, path, format=fmt, verbose=False, input_signature=IDS)
        jobs.append((fmt, path, ids))
        expected.append(np.asarray(keras.ops.convert_to_numpy(model(ids))))
    outputs = fresh_process("fresh_keras_quant:run", jobs)
    return dict(zip(CELLS, zip(expected, outputs, strict=True), strict=True))


@pytest.mark.parametrize("cell", CELLS, ids=[f"{m}-{f}" for m, f in CELLS])
def test_quantized_model_reloaded_computes_the_quantized_model(exported, cell):
    expected, got = exported[cell]
    atol, rtol = TOLERANCE.get(cell[1], FLOAT32)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol)


def test_quantized_reference_is_not_the_float_model(exported):
    """The check's reference is the quantized model: the float model differs from it by
    far more than the tolerance, so the comparison above tells the two apart."""
    ids = np.random.default_rng(0).integers(0, 50, (4, 6)).astype("int32")
    for (mode, fmt), (expected, _) in exported.items():
        # the same weights before quantization (same seed, not quantized)
        float_out = keras.ops.convert_to_numpy(_quantized(None)(ids))
        atol = TOLERANCE.get(fmt, FLOAT32)[0]
        assert np.abs(float_out - expected).max() > 2 * atol, (mode, fmt)


@pytest.mark.parametrize("mode", ["float8", "int8"])
def test_litert_refuses_keras_quantized_layers_before_writing(tmp_path, mode):
    model = _quantized(mode)
    path = tmp_path / "model.tflite"
    with pytest.raises(QuantizedModelError) as info:
        kexport.export_model(model, path, format="litert", verbose=False)
    message = str(info.value)
    assert isinstance(info.value, UnsupportedRouteError)
    assert "format='litert'" in message and f"on the {BACKEND} backend" in message
    assert f"layers quantized by Keras with mode {mode!r} (" in message
    assert "EinsumDense 'einsum_dense" in message and "Dense 'dense" in message
    # Keras quantizes Embedding to int8, not to float8
    assert ("Embedding 'embedding" in message) == (mode == "int8")
    holding = "['tf_saved_model', 'torch']" if mode == "float8" else \
        "['tf_saved_model', 'torch', 'openvino', 'onnx']"
    assert f"Formats that hold this model on the {BACKEND} backend: {holding}" in message
    assert not os.path.exists(path)


@pytest.mark.backends("tensorflow")
def test_float8_onnx_refused_and_table_is_generated(tmp_path):
    """The docs table is what the route table says (scripts/gen_keras_quantized_doc.py),
    and a refused cell of it raises."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "gen_keras_quantized_doc", os.path.join(root, "scripts", "gen_keras_quantized_doc.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text()
    assert gen.rendered(text) == text, "run python scripts/gen_keras_quantized_doc.py"
    assert "| float8 | onnx | QuantizedModelError | QuantizedModelError | QuantizedModelError |" \
        in text
    with pytest.raises(QuantizedModelError, match="tf2onnx has no float8_e4m3fn type"):
        kexport.export_model(_quantized("float8"), tmp_path / "m.onnx", format="onnx",
                             verbose=False)
    assert not os.listdir(tmp_path)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("backend, fmt, mode, kind", [
    ("torch", "onnx", "int8", "rehost"),      # torch.onnx's graph refused
    ("torch", "openvino", "int4", "rehost"),  # OpenVINO's PyTorch frontend: aten._int_mm
    ("jax", "litert", "int4", "rehost"),      # the jax2tf graph's integer tfl.sub
    ("jax", "tf_saved_model", "float8", "rehost"),
    ("jax", "tf_saved_model", "int8", "native"),
    ("torch", "onnx", None, "native"),        # a float model keeps its first route
])
def test_a_route_that_refuses_a_keras_mode_hands_over_to_the_next(backend, fmt, mode, kind):
    model = _quantized(mode)
    chosen = usable(backend, fmt, model)
    assert chosen[0].kind == kind
    assert all(mode not in r.refuses for r in chosen)

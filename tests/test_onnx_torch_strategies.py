"""PyTorch -> ONNX strategies: the fast traced graph only where it generalises.

The traced ``torch.onnx`` exporter is tried first on the PyTorch backend and
kept only when ONNX Runtime reproduces the live model at other sizes of every
dynamic axis; otherwise ``torch.export`` runs. Artifacts are reloaded in a
fresh process and compared with the live model at batch 1, 3 and 8.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from kexport.context import ExportContext

pytestmark = pytest.mark.backends("torch")


def _check(model, path, fresh_process, name="x"):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, *model.inputs[0].shape[1:])).astype("float32") for b in (1, 3, 8)]
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [{name: x} for x in xs])})["m"]
    for x, out in zip(xs, got["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x, training=False))
        assert out[0].shape == ref.shape
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=2e-5)
    return got["metadata"]["kexport.route"]


def test_plain_model_takes_the_traced_strategy(tmp_path, fresh_process):
    model = onnx_models.mlp()
    path = tmp_path / "mlp.onnx"
    kexport.export_onnx(model, path, verbose=False)
    assert _check(model, path, fresh_process, "features") == "torch: torch.onnx (traced, verified)"


def test_model_the_tracer_cannot_export_falls_back_to_torch_export(tmp_path, fresh_process):
    # the traced exporter fails on attention's dynamic reshapes; torch.export
    # writes the graph instead, still dynamic in batch and length
    model = onnx_models.transformer()
    path = tmp_path / "transformer.onnx"
    kexport.export_onnx(model, path, verbose=False)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, t, 16)).astype("float32") for b, t in ((1, 5), (3, 5), (8, 9))]
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [{"tokens": x} for x in xs])})
    for x, out in zip(xs, got["m"]["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=2e-5)
    assert got["m"]["metadata"]["kexport.route"] == "torch: torch.export -> torch.onnx"


def test_traced_strategy_refuses_python_values_taken_in_user_code():
    from kexport.formats.onnx._accept import NotTraceable
    from kexport.formats.onnx._graph import Source
    from kexport.formats.onnx._torch import TracedTorch
    from kexport.signature import normalize_for_model

    model = onnx_models.batch_scaled()
    with pytest.raises(NotTraceable, match="tracer warning: Converting a tensor to a Python"):
        TracedTorch().capture(Source.of(model, normalize_for_model(model, None)), 18,
                          ExportContext())


def test_torchlib_registry_is_built_once_and_copied():
    from torch.onnx._internal.exporter import _registration

    from kexport.formats.onnx.compat import cached_torchlib_registry

    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    with cached_torchlib_registry():
        a = _registration.ONNXRegistry.from_torchlib()
        a.functions.clear()  # a caller mutating its copy ...
        b = _registration.ONNXRegistry.from_torchlib()
        assert b.functions  # ... does not reach the next export
        assert b is not a and b.opset_version == a.opset_version
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is original


def test_failed_traced_strategy_prints_no_torch_ir_and_leaves_the_log_off(tmp_path, capfd):
    # torch 2.13's TorchScript exporter turns its C++ log on for good on every
    # export; the traced strategy failing on attention would then dump the graph
    import torch

    assert not torch._C._jit_is_onnx_log_enabled()
    import sys

    model = onnx_models.transformer()
    kexport.export_onnx(model, tmp_path / "t.onnx")  # verbose: says why, in one line
    out, err = capfd.readouterr()
    assert "Torch IR graph at exception" not in out + err
    assert not torch._C._jit_is_onnx_log_enabled()
    assert "kexport: not using the traced torch.onnx graph: SymbolicValueError" in out
    assert sys.prefix not in out and "site-packages" not in out


def test_quiet_torchscript_log_restores_an_enabled_log():
    import torch
    from torch.onnx._internal.torchscript_exporter import utils

    from kexport.formats.onnx.compat import quiet_torchscript_log

    shipped = utils.setup_onnx_logging
    torch._C._jit_set_onnx_log_enabled(True)  # a user who asked torch for its log
    try:
        with quiet_torchscript_log():
            with utils.setup_onnx_logging(False):
                assert not torch._C._jit_is_onnx_log_enabled()
            with utils.setup_onnx_logging(True):
                assert torch._C._jit_is_onnx_log_enabled()
            assert torch._C._jit_is_onnx_log_enabled()
        assert utils.setup_onnx_logging is shipped
    finally:
        torch._C._jit_set_onnx_log_enabled(False)


def test_output_named_like_an_inner_value(tmp_path, fresh_process):
    # torch.onnx names a graph output as asked even when a node's value already has that
    # name ("layer_norm" is also the value of the first aten.layer_norm): the graph was
    # unreadable (SerdeError in the finishing step, GPT-2); kexport names outputs itself
    tokens = keras.Input((None, 8), name="x")
    h = keras.layers.LayerNormalization()(tokens)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    out = keras.layers.LayerNormalization(name="layer_norm")(h)
    model = keras.Model(tokens, out)
    path = tmp_path / "named.onnx"
    kexport.export_onnx(model, path, verbose=False)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, t, 8)).astype("float32") for b, t in ((1, 5), (3, 7))]
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [{"x": x} for x in xs])})["m"]
    assert [n for n, _ in got["outputs"]] == ["layer_norm"]
    for x, out in zip(xs, got["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=2e-5)


def test_converter_failure_moves_on_to_the_rehost_route(tmp_path, fresh_process, capsys):
    # torch.export (and the traced exporter) fail on this layer's data-dependent Python
    # branch; a converter's failure is a refusal, so the re-host onto TensorFlow (where
    # the branch is not taken) delivers instead of the export ending on the error
    class Guarded(keras.layers.Layer):
        def call(self, x):
            if keras.backend.backend() == "torch" and bool((x.abs().sum() > 1e9).item()):
                return x * 2.0
            return keras.ops.tanh(x)

    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)
            self.guarded = Guarded()

        def call(self, x):
            return self.guarded(self.dense(x))

    model = Model()
    xs = [np.random.default_rng(i).normal(size=(b, 3)).astype("float32")
          for i, b in enumerate((1, 5))]
    model(xs[0])
    path = tmp_path / "guarded.onnx"
    kexport.export_onnx(model, path, verbose=None)
    assert "kexport: trying the next route: re-host" in capsys.readouterr().out
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [{"input": x} for x in xs])})
    assert got["m"]["metadata"]["kexport.route"].startswith("re-host on tensorflow")
    for x, (y,) in zip(xs, got["m"]["results"], strict=True):
        np.testing.assert_allclose(y, keras.ops.convert_to_numpy(model(x)), atol=1e-5)

"""Same answers on every CPU: runtimes are pinned to the precision asked for.

OpenVINO runs f32 IR in bf16 by default on CPUs with bf16 units. These tests
run on any CPU: ``bf16_cpu/sitecustomize.py`` simulates such a CPU (in this
process and, through ``PYTHONPATH``, in kexport's verification worker), so
removing kexport's f32 pin fails them on a CPU without bf16 units too. Where
the CPU really has bf16 units, one more test checks the real plugin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import kexport
from kexport import _numerics
from kexport.errors import SignatureError

HERE = Path(__file__).parent
BF16_CPU = HERE / "bf16_cpu"
NATIVE_OPENVINO = pytest.mark.backends("tensorflow", "torch")


def _digits_mlp():
    """A 64 -> 64 -> 10 classifier like the demo's, with weights large enough
    that bf16 rounding shows in its logits."""
    inputs = keras.Input(shape=(64,), name="pixels")
    x = keras.layers.Dense(64, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, 0.5, kernel.shape).astype("float32"),
                           rng.normal(0, 0.5, bias.shape).astype("float32")])
    return model


def _inputs(batch=7):
    return np.random.default_rng(1).uniform(0, 16, (batch, 64)).astype("float32")


def _live(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def _simulator():
    spec = importlib.util.spec_from_file_location("bf16_cpu_sim", BF16_CPU / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This process and kexport's child processes behave as on a CPU with bf16 units."""
    import openvino as ov

    undo = _simulator().patch_core(ov)
    path = os.pathsep.join(p for p in (str(BF16_CPU), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    yield ov
    undo()


@pytest.fixture
def openvino_mlp(tmp_path):
    model = _digits_mlp()
    path = tmp_path / "digits.xml"
    kexport.export_openvino(model, path, verbose=False)
    return model, path


@NATIVE_OPENVINO
def test_openvino_default_is_f32_on_a_cpu_whose_default_is_bf16(openvino_mlp, bf16_cpu):
    model, path = openvino_mlp
    x = _inputs()
    want = _live(model, x)
    # the simulation bites: compiled without a hint, the IR answers in bf16
    raw = bf16_cpu.Core().compile_model(str(path), "CPU")
    unpinned = raw(x)[raw.output(0)]
    assert np.max(np.abs(unpinned - want)) > 1e-3

    artifact = kexport.load(path)
    assert artifact.precision == "float32"
    np.testing.assert_allclose(artifact(x)["logits"], want, atol=1e-4, rtol=1e-4)

    report = kexport.verify(model, path, store=False)
    assert report.ok, report.table()
    assert (report.runtime_precision, report.precision) == ("float32", "float32")
    assert (report.atol, report.rtol) == verify_tolerance("float32")
    assert report.max_abs < 1e-4


def verify_tolerance(precision):
    from kexport.check.tolerance import TOLERANCES

    return TOLERANCES[precision]


@NATIVE_OPENVINO
def test_openvino_bf16_on_request_with_a_bf16_tolerance(openvino_mlp, bf16_cpu):
    model, path = openvino_mlp
    x = _inputs()
    want = _live(model, x)
    artifact = kexport.load(path, precision="bf16")
    assert artifact.precision == "bfloat16"
    err = np.max(np.abs(artifact(x)["logits"] - want))
    assert 1e-4 < err < verify_tolerance("bfloat16")[0] + 5e-2 * np.max(np.abs(want))

    report = kexport.verify(model, path, precision="bf16", store=False)
    assert report.ok, report.table()
    assert (report.runtime_precision, report.precision) == ("bfloat16", "bfloat16")
    assert (report.atol, report.rtol) == verify_tolerance("bfloat16")
    assert report.max_abs > 1e-4
    assert "runtime bf16" in report.table()

    # an f32 tolerance on a bf16 runtime fails, as it did before the pin
    strict = kexport.verify(model, path, precision="bf16", atol=1e-4, rtol=1e-3, store=False)
    assert not strict.ok and strict.runtime_precision == "bfloat16"


@NATIVE_OPENVINO
def test_cli_precision_is_stored_and_inspect_shows_it(openvino_mlp, bf16_cpu, tmp_path):
    model, path = openvino_mlp
    model_file = tmp_path / "digits.keras"
    model.save(model_file)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "kexport", *args], capture_output=True,
                              text=True, env=dict(os.environ), timeout=600)

    out = cli("verify", str(model_file), str(path), "--precision", "bf16", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["runtime_precision"] == "bfloat16"
    assert report["atol"] == verify_tolerance("bfloat16")[0]

    stored = kexport.load(path).verification
    assert stored["runtime_precision"] == "bfloat16" and stored["precision"] == "bfloat16"
    out = cli("inspect", str(path))
    assert out.returncode == 0, out.stderr
    assert "runtime bf16" in out.stdout and "(opened in float32)" in out.stdout
    info = json.loads(cli("inspect", str(path), "--json").stdout)
    assert info["precision"] == "float32"
    assert info["verification"]["runtime_precision"] == "bfloat16"

    # the default verification on the same simulated bf16 CPU is f32 and passes at 1e-4
    out = cli("verify", str(model_file), str(path), "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["runtime_precision"] == "float32"
    assert report["atol"] == 1e-4


def _cpu_has_bf16():
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


@NATIVE_OPENVINO
@pytest.mark.skipif(not _cpu_has_bf16(), reason="the CPU has no bf16 units")
def test_real_bf16_cpu_default_pinned_to_f32(openvino_mlp):
    import openvino as ov

    model, path = openvino_mlp
    x = _inputs()
    want = _live(model, x)
    core = ov.Core()
    assert str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")).find("bfloat16") >= 0
    raw = core.compile_model(str(path), "CPU")
    assert np.max(np.abs(raw(x)[raw.output(0)] - want)) > 1e-4
    np.testing.assert_allclose(kexport.load(path)(x)["logits"], want, atol=1e-4, rtol=1e-4)
    bf16 = kexport.load(path, precision="bf16")
    assert bf16.precision == "bfloat16"
    assert np.max(np.abs(bf16(x)["logits"] - want)) > 1e-4


@pytest.mark.backends("torch")
def test_pt2_runs_f32_whatever_the_process_matmul_precision(tmp_path):
    import torch

    model = _digits_mlp()
    path = tmp_path / "digits.pt2"
    kexport.export_torch(model, path, verbose=False)
    x = _inputs()
    want = _live(model, x)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # lets oneDNN use bf16 for f32 matmuls
    try:
        artifact = kexport.load(path)
        assert artifact.precision == "float32"
        np.testing.assert_allclose(artifact(x)["logits"], want, atol=1e-4, rtol=1e-4)
        assert torch.get_float32_matmul_precision() == "medium"  # restored after the call
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(SignatureError, match=r"torch runtime can compute in: \['f32'\]"):
        kexport.load(path, precision="bf16")


def test_precision_names_and_unsupported_runtimes_are_typed_errors():
    assert [_numerics.normalize(p) for p in (None, "f32", "FP32", "bf16", "bfloat16", "f16")] \
        == ["float32", "float32", "float32", "bfloat16", "bfloat16", "float16"]
    with pytest.raises(SignatureError, match=r"Expected `precision` to be one of .*'bf16'.* "
                                             r"Received: 'int3'"):
        _numerics.normalize("int3")
    from kexport.runtime import check_precision

    assert check_precision("openvino", "bf16") == "bfloat16"
    for fmt in ("onnx", "tf_saved_model", "litert", "torch"):
        with pytest.raises(SignatureError) as info:
            check_precision(fmt, "bf16")
        message = str(info.value)
        assert f"the {fmt} runtime can compute in: ['f32']" in message
        assert "Received: precision='bf16'" in message
        assert "Runtimes that compute in bf16: ['openvino']" in message


@pytest.mark.backends("tensorflow")
def test_load_and_verify_refuse_a_precision_the_runtime_lacks(tmp_path):
    model = _digits_mlp()
    path = tmp_path / "digits.onnx"
    kexport.export_onnx(model, path, verbose=False)
    with pytest.raises(SignatureError, match="onnx runtime can compute in"):
        kexport.load(path, precision="bf16")
    with pytest.raises(SignatureError, match="onnx runtime can compute in"):
        kexport.verify(model, path, precision="f16")
    report = kexport.verify(model, path, precision="f32", store=False)
    assert report.ok and report.runtime_precision == "float32"


def test_onnxruntime_and_child_processes_state_their_precision():
    options = _numerics.onnxruntime_options(threads=1)
    assert options.get_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16") == "0"
    assert options.intra_op_num_threads == 1
    env = _numerics.child_env({"ONEDNN_DEFAULT_FPMATH_MODE": "BF16", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert env["ONEDNN_DEFAULT_FPMATH_MODE"] == "STRICT"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's own log setting is kept

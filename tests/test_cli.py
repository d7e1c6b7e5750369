"""The ``kexport`` console script, driven in subprocesses.

Most tests run on the TensorFlow run only; the quiet-output tests run on every
backend's run, exporting from that backend (``--backend``). Every call runs
without ``TF_CPP_MIN_LOG_LEVEL`` (and ``PYTHONWARNINGS``) in its environment
and checks that no framework start-up line or warning reaches stderr unless
``-v`` was given, and that a ``--json`` run's stdout is one JSON document.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND
from models import mlp, sequence_model
from test_runtime_onnx import make_file
from test_verify import tamper_saved_model

tensorflow_only = pytest.mark.backends("tensorflow")

KEXPORT = str(Path(sys.executable).with_name("kexport"))

# Lines the frameworks print on their own (TensorFlow/absl/oneDNN/XLA C++ logs,
# cuda/TensorRT probing, LiteRT's delegate note, Python warnings).
NOISE = re.compile(r"oneDNN|absl::|cuda|TensorRT|TensorFlow binary is optimized|"
                   r"WARNING: All log messages|[EIWF]0000|XNNPACK|"
                   r"(Deprecation|Future|User|Runtime)Warning", re.IGNORECASE)


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


def kexport(*args, timeout=300, backend="tensorflow"):
    """Run the CLI as a user would: no TF_CPP_MIN_LOG_LEVEL, no warning filters."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["KERAS_BACKEND"] = backend
    args = tuple(map(str, args))
    proc = subprocess.run([KEXPORT, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if not {"-v", "--verbose"} & set(args):
        assert noise(proc.stderr) == [], proc.stderr[-3000:]
    if "--json" in args and proc.stdout.strip():
        json.loads(proc.stdout)  # exactly one JSON document, nothing around it
    return proc


@tensorflow_only
def test_help_is_fast_and_imports_no_framework():
    code = ("import sys, kexport.cli; kexport.cli.build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'onnxruntime', "
            "'onnx', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    proc = kexport("--help")
    assert proc.returncode == 0
    for verb in ("export", "inspect", "verify", "bench", "serve", "formats"):
        assert verb in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "kexport", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("kexport ")


@tensorflow_only
def test_usage_errors_exit_2(tmp_path):
    proc = kexport("export", tmp_path / "missing.keras", "-o", tmp_path / "out", "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "ArtifactError" and "does not exist" in err["message"]
    proc = kexport("export", tmp_path / "m.keras", "-o", tmp_path / "out", "--format", "onx")
    assert proc.returncode == 2 and "Did you mean 'onnx'?" in proc.stderr
    proc = kexport("bench", tmp_path, "--batch", "0")
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr


@tensorflow_only
def test_formats_table():
    proc = kexport("formats", "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    import kexport as kx

    assert [(r["backend"], r["format"]) for r in data["routes"]] == [
        (r.backend, r.format) for r in kx.routes()]
    assert data["formats"]["tf_saved_model"]["loadable"] is True
    text = kexport("formats").stdout
    assert text.startswith("backend \\ format") and "tensorflow" in text


@tensorflow_only
def test_bench_onnx_file(tmp_path):
    path = make_file(tmp_path / "m.onnx")
    proc = kexport("bench", path, "--batch", "1", "4", "--seconds", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "onnx" and [r["batch"] for r in data["results"]] == [1, 4]
    for row in data["results"]:
        s = row["artifact"]
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["throughput_per_s"] > 0


@tensorflow_only
def test_export_verify_tamper_inspect(tmp_path):
    model = sequence_model()
    model.save(tmp_path / "m.keras")
    out = tmp_path / "sm"
    proc = kexport("export", tmp_path / "m.keras", "--format", "tf_saved_model", "-o", out,
                   "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["verification"]["ok"] is True
    shapes = [c["input_shapes"]["seq"] for c in data["verification"]["checks"]]
    # batch at sizes 1 and 3, the time axis at a size of its own (1 + 2, 3 + 2)
    assert shapes == [[1, 3, 5], [3, 5, 5]]

    tamper_saved_model(out)
    proc = kexport("verify", tmp_path / "m.keras", out, "--json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert [(r["endpoint"], r["output"], r["ok"]) for r in report["summary"]] == [
        ("serve", "y", False)]

    proc = kexport("inspect", out, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout)
    assert info["format"] == "tf_saved_model" and info["default_endpoint"] == "serve"
    assert info["endpoints"]["serve"]["inputs"] == [
        {"name": "seq", "shape": [None, None, 5], "dtype": "float32",
         "symbols": ["batch", "d1", None]}]
    assert info["verification"]["ok"] is False  # the failed check was stored
    assert info["op_counts"]["serve"]["Conv2D"] >= 1 or info["op_counts"]["serve"]
    assert str(tmp_path) not in json.dumps(info["metadata"])


# -- quiet output, on every backend ------------------------------------------------------

@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("quiet") / "m.keras"
    mlp().save(path)
    return path


@pytest.mark.one_backend
@pytest.mark.parametrize("format", ["onnx", "tf_saved_model"])
def test_quiet_export_and_inspect_json(keras_file, tmp_path, format):
    out = tmp_path / ("m.onnx" if format == "onnx" else "sm")
    proc = kexport("export", keras_file, "--format", format, "-o", out, "--json",
                   "--backend", BACKEND, backend=BACKEND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["backend"] == BACKEND, data
    assert data["verification"]["ok"] is True
    assert noise(proc.stderr) == []

    proc = kexport("inspect", out, "--json", backend=BACKEND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["format"] == format
    assert noise(proc.stderr) == []


@pytest.mark.one_backend
def test_quiet_text_output(keras_file, tmp_path):
    """Without --json the result is on stdout and nothing from the frameworks anywhere."""
    proc = kexport("export", keras_file, "--format", "onnx", "-o", tmp_path / "m.onnx",
                   "--no-verify", "--backend", BACKEND, backend=BACKEND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("Wrote onnx artifact")
    assert noise(proc.stdout + proc.stderr) == []
    proc = kexport("inspect", tmp_path / "m.onnx", backend=BACKEND)
    assert proc.returncode == 0 and noise(proc.stdout + proc.stderr) == []


def test_quiet_formats_json():
    proc = kexport("formats", "--json", backend=BACKEND)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"formats", "routes"}
    assert proc.stderr == ""


@pytest.mark.one_backend
def test_verbose_still_works(keras_file, tmp_path):
    """-v leaves the libraries' logging alone, and the verbs work as without it."""
    proc = kexport("export", keras_file, "--format", "tf_saved_model", "-o", tmp_path / "sm",
                   "--no-verify", "-v", "--backend", BACKEND, backend=BACKEND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Wrote tf_saved_model artifact" in proc.stdout
    proc = kexport("inspect", tmp_path / "sm", "--json", "--verbose", backend=BACKEND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["format"] == "tf_saved_model"


@tensorflow_only
def test_export_quantize(tmp_path):
    """``--quantize MODE`` (and ``--calibration FILE.npz`` for int8): the artifact
    records its mode, verify uses the mode's precision; what cannot be honoured
    exits 2 with the typed error, writing nothing."""
    mlp().save(tmp_path / "m.keras")
    out = tmp_path / "q.onnx"
    proc = kexport("export", tmp_path / "m.keras", "-f", "onnx", "-o", out,
                   "--quantize", "dynamic_int8", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["quantization"] == "dynamic_int8"
    assert data["verification"]["precision"] == "int8"
    info = json.loads(kexport("inspect", out, "--json").stdout)
    assert info["metadata"]["quantization"] == "dynamic_int8"

    calibration = tmp_path / "cal.npz"
    np.savez(calibration, x=np.random.default_rng(0).random((32, 8), dtype="float32"))
    out8 = tmp_path / "q8.onnx"
    proc = kexport("export", tmp_path / "m.keras", "-f", "onnx", "-o", out8,
                   "--quantize", "int8", "--calibration", calibration, "--no-verify", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(kexport("inspect", out8, "--json").stdout)
    assert info["metadata"]["kexport.quantization"]["calibration_samples"] == 32

    for args, message in [
            (("-f", "onnx", "--quantize", "int8"), "Expected `calibration_data`"),
            (("-f", "tf_saved_model", "--quantize", "float16"),
             "format='tf_saved_model' can write: none"),
            (("-f", "onnx", "--quantize", "dynamic_int8", "--quantize-exclude", "nope,other",
              "--quantize-exclude", "third"), "Received unknown: ['nope', 'other', 'third']")]:
        target = tmp_path / "refused"
        proc = kexport("export", tmp_path / "m.keras", "-o", target, *args, "--json")
        assert proc.returncode == 2, proc.stderr[-3000:]
        err = json.loads(proc.stdout)["error"]
        assert err["type"] == "QuantizationError" and message in err["message"], err
        assert not target.exists()
    proc = kexport("export", tmp_path / "m.keras", "-o", tmp_path / "x", "--quantize", "int4")
    assert proc.returncode == 2 and "invalid choice: 'int4'" in proc.stderr

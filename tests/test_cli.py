"""The ``kexport`` console script, driven in subprocesses (TensorFlow run only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import sequence_model
from test_runtime_onnx import make_file
from test_verify import tamper_saved_model

pytestmark = pytest.mark.backends("tensorflow")

KEXPORT = str(Path(sys.executable).with_name("kexport"))


def kexport(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([KEXPORT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc


def test_help_is_fast_and_imports_no_framework():
    code = ("import sys, kexport.cli; kexport.cli.build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch', 'onnxruntime', "
            "'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    proc = kexport("--help")
    assert proc.returncode == 0
    for verb in ("export", "inspect", "verify", "bench", "formats"):
        assert verb in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "kexport", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("kexport ")


def test_usage_errors_exit_2(tmp_path):
    proc = kexport("export", tmp_path / "missing.keras", "-o", tmp_path / "out", "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert err["type"] == "ArtifactError" and "does not exist" in err["message"]
    proc = kexport("export", tmp_path / "m.keras", "-o", tmp_path / "out", "--format", "onx")
    assert proc.returncode == 2 and "Did you mean 'onnx'?" in proc.stderr
    proc = kexport("bench", tmp_path, "--batch", "0")
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr


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


def test_bench_onnx_file(tmp_path):
    path = make_file(tmp_path / "m.onnx")
    proc = kexport("bench", path, "--batch", "1", "4", "--seconds", "0.05", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "onnx" and [r["batch"] for r in data["results"]] == [1, 4]
    for row in data["results"]:
        s = row["artifact"]
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["throughput_per_s"] > 0


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
    assert shapes == [[1, 1, 5], [3, 3, 5]]  # both dynamic dims at sizes 1 and 3

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
        {"name": "seq", "shape": [None, None, 5], "dtype": "float32"}]
    assert info["verification"]["ok"] is False  # the failed check was stored
    assert info["op_counts"]["serve"]["Conv2D"] >= 1 or info["op_counts"]["serve"]
    assert str(tmp_path) not in json.dumps(info["metadata"])

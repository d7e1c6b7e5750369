"""The HTML report of real artifacts: its data checked against the artifacts and
the live model, its command line, and the page opened in headless Chromium
(Debian's ``chromium``; CI installs it in ``.ci/run``, the browser tests skip
where it is missing).

One subclassed model with dict inputs and two outputs, exported once to ONNX
and OpenVINO (the formats whose fresh-process check starts fastest); the
report runs on the TensorFlow run only (the backend does not matter to it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import kexport
from kexport.cli import main
from kexport.reporting.render import fmt_error, fmt_ms, fmt_size

pytestmark = pytest.mark.backends("tensorflow")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists(
    "/usr/bin/chromium") else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (CI installs it in .ci/run)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0")


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


def console(stderr: str) -> list[str]:
    """The page's console messages (Chromium logs each as a ``CONSOLE`` line)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data):
        self.parts.append(data)


def page_text(dom: str) -> str:
    p = _Text()
    p.feed(dom)
    return " ".join(" ".join(p.parts).split())


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    import keras

    class Scorer(keras.Model):
        def __init__(self):
            super().__init__()
            self.mix = keras.layers.Dense(16, activation="relu")
            self.head = keras.layers.Dense(5)
            self.embed = keras.layers.Dense(3)

        def call(self, inputs):
            h = self.mix(keras.ops.concatenate([inputs["pixels"], inputs["meta"]], axis=-1))
            return {"probs": keras.ops.softmax(self.head(h)), "embedding": self.embed(h)}

    sample = {"pixels": np.zeros((2, 12), "float32"), "meta": np.zeros((2, 3), "float32")}
    model, other = Scorer(), Scorer()
    model(sample)
    other(sample)  # the same architecture with other weights: every artifact fails on it
    tmp = tmp_path_factory.mktemp("report")
    onnx, ov = tmp / "scorer.onnx", tmp / "scorer.xml"
    kexport.export_onnx(model, onnx, verbose=False)
    kexport.export_openvino(model, ov, verbose=False)
    page, failed_page = tmp / "report.html", tmp / "failed.html"
    data = kexport.report(model, [onnx, ov], page, json_path=tmp / "report.json",
                          batch_sizes=(1, 4), seconds=0.05)
    failed = kexport.report(other, [onnx], failed_page, batch_sizes=(2,), seconds=0.05)
    return {"tmp": tmp, "model": model, "other": other, "sample": sample, "onnx": onnx,
            "ov": ov, "page": page, "failed_page": failed_page, "data": data, "failed": failed}


def test_report_data_matches_the_artifacts_and_the_live_model(reported):
    import onnx
    import openvino as ov

    data = reported["data"]
    tmp = reported["tmp"]
    # what --json wrote is what the function returned; it holds no local path
    written = (tmp / "report.json").read_text()
    assert json.loads(written) == data and str(tmp) not in written and data["ok"] is True
    assert data["model"]["class_name"] == "Scorer" and data["model"]["backend"] == "tensorflow"
    assert data["model"]["parameters"] == reported["model"].count_params()
    onnx_s, ov_s = data["artifacts"]
    assert (onnx_s["name"], onnx_s["format"], ov_s["name"], ov_s["format"]) == (
        "scorer.onnx", "onnx", "scorer.xml", "openvino")
    assert onnx_s["route"]["kind"] == "native" and "tensorflow" in onnx_s["route"]["text"]
    # sizes are the files on disk
    assert onnx_s["size"] == os.path.getsize(reported["onnx"])
    assert ov_s["size"] == os.path.getsize(reported["ov"]) + os.path.getsize(tmp / "scorer.bin")
    assert sorted(f["name"] for f in ov_s["files"]) == ["scorer.bin", "scorer.xml"]
    # endpoints: the dict inputs by name, shapes and dtypes
    (serve,) = onnx_s["endpoints"]
    assert serve["default"] and {t["name"]: t["shape"] for t in serve["inputs"]} == {
        "pixels": [None, 12], "meta": [None, 3]}
    assert sorted(t["name"] for t in serve["outputs"]) == ["embedding", "probs"]
    # operator counts are the graphs' own
    graph = onnx.load(reported["onnx"]).graph
    want: dict[str, int] = {}
    for node in graph.node:
        want[node.op_type] = want.get(node.op_type, 0) + 1
    assert onnx_s["operators"][serve["name"]] == want
    ir = ov.Core().read_model(os.fspath(reported["ov"]))
    kinds = [op.get_type_name() for op in ir.get_ordered_ops()]
    assert sum(ov_s["operators"][serve["name"]].values()) == len(
        [k for k in kinds if k not in ("Parameter", "Result", "Constant")])
    assert ov_s["operators"][serve["name"]]["MatMul"] == kinds.count("MatMul")
    for s in (onnx_s, ov_s):
        v = s["verification"]
        assert v["ok"] and v["atol"] > 0 and {r["output"] for r in v["summary"]} == {
            "probs", "embedding"}
        assert s["quantization"] is None and s["localization"] is None
        # histograms: every element of 16 rows, within the tolerance the check used
        hists = {h["output"]: h for h in s["histograms"]}
        assert hists["probs"]["elements"] == 16 * 5 and hists["embedding"]["elements"] == 16 * 3
        for h in hists.values():
            assert h["exact"] + sum(b["count"] for b in h["bins"]) + h["below"] == h["elements"]
            assert h["max_abs"] <= h["atol"] and h["atol"] == v["atol"]
        # latency at each batch size, the live model's beside it
        assert [r["batch"] for r in s["latency"]] == [1, 4]
        for row in s["latency"]:
            assert 0 < row["p50_ms"] <= row["p90_ms"] and row["runs"] >= 3
            assert 0 < row["keras_p50_ms"] <= row["keras_p90_ms"]
    assert [r["batch"] for r in data["keras_latency"]] == [1, 4]


def test_a_failed_artifact_is_reported_with_the_localisers_finding(reported):
    data = reported["failed"]
    (s,) = data["artifacts"]
    assert data["ok"] is False and s["ok"] is False
    failed = [r for r in s["verification"]["summary"] if not r["ok"]]
    assert {r["output"] for r in failed} == {"probs", "embedding"}
    # the histogram shows the live difference, beyond the tolerance
    embedding = next(h for h in s["histograms"] if h["output"] == "embedding")
    assert embedding["max_abs"] > 10 * embedding["atol"]
    x = {k: np.random.default_rng(0).standard_normal((4, v.shape[1])).astype("float32")
         for k, v in reported["sample"].items()}
    got = kexport.load(reported["onnx"])(x)["embedding"]
    want = np.asarray(reported["other"](x)["embedding"])
    assert np.abs(got - want).max() > 10 * embedding["atol"]  # the artifact really differs
    # the artifact is another model's: read from the artifact's own intermediate values, its
    # first layer already computes something else from the same inputs, so the localiser
    # names that layer (not the route: a probe of this model through it would match)
    finding = s["localization"]
    assert finding["status"] == "found" and finding["method"] == "artifact", finding
    assert finding["culprit"] == reported["other"].mix.name, finding
    first = finding["layers"][0]
    assert finding["total_layers"] == 3 and first["input_error"] == 0.0 and not first["ok"], first


@needs_chromium
def test_the_report_opens_in_chromium_without_console_errors(reported, tmp_path):
    # the console check sees what a page logs (a planted error), so silence means something
    planted = tmp_path / "planted.html"
    planted.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>p</title>'
                       '</head><body><script>console.error("planted-error")</script>'
                       "</body></html>")
    assert any("planted-error" in line for line in console(chromium(
        planted, tmp_path, "--dump-dom").stderr))

    data = reported["data"]
    run = chromium(reported["page"], tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console(run.stderr) == []
    text = page_text(run.stdout)
    assert f"kexport report: {reported['model'].name}" in text
    for s in data["artifacts"]:
        assert s["name"] in text and fmt_size(s["size"]) in text
        for r in s["verification"]["summary"]:
            assert fmt_error(r["max_abs"]) in text and fmt_error(r["max_rel"]) in text
        for h in s["histograms"]:
            assert f"{h['output']}: max {fmt_error(h['max_abs'])}" in text
        for row in s["latency"]:
            for key in ("p50_ms", "p90_ms", "keras_p50_ms", "keras_p90_ms"):
                assert fmt_ms(row[key]) in text
        assert f"atol {s['verification']['atol']}" in text
    assert str(reported["tmp"]) not in run.stdout

    shot = tmp_path / "report.png"
    run = chromium(reported["page"], tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert console(run.stderr) == [] and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    failed = reported["failed"]["artifacts"][0]
    run = chromium(reported["failed_page"], tmp_path, "--dump-dom")
    assert console(run.stderr) == []
    text = page_text(run.stdout)
    assert "Verification FAIL" in text and failed["localization"]["message"] in text
    assert fmt_error(failed["verification"]["summary"][0]["max_abs"]) in text


def test_cli_report_and_export_report(reported, tmp_path):
    import keras

    def functional():
        inputs = keras.Input((6,), name="features")
        outputs = keras.layers.Dense(3, name="logits")(keras.layers.Dense(8)(inputs))
        return keras.Model(inputs, outputs)

    functional().save(tmp_path / "m.keras")
    functional().save(tmp_path / "other.keras")  # other weights
    onnx = tmp_path / "m.onnx"
    page = tmp_path / "export.html"
    assert main(["export", str(tmp_path / "m.keras"), "-f", "onnx", "-o", str(onnx),
                 "--report", str(page)]) == 0
    html = page.read_text()
    assert "m.onnx" in html and "m.keras" in html and str(tmp_path) not in html
    assert "Verification <span class=\"pass\">PASS" in html

    # the report verb: the given artifacts, --json FILE beside the page, exit 1 on a failure
    out, data_file = tmp_path / "r.html", tmp_path / "r.json"
    assert main(["report", str(tmp_path / "m.keras"), str(onnx), "-o", str(out),
                 "--json", str(data_file), "--batch", "1", "2", "--seconds", "0.05"]) == 0
    data = json.loads(data_file.read_text())
    assert data["model"]["file"] == "m.keras" and [s["name"] for s in data["artifacts"]] == [
        "m.onnx"]
    assert [r["batch"] for r in data["artifacts"][0]["latency"]] == [1, 2] and out.is_file()
    assert main(["report", str(tmp_path / "other.keras"), str(onnx), "-o",
                 str(tmp_path / "bad.html"), "--batch", "1", "--seconds", "0.05"]) == 1
    # a missing artifact is bad input (exit 2), and nothing is written
    assert main(["report", str(tmp_path / "m.keras"), str(tmp_path / "none.onnx"), "-o",
                 str(tmp_path / "none.html")]) == 2
    assert not (tmp_path / "none.html").exists()

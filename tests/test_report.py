"""Fast tier: the report's data -> HTML (escaping, no local paths, histograms,
the localiser's finding), nothing exported. The report of real artifacts, its
command line and its rendering in a browser: ``test_report_browser.py``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
import pytest

from kexport.reporting import gather, localization, render_html
from kexport.reporting.gather import histogram, route, scrub
from kexport.reporting.render import fmt_error, fmt_ms, fmt_size
from kexport.reporting.svg import histogram_svg

pytestmark = pytest.mark.fast

EVIL = '<script>alert("x")</script>&'


class _Page(HTMLParser):
    """Elements, text and attributes of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def sample_data(name: str = EVIL) -> dict:
    """A report's data as :func:`collect` writes it, with hostile names everywhere."""
    summary = {"endpoint": "serve", "output": name, "cases": ["dyn=1", "dyn=3"],
               "shape_match": True, "max_abs": 0.0123, "max_rel": 0.5, "atol": 1e-4,
               "rtol": 1e-3, "scores": False, "ok": False, "failed": [], "samples": 4,
               "sqnr_db": 31.5, "cosine_min": 0.99, "cosine_mean": 0.995, "top1": None,
               "top5": None}
    hist = histogram(name, np.array([0, 0, 2e-7, 3e-6, 0.0123]), 1e-4, 1e-3)
    return {
        "schema": gather.SCHEMA, "producer": "kexport", "producer_version": "0",
        "generated": "2026-01-01 00:00 UTC", "ok": False,
        "model": {"name": name, "class_name": "Net", "backend": "tensorflow",
                  "keras_version": "3", "parameters": 42, "file": name},
        "settings": {"seed": 0, "batch_sizes": [1, 8], "seconds": 0.1, "histogram_rows": 16,
                     "precision": "f32", "inputs": "generated"},
        "keras_latency": [{"batch": 1, "p50_ms": 1.5, "p90_ms": 2.5, "runs": 9}],
        "artifacts": [{
            "name": name, "format": "onnx", "ok": False, "error": name,
            "route": {"kind": "native", "text": name}, "quantization": None,
            "files": [{"name": name, "bytes": 1234}], "size": 1234,
            "runtime_precision": "float32", "default_endpoint": "serve",
            "endpoints": [{"name": "serve", "default": True,
                           "inputs": [{"name": name, "shape": [None, 3], "dtype": "float32"}],
                           "outputs": [{"name": name, "shape": [None, 2], "dtype": "float32"}]}],
            "operators": {"serve": {name: 3, "MatMul": 1}},
            "verification": {"ok": False, "format": "onnx", "precision": "float32",
                             "runtime_precision": "float32", "atol": 1e-4, "rtol": 1e-3,
                             "seed": 0, "quantization": None, "thresholds": None,
                             "inputs": "generated", "error": name, "summary": [summary],
                             "checks": [{"endpoint": "serve", "output": name, "case": "dyn=1",
                                         "ok": False, "error": name}]},
            "histograms": [hist],
            "latency": [{"batch": 1, "p50_ms": 0.25, "p90_ms": 0.5, "runs": 7,
                         "keras_p50_ms": 1.5, "keras_p90_ms": 2.5}],
            "localization": {"status": "found", "culprit": name, "message": name,
                             "total_layers": 1, "layer": None,
                             "layers": [{"path": name, "class_name": name, "input_error": 0.0,
                                         "output_error": 0.0123, "tolerance": 1e-4,
                                         "ok": False, "origin": name, "ops": [name]}]},
        }],
    }


def test_every_text_of_the_data_is_escaped():
    page = render_html(sample_data())
    parsed = parse(page)
    # the hostile name never becomes markup: no script element, no attribute from it
    assert "script" not in parsed.tags
    assert "<script" not in page
    text = "".join(parsed.text)
    assert text.count(EVIL) >= 12  # shown as text: title, files, endpoints, ops, finding...
    assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2",
                                "h3", "p", "span", "table", "thead", "tbody", "tr", "th",
                                "td", "a", "code", "section", "div", "figure", "figcaption",
                                "svg", "line", "rect", "text"}
    # self-contained: nothing to fetch, and a policy that forbids fetching
    assert not re.search(r"\b(src|href)=\"(?!#)", page)
    assert "default-src 'none'" in page


def test_the_page_shows_the_numbers_of_the_data():
    data = sample_data("probs")
    text = "".join(parse(render_html(data)).text)
    section = data["artifacts"][0]
    for value in (fmt_error(0.0123), fmt_error(0.5), fmt_size(1234), fmt_ms(0.25),
                  fmt_ms(0.5), fmt_ms(1.5), fmt_ms(2.5), "atol=0.0001 rtol=0.001"):
        assert value in text, value
    assert "FAIL" in text and section["localization"]["message"] in text
    assert fmt_size(1234) == "1.2 KiB (1234 bytes)" and fmt_error(float("inf")) == "inf"


def test_histogram_bins_by_decade_and_marks_the_tolerance():
    errors = np.array([0.0, 0.0, 0.0, 2e-9, 5e-7, 6e-7, 3e-3, np.nan])
    h = histogram("y", errors, atol=1e-4, rtol=1e-3)
    assert (h["elements"], h["exact"], h["nan"], h["below"]) == (8, 3, 1, 0)
    counts = {b["exponent"]: b["count"] for b in h["bins"]}
    assert counts == {-9: 1, -8: 0, -7: 2, -6: 0, -5: 0, -4: 0, -3: 1}
    assert h["max_abs"] == pytest.approx(3e-3)
    svg = histogram_svg(h)
    # one rect per bar: exact, 7 decades, nan; the dashed tolerance line at 1e-4
    assert svg.count("<rect") == 9 and 'class="tol"' in svg and "atol 0.0001" in svg
    # a wide range keeps the top decades; the rest is counted below the first bin
    wide = histogram("y", np.array([1e-30, 1e-20, 1.0]), atol=0.0, rtol=0.0)
    assert len(wide["bins"]) == 12 and wide["below"] == 2 and wide["bins"][-1]["count"] == 1


def test_no_local_path_survives_in_the_data():
    data = {"error": "the artifact could not be opened: '/home/me/out/model.onnx' (errno 2)",
            "list": ["see /tmp/pytest-7/x/y.xml and ./rel/file.bin", "http://host/p a/b"],
            "name": "/home/me/out/model.onnx"}
    out = scrub(data, {"/home/me/out/model.onnx": "model.onnx"})
    text = json.dumps(out)
    assert "/home" not in text and "/tmp" not in text
    assert out["error"] == "the artifact could not be opened: 'model.onnx' (errno 2)"
    assert out["list"] == ["see y.xml and ./rel/file.bin", "http://host/p a/b"]
    assert scrub({"x": float("inf")}, {}) == {"x": "inf"}


def test_route_says_rehost_when_the_writer_is_not_the_model_backend():
    assert route({"backend": "torch"}, "torch", "jax")["text"] == \
        "rehost: jax model rebuilt on torch -> torch"
    onnx = route({"kexport.backend": "tensorflow",
                  "kexport.route": "tensorflow: tf.function -> tf2onnx"}, "onnx", "tensorflow")
    assert onnx["kind"] == "native" and onnx["text"] == \
        "native: tensorflow -> onnx (tensorflow: tf.function -> tf2onnx)"


@dataclass
class _Row:
    path: str
    ok: bool


@dataclass
class _Found:
    """A localiser's report, as the protocol describes it."""

    culprit: str | None
    layers: list = field(default_factory=list)

    def to_json(self):
        return {"culprit": self.culprit, "layers": [
            {"path": r.path, "class_name": "Dense", "input_error": 0.0,
             "output_error": 0.0 if r.ok else 0.5, "tolerance": 1e-4, "ok": r.ok,
             "origin": None if r.ok else "enters here", "ops": ("MatMul", "Add")}
            for r in self.layers]}


def test_the_localisers_finding_keeps_the_rows_around_the_culprit(monkeypatch):
    rows = [_Row(f"net/layer_{i}", i < 20) for i in range(30)]
    calls = []

    def fake(model, artifact_path, data=None):
        calls.append((model, artifact_path, data))
        return _Found("net/layer_20", rows)

    monkeypatch.setattr(localization, "LOCALIZER", fake)
    f = localization._localize_finding("M", "a.onnx", data={"x": 1})
    assert calls == [("M", "a.onnx", {"x": 1})]
    assert f["status"] == "found" and f["culprit"] == "net/layer_20"
    assert f["layer"]["path"] == "net/layer_20" and f["layer"]["ops"] == ["MatMul", "Add"]
    kept = [r["path"] for r in f["layers"]]
    assert kept[0] == "net/layer_8" and kept[-1] == "net/layer_23" and f["total_layers"] == 30
    assert "net/layer_20 (Dense)" in f["message"] and "enters here" in f["message"]

    clean = localization.finding_json(_Found(None, rows[:3]))
    assert clean["status"] == "clean" and clean["layer"] is None and len(clean["layers"]) == 3

    def refuses(model, artifact_path, data=None):
        raise TypeError("Expected a format that keeps intermediate outputs. Received: 'x'")

    monkeypatch.setattr(localization, "LOCALIZER", refuses)
    f = localization._localize_finding("M", "a.onnx")
    assert f["status"] == "error" and f["message"].startswith("TypeError: Expected a format")

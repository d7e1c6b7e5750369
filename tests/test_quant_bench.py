"""The quantization benchmarks' own logic: target verdicts, ratios, rendering, the docs block.

benchmarks/quantization.py and benchmarks/quant_matrix.py import neither Keras
nor a runtime at import time; nothing is exported here.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import quant_matrix
import quantization as qbench

pytestmark = pytest.mark.fast


def _row(model, format, mode, **values):
    precision = {"float16": "float16", "dynamic_int8": "int8", "int8": "int8"}.get(mode, "float32")
    return {"model": model, "format": format, "mode": mode, "precision": precision,
            "status": "ok", **values}


def test_derive_takes_ratios_against_the_float_row_of_the_same_model_and_format():
    rows = [_row("cnn", "onnx", None, size=1000, p50_b1_ms=2.0, p50_b32_ms=30.0),
            _row("cnn", "onnx", "int8", size=280, p50_b1_ms=1.0, p50_b32_ms=12.0),
            _row("cnn", "litert", None, size=4000, p50_b1_ms=1.0, p50_b32_ms=8.0),
            _row("cnn", "litert", "int8", size=1000, p50_b1_ms=0.5, p50_b32_ms=16.0)]
    qbench.derive(rows)
    assert rows[1]["size_ratio"] == pytest.approx(0.28)
    assert rows[1]["speedup_b32"] == pytest.approx(2.5)
    assert rows[3]["size_ratio"] == pytest.approx(0.25)
    assert rows[3]["speedup_b32"] == pytest.approx(0.5)
    assert "size_ratio" not in rows[0]


def test_derive_prefers_the_paired_speed_up_measured_call_by_call():
    rows = [_row("lstm", "onnx", None, size=100, p50_b1_ms=1.0, p50_b32_ms=4.0),
            _row("lstm", "onnx", "int8", size=50, p50_b1_ms=1.0, p50_b32_ms=2.0,
                 paired_speedup_b32=1.7)]
    qbench.derive(rows)
    assert rows[1]["speedup_b32"] == 1.7
    assert rows[1]["speedup_b1"] == pytest.approx(1.0)


def test_verdicts_pass_miss_and_not_applicable():
    rows = [
        _row("cnn", "onnx", "int8", size_ratio=0.29, speedup_b32=1.8, top1=0.995),
        _row("cnn", "onnx", "dynamic_int8", size_ratio=0.31, top1=1.0),
        _row("transformer", "onnx", "int8", size_ratio=0.2, speedup_b32=1.2, top1=0.9),
        _row("cnn", "onnx", "float16", size_ratio=0.51, top1=1.0),
        {"model": "cnn", "format": "openvino", "mode": "int8", "precision": "int8",
         "status": "refused", "error": "typed error: QuantizationError: no"},
    ]
    found = {v["target"]: v for v in qbench.verdicts(rows)}
    size = found["int8 size"]
    assert (size["verdict"], size["cells"], size["worst"]) == ("MISS", 3, 0.31)
    assert size["misses"] == [{"cell": "cnn/onnx/dynamic_int8", "value": 0.31}]
    speed = found["int8 speed"]
    assert (speed["verdict"], speed["worst"]) == ("MISS", 1.2)
    assert [m["cell"] for m in speed["misses"]] == ["transformer/onnx/int8"]
    # the transformer is not the digits classifier: its top-1 does not count
    assert found["int8 top-1"]["verdict"] == "PASS"
    assert found["int8 top-1"]["worst"] == 0.995
    assert found["float16 size"]["verdict"] == "PASS"
    assert found["float16 top-1"]["verdict"] == "PASS"

    only_refused = qbench.verdicts([rows[-1]])
    speed = {v["target"]: v for v in only_refused}["int8 speed"]
    assert speed["verdict"] == "n/a" and speed["cells"] == 0
    assert "cnn/openvino/int8: typed error: QuantizationError: no" in speed["note"]


def test_float16_top1_below_100_percent_misses():
    rows = [_row("cnn", "litert", "float16", size_ratio=0.5, top1=0.998)]
    found = {v["target"]: v for v in qbench.verdicts(rows)}
    assert found["float16 top-1"]["verdict"] == "MISS"


def test_markdown_shows_every_row_and_every_verdict():
    rows = [_row("cnn", "onnx", None, size=2048, export_s=1.0, p50_b1_ms=0.2, p50_b32_ms=3.0,
                 top1=1.0, sqnr_db=130.0, runs_in="float32"),
            _row("cnn", "onnx", "int8", size=512, export_s=2.0, p50_b1_ms=0.1, p50_b32_ms=1.0,
                 top1=0.99, sqnr_db=35.0, runs_in="float32"),
            {"model": "cnn", "format": "onnx", "mode": "bfloat16", "status": "refused",
             "error": "typed error: QuantizationError: Expected a|mode"}]
    qbench.derive(rows)
    result = {"rows": rows, "verdicts": qbench.verdicts(rows)}
    text = qbench.render_markdown(result)
    lines = text.splitlines()
    header = lines[0].split(" | ")
    assert len(header) == len(qbench.COLUMNS)
    assert "| cnn | onnx | int8 | 512 B | 0.25 | 2.0 | 0.100 | 2.00 | 1.000 | 3.00 | 0.9900 | " \
           "35.0 | int8 | float32 |" in lines
    refused = next(line for line in lines if "bfloat16" in line)
    assert refused.count(" | ") == len(qbench.COLUMNS) - 1      # the | in the message escaped
    assert "typed error: QuantizationError: Expected a\\|mode" in refused
    for target in qbench.TARGETS:
        assert any(target.text in line for line in lines)
    assert "**PASS**" in text and "**n/a**" in text


def test_matrix_renders_cells_and_numbered_notes():
    refused = {"status": "typed error", "error_class": "QuantizationError",
               "message": "Expected a quantization mode format='torch' can write: none"}
    result = {"backends": ["tensorflow", "jax"], "cells": {
        "tensorflow": [{"format": "onnx", "mode": "int8", "status": "ok", "sqnr_db": 36.4,
                        "top1": 0.996},
                       {"format": "torch", "mode": "int8", **refused}],
        "jax": [{"format": "onnx", "mode": "int8", "status": "FAIL", "error_class": "verify",
                 "message": "logits: SQNR 3.0 dB < 20 dB"},
                {"format": "torch", "mode": "int8", **refused}]}}
    lines = quant_matrix.render(result).splitlines()
    assert lines[0] == "| format | mode | tensorflow | jax |"
    assert "| onnx | int8 | ok (SQNR 36 dB, top-1 0.996) | **FAIL** [1] |" in lines
    assert "| torch | int8 | typed error: QuantizationError [2] | " \
           "typed error: QuantizationError [2] |" in lines
    assert "1. `verify: logits: SQNR 3.0 dB < 20 dB`" in lines
    assert "2. `QuantizationError: Expected a quantization mode format='torch' can write: " \
           "none`" in lines
    assert lines[-1].startswith("1 ok, 2 typed errors, 1 FAIL (tensorflow, jax;")


def test_docs_block_is_replaced_between_markers_and_appended_when_missing():
    start, end = quant_matrix.START, quant_matrix.END
    text = f"# Doc\n\nbefore\n{start}\nold table\n{end}\nafter\n"
    assert quant_matrix.replace_between(text, "new") == \
        f"# Doc\n\nbefore\n{start}\nnew\n{end}\nafter\n"
    assert quant_matrix.replace_between("# Doc\n", "new") == f"# Doc\n\n{start}\nnew\n{end}\n"

"""Quantized artifacts: size, latency and agreement with the float Keras model, per format x mode.

Three models, each trained briefly here (seeded):

- ``cnn``: a small ResNet-style CNN (conv stem, three residual blocks, a
  strided stage, global pooling) on scikit-learn's bundled 8x8 digits: the
  digits classifier of the targets;
- ``transformer``: a two-block Transformer encoder (multi-head self-attention,
  feed-forward, layer norms, learned positions) classifying generated
  sequences of 32 steps x 16 features into 8 classes;
- ``lstm``: a one-layer LSTM (64 units) classifying generated sequences of 20
  steps x 8 features into 8 classes.

The generated sequences (:func:`sequence_data`) hold one smooth random
pattern per class, shifted in time and buried in noise: the models learn a
real decision rule and give confident logits where the pattern is clear, as
trained models do.

For every format that quantizes (``kexport.artifact.quantization.supported_modes``
says which; a format that starts quantizing appears here on the next run) and
every mode of ``kexport.artifact.quantization.MODES`` the benchmark exports
the model with ``quantization=mode`` (``calibration_data``: 256 training rows
in batches of 32 for the calibrated modes) next to the float artifact, then
opens every artifact in a FRESH process that never imports Keras (the format's
own runtime through ``kexport.load``: ONNX Runtime, the LiteRT interpreter,
OpenVINO compiled for the CPU at ``INFERENCE_PRECISION_HINT`` f32 unless the
artifact's mode asks otherwise) and measures:

- artifact size, and its ratio to the float artifact of the same format;
- p50 latency at batch 1 and 32, and the speed-up over the float artifact:
  the artifacts of one model and format are called in turn, one call each,
  and the speed-up is the median of the paired ratios (float call time / this
  call time), so a busy neighbour on shared cores slows both sides alike;
- top-1 agreement and SQNR (dB) of the artifact's logits against the float
  Keras model's on a fixed held-out set (``kexport.check.compare.quality``);
- export time; the precision the runtime reports it computes in.

A mode a format refuses is recorded with its typed error, never skipped
silently. The targets of issue #16 are printed with a verdict each
(:data:`TARGETS`): PASS, MISS (with the cells that miss) or n/a (no cell to
judge, and why).

Run (a few minutes on 2 cores)::

    KERAS_BACKEND=tensorflow python benchmarks/quantization.py --json out.json
    python benchmarks/quantization.py --quick --models cnn --formats onnx
    python benchmarks/quantization.py --markdown --from out.json   # render only

This module imports neither Keras nor a runtime at import time (tests import
its verdict and rendering logic).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("cnn", "transformer", "lstm")
DIGITS_MODEL = "cnn"          # the digits classifier of the targets
CALIBRATION_ROWS, CALIBRATION_BATCH = 256, 32
BATCHES = (1, 32)
EPOCHS = {"cnn": 12, "transformer": 3, "lstm": 6}


# -- targets and verdicts (pure logic) ---------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of issue #16: which cells it judges and the test each must pass.

    ``cells(rows)`` picks the measured rows it applies to, ``value(row)`` is
    the number judged and ``ok(value)`` the test; ``text`` is the target as
    the issue states it.
    """

    name: str
    text: str
    select: Callable[[Mapping[str, Any]], bool]
    value: Callable[[Mapping[str, Any]], float | None]
    ok: Callable[[float], bool]
    unit: str = ""
    expects: str = ""        # the cells it needs, said when none was measured
    higher_is_better: bool = True


def _int8_precision(row: Mapping[str, Any]) -> bool:
    return row.get("precision") == "int8"


TARGETS: tuple[Target, ...] = (
    Target("int8 size", "int8 artifacts <= 0.3x the float artifact's size",
           lambda r: _int8_precision(r), lambda r: r.get("size_ratio"),
           lambda v: v <= 0.3, "x", "an int8 or dynamic_int8 artifact", False),
    Target("int8 speed", "int8 ONNX and OpenVINO >= 1.5x faster than float at batch 32 "
           "on the CNN and the Transformer",
           lambda r: (r.get("mode") == "int8" and r.get("format") in ("onnx", "openvino")
                      and r.get("model") in ("cnn", "transformer")),
           lambda r: r.get("speedup_b32"), lambda v: v >= 1.5, "x",
           "an int8 artifact of onnx/openvino for cnn/transformer"),
    Target("int8 top-1", "top-1 agreement >= 99% on the digits classifier for every int8 mode",
           lambda r: _int8_precision(r) and r.get("model") == DIGITS_MODEL,
           lambda r: r.get("top1"), lambda v: v >= 0.99, "",
           "an int8 or dynamic_int8 artifact of the digits classifier"),
    Target("float16 size", "float16 artifacts <= 0.55x the float artifact's size",
           lambda r: r.get("mode") == "float16", lambda r: r.get("size_ratio"),
           lambda v: v <= 0.55, "x", "a float16 artifact", False),
    Target("float16 top-1", "float16 top-1 agreement 100% on the digits classifier",
           lambda r: r.get("mode") == "float16" and r.get("model") == DIGITS_MODEL,
           lambda r: r.get("top1"), lambda v: v >= 1.0, "",
           "a float16 artifact of the digits classifier"),
)


def cell_name(row: Mapping[str, Any]) -> str:
    return f"{row['model']}/{row['format']}/{row['mode']}"


def verdicts(rows: Iterable[Mapping[str, Any]],
             targets: Iterable[Target] = TARGETS) -> list[dict[str, Any]]:
    """One verdict per target over the measured ``rows``.

    A row counts when it is a quantized cell that was written and measured
    (``status == "ok"``). Returns dicts ``{target, text, verdict, cells,
    worst, misses, note}``: ``verdict`` is ``"PASS"`` (every selected cell
    meets it), ``"MISS"`` (``misses`` lists the cells that do not, with their
    value) or ``"n/a"`` (no cell selected; ``note`` says which cells it needs
    and which of them were refused or failed).
    """
    rows = list(rows)
    out = []
    for t in targets:
        chosen = [r for r in rows if r.get("mode") and t.select(r)]
        measured = [r for r in chosen if r.get("status") == "ok" and t.value(r) is not None]
        misses = [(cell_name(r), t.value(r)) for r in measured if not t.ok(t.value(r))]
        entry: dict[str, Any] = {"target": t.name, "text": t.text, "cells": len(measured),
                                 "misses": [{"cell": c, "value": v} for c, v in misses],
                                 "worst": None, "note": ""}
        if not measured:
            entry["verdict"] = "n/a"
            refused = sorted({f"{cell_name(r)}: {r.get('error', r.get('status'))}"
                              for r in chosen if r.get("status") != "ok"})
            entry["note"] = (f"needs {t.expects}; none measured"
                             + (f" ({'; '.join(refused)})" if refused else ""))
        else:
            values = [t.value(r) for r in measured]
            entry["worst"] = min(values) if t.higher_is_better else max(values)
            entry["verdict"] = "MISS" if misses else "PASS"
        out.append(entry)
    return out


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:          # NaN
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


COLUMNS = ("model", "format", "mode", "size", "size x", "export s", "p50 b1 ms", "b1 speed-up",
           "p50 b32 ms", "b32 speed-up", "top-1", "SQNR dB", "precision", "runtime")


def table_rows(rows: Iterable[Mapping[str, Any]], width: int | None = None
               ) -> list[list[str]]:
    """The result table's cells, one list per row; a cell not measured shows its error
    (cut to ``width`` characters when given) across the last columns."""
    out = []
    for r in rows:
        mode = r.get("mode") or "float"
        if r.get("status") != "ok":
            error = r.get("error") or str(r.get("status"))
            if width is not None and len(error) > width:
                error = error[:width - 3] + "..."
            out.append([r["model"], r["format"], mode, *["-"] * (len(COLUMNS) - 5), "-", error])
            continue
        out.append([r["model"], r["format"], mode, _size(r.get("size")),
                    _fmt(r.get("size_ratio"), 2) if r.get("mode") else "1.00",
                    _fmt(r.get("export_s"), 1), _fmt(r.get("p50_b1_ms"), 3),
                    _fmt(r.get("speedup_b1"), 2) if r.get("mode") else "1.00",
                    _fmt(r.get("p50_b32_ms"), 3),
                    _fmt(r.get("speedup_b32"), 2) if r.get("mode") else "1.00",
                    _fmt(r.get("top1"), 4), _fmt(r.get("sqnr_db"), 1),
                    str(r.get("precision") or "-"), str(r.get("runs_in") or "-")])
    return out


def render_markdown(result: Mapping[str, Any]) -> str:
    """The benchmark's result as Markdown: the measurement table, then the verdicts."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in table_rows(result["rows"])]
    lines += ["", "| target | verdict | cells | worst | misses / note |", "|---|---|---|---|---|"]
    for v in result["verdicts"]:
        misses = ", ".join(f"{m['cell']} {_fmt(m['value'], 3)}" for m in v["misses"])
        lines.append(f"| {v['text']} | **{v['verdict']}** | {v['cells']} | "
                     f"{_fmt(v['worst'], 3)} | {(misses or v['note']).replace('|', '/')} |")
    return "\n".join(lines)


def render_text(result: Mapping[str, Any]) -> str:
    rows = [list(COLUMNS)] + table_rows(result["rows"], width=60)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "targets (issue #16):"]
    for v in result["verdicts"]:
        detail = ", ".join(f"{m['cell']} {_fmt(m['value'], 3)}" for m in v["misses"]) or v["note"]
        worst = f", worst {_fmt(v['worst'], 3)}" if v["worst"] is not None else ""
        lines.append(f"  [{v['verdict']}] {v['text']} ({v['cells']} cells{worst})"
                     + (f": {detail}" if detail else ""))
    return "\n".join(lines)


def derive(rows: list[dict[str, Any]]) -> None:
    """Fill each quantized row's ratios to the float row of its model and format
    (the speed-up: the child's paired median when measured, else the ratio of p50s)."""
    floats = {(r["model"], r["format"]): r for r in rows
              if r.get("mode") is None and r.get("status") == "ok"}
    for r in rows:
        base = floats.get((r["model"], r["format"]))
        if r.get("mode") is None or r.get("status") != "ok" or base is None:
            continue
        if r.get("size") and base.get("size"):
            r["size_ratio"] = r["size"] / base["size"]
        for b in BATCHES:
            mine, theirs = r.get(f"p50_b{b}_ms"), base.get(f"p50_b{b}_ms")
            if r.get(f"paired_speedup_b{b}") is not None:
                r[f"speedup_b{b}"] = r[f"paired_speedup_b{b}"]
            elif mine and theirs:
                r[f"speedup_b{b}"] = theirs / mine


# -- data and models ----------------------------------------------------------------------


def digits_data() -> dict[str, Any]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype("int32"), test_size=0.25, random_state=0, stratify=y)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": 10, "rng": np.random.default_rng(0)}


def sequence_data(steps: int, features: int, classes: int, seed: int,
                  n_train: int = 2000, n_test: int = 480, amplitude: float = 0.5
                  ) -> dict[str, Any]:
    """Generated sequences: one smooth random pattern per class, shifted in time by
    0-4 steps, scaled by ``amplitude`` and buried in unit Gaussian noise.

    The label is the pattern's class, so a model trained on it gets a real
    decision rule with confident logits where the pattern is clear (about 95%
    held-out accuracy after the few epochs here), as a deployed classifier does.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(classes, steps + 8, features))
    patterns = (patterns + np.roll(patterns, 1, axis=1) + np.roll(patterns, 2, axis=1)) / 3 ** .5
    n = n_train + n_test
    y = rng.integers(0, classes, n)
    steps_at = rng.integers(0, 5, n)[:, None] + np.arange(steps)[None]
    x = (amplitude * patterns[y[:, None], steps_at]
         + rng.normal(size=(n, steps, features))).astype("float32")
    return {"x_train": x[:n_train], "y_train": y[:n_train].astype("int32"),
            "x_test": x[n_train:], "y_test": y[n_train:].astype("int32"), "classes": classes}


def build_cnn() -> Any:
    import keras

    def block(h: Any, filters: int, stride: int, name: str) -> Any:
        shortcut = h
        h = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                                name=f"{name}_c1")(h)
        h = keras.layers.BatchNormalization(name=f"{name}_bn1")(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_c2")(h)
        h = keras.layers.BatchNormalization(name=f"{name}_bn2")(h)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                           name=f"{name}_proj")(shortcut)
            shortcut = keras.layers.BatchNormalization(name=f"{name}_bnp")(shortcut)
        return keras.layers.ReLU()(keras.layers.Add()([h, shortcut]))

    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = keras.layers.ReLU()(h)
    h = block(h, 32, 1, "b1")
    h = block(h, 64, 2, "b2")
    h = block(h, 64, 1, "b3")
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="resnet_digits")


def build_transformer(steps: int = 32, features: int = 16, classes: int = 8,
                      dim: int = 64, heads: int = 4, blocks: int = 2) -> Any:
    import keras

    class Positions(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.table = self.add_weight(shape=(shape[1], shape[2]), name="table",
                                         initializer="random_normal")

        def call(self, x: Any) -> Any:
            return x + self.table

    inputs = keras.Input((steps, features), name="sequence")
    h = keras.layers.Dense(dim, name="embed")(inputs)
    h = Positions(name="positions")(h)
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"mha{i}")(h, h)
        h = keras.layers.LayerNormalization(name=f"ln{i}a")(h + a)
        f = keras.layers.Dense(dim * 4, activation="gelu", name=f"ff{i}a")(h)
        f = keras.layers.Dense(dim, name=f"ff{i}b")(f)
        h = keras.layers.LayerNormalization(name=f"ln{i}b")(h + f)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="encoder")


def build_lstm(steps: int = 20, features: int = 8, classes: int = 8, units: int = 64) -> Any:
    import keras

    inputs = keras.Input((steps, features), name="sequence")
    h = keras.layers.LSTM(units, name="lstm")(inputs)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, outputs, name="lstm_classifier")


def make(name: str) -> tuple[Any, dict[str, Any]]:
    """Build ``name``, train it briefly (seeded); return (model, data with its accuracy)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    if name == "cnn":
        data, model = digits_data(), build_cnn()
    elif name == "transformer":
        data, model = sequence_data(32, 16, 8, seed=1), build_transformer()
    else:
        data, model = sequence_data(20, 8, 8, seed=2), build_lstm()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    model.fit(data["x_train"], data["y_train"], epochs=EPOCHS[name], batch_size=32, verbose=0)
    data["train_s"] = time.perf_counter() - start
    logits = keras.ops.convert_to_numpy(model(data["x_test"], training=False))
    data["logits"] = logits
    data["accuracy"] = float(np.mean(logits.argmax(axis=1) == data["y_test"]))
    return model, data


# -- measuring ----------------------------------------------------------------------------


def candidate_formats(backend: str, wanted: list[str] | None) -> list[str]:
    """The formats measured: those that quantize (``supported_modes``), reachable from
    ``backend`` with a ``kexport.load`` runtime; ``wanted`` narrows them."""
    from kexport import routing
    from kexport.artifact.quantization import supported_modes
    from kexport.runtime import runtime_formats

    out = []
    for name in routing.FORMATS:
        if wanted is not None and name not in wanted:
            continue
        if not supported_modes(name) and wanted is None:
            continue
        if name in runtime_formats() and any(r.available for r in routing.routes(backend, name)):
            out.append(name)
    return out


def error_text(error: BaseException) -> str:
    from kexport.errors import KexportError

    first = (str(error).strip().splitlines() or [""])[0]
    kind = "typed error" if isinstance(error, KexportError) else "FAIL"
    return f"{kind}: {type(error).__name__}: {first}"


def export_cells(name: str, model: Any, data: dict[str, Any], formats: list[str],
                 folder: str) -> list[dict[str, Any]]:
    """Export the float artifact and one per mode for every format; time each export."""
    import kexport
    from kexport import routing
    from kexport.artifact.quantization import CALIBRATED, MODES, precision_of

    calibration = [data["x_train"][i:i + CALIBRATION_BATCH]
                   for i in range(0, CALIBRATION_ROWS, CALIBRATION_BATCH)]
    rows = []
    for format in formats:
        for mode in (None, *MODES):
            tag = mode or "float"
            path = os.path.join(folder, f"{name}-{tag}{routing.FORMATS[format].suffix}")
            row: dict[str, Any] = {"model": name, "format": format, "mode": mode,
                                   "precision": precision_of(mode), "path": path}
            kwargs: dict[str, Any] = {}
            if mode is not None:
                kwargs["quantization"] = mode
                if mode in CALIBRATED:
                    kwargs["calibration_data"] = calibration
            print(f"  export {name} -> {format} {tag}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                kexport.export_model(model, path, format=format, verbose=False, **kwargs)
            except Exception as e:  # recorded in the table, typed or not
                row.update(status="refused" if "typed error" in error_text(e) else "failed",
                           error=error_text(e))
            else:
                row.update(status="ok", export_s=time.perf_counter() - start)
            rows.append(row)
    return rows


def measure_in_child(rows: list[dict[str, Any]], x: Any, reps: dict[str, int],
                     folder: str) -> None:
    """Open the written artifacts of one model in a fresh process; fill size, latency,
    precision and the held-out outputs (as ``row["outputs"]``) into ``rows``."""
    import numpy as np

    todo = [r for r in rows if r.get("status") == "ok"]
    if not todo:
        return
    spec = {"artifacts": [{"key": i, "path": r["path"], "group": r["format"]}
                          for i, r in enumerate(todo)],
            "base": {r["format"]: i for i, r in enumerate(todo) if r.get("mode") is None},
            "x": os.path.join(folder, "x.npy"), "out": os.path.join(folder, "outputs.npz"),
            "reps": reps}
    np.save(spec["x"], x)
    spec_path = os.path.join(folder, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", spec_path],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        for r in todo:
            r.update(status="failed", error="FAIL: runtime process: "
                     + (proc.stderr.strip().splitlines() or ["no output"])[-1])
        return
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    outputs = np.load(spec["out"])
    for i, r in enumerate(todo):
        got = found[str(i)]
        if "error" in got:
            r.update(status="failed", error=got["error"])
            continue
        r.update({k: v for k, v in got.items() if k != "key"})
        r["outputs"] = outputs[str(i)]


def child(spec_path: str) -> int:
    """The fresh runtime process: ``kexport.load`` each artifact (no Keras here)."""
    import numpy as np

    import kexport
    from kexport.artifact.quantization import read_record

    with open(spec_path) as f:
        spec = json.load(f)
    x = np.load(spec["x"])
    reps = spec["reps"]
    found: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Any] = {}
    loaded = {}
    for a in spec["artifacts"]:
        key = str(a["key"])
        try:
            artifact = kexport.load(a["path"])
            name = artifact.endpoints[artifact.default_endpoint].output_names[0]
            outputs[key] = np.asarray(artifact(x)[name])
            record = read_record(artifact.metadata)
            found[key] = {"size": artifact.size, "runs_in": artifact.precision,
                          "recorded": record}
            if record is not None:
                found[key]["precision"] = record.get("precision")
            loaded[key] = artifact
        except Exception as e:
            found[key] = {"error": f"FAIL: {type(e).__name__}: "
                                   f"{(str(e).splitlines() or [''])[0]}"}
    # One call of each artifact of a group (one model and format) in turn, the float
    # artifact first: a busy neighbour on the shared cores slows neighbouring calls
    # alike, so the speed-up is the median of the paired ratios (float call / this call).
    for batch in BATCHES:
        feed = np.ascontiguousarray(x[:batch])
        groups: dict[str, list[str]] = {}
        for a in spec["artifacts"]:
            if str(a["key"]) in loaded:
                groups.setdefault(a["group"], []).append(str(a["key"]))
        for group, keys in groups.items():
            times: dict[str, list[float]] = {k: [] for k in keys}
            for k in keys:
                loaded[k](feed)       # warm-up
            for _ in range(reps[f"b{batch}"]):
                for k in keys:
                    fn = loaded[k]
                    start = time.perf_counter()
                    fn(feed)
                    times[k].append(time.perf_counter() - start)
            base = str(spec["base"][group]) if group in spec["base"] else None
            for k in keys:
                found[k][f"p50_b{batch}_ms"] = float(np.median(times[k]) * 1000)
                if base in times and k != base:
                    found[k][f"paired_speedup_b{batch}"] = float(
                        np.median(np.asarray(times[base]) / np.asarray(times[k])))
    np.savez(spec["out"], **outputs)
    print(json.dumps(found))
    return 0


def judge_outputs(rows: list[dict[str, Any]], data: dict[str, Any]) -> None:
    """Top-1 agreement and SQNR of every measured artifact against the float Keras model."""
    from kexport.check.compare import quality

    for r in rows:
        out = r.pop("outputs", None)
        if out is None:
            continue
        q = quality(data["logits"], out, scores=True)
        if q is None:
            r.update(status="failed", error="FAIL: outputs not comparable with the model's")
            continue
        r.update(top1=q.top1, sqnr_db=q.sqnr_db, cosine_min=q.cosine_min,
                 accuracy=float((out.argmax(axis=1) == data["y_test"]).mean()))


def run(models: list[str], wanted_formats: list[str] | None, quick: bool) -> dict[str, Any]:
    import keras

    import kexport
    from kexport.artifact.quantization import MODES, supported_modes

    backend = keras.backend.backend()
    formats = candidate_formats(backend, wanted_formats)
    reps = {"b1": 60, "b32": 20} if quick else {"b1": 300, "b32": 80}
    result: dict[str, Any] = {
        "backend": backend, "quick": quick, "formats": formats, "modes": list(MODES),
        "supported_modes": {f: list(supported_modes(f)) for f in formats},
        "kexport": kexport.__version__, "cpus": os.cpu_count(), "models": {}, "rows": []}
    print(f"backend {backend}; formats {formats}; modes {list(MODES)}", file=sys.stderr)
    for name in models:
        model, data = make(name)
        result["models"][name] = {"accuracy": data["accuracy"], "train_s": data["train_s"],
                                  "params": int(model.count_params()),
                                  "held_out": len(data["y_test"])}
        print(f"{name}: {model.count_params()} params, held-out accuracy "
              f"{data['accuracy']:.4f}, trained in {data['train_s']:.1f}s", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix=f"kexport-qbench-{name}-") as folder:
            rows = export_cells(name, model, data, formats, folder)
            measure_in_child(rows, data["x_test"], reps, folder)
        judge_outputs(rows, data)
        for r in rows:
            r.pop("path", None)
        result["rows"] += rows
    derive(result["rows"])
    result["verdicts"] = verdicts(result["rows"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--formats", default=None,
                        help="comma-separated formats (default: every format that quantizes)")
    parser.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--from", dest="source", default=None,
                        help="render a result JSON written before (no measuring)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.source:
        with open(args.source) as f:
            result = json.load(f)
    else:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        models = [m for m in args.models.split(",") if m]
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            parser.error(f"unknown models {unknown}; expected some of {list(MODELS)}")
        formats = args.formats.split(",") if args.formats else None
        start = time.perf_counter()
        result = run(models, formats, args.quick)
        result["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
            f.write("\n")
    print(render_markdown(result) if args.markdown else render_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the check before placement adds to an export (docs/verification.md, "What runs by default").

For each model and each format the current backend writes natively, the export time with
``verify=False`` (unchecked) and with the default (``verify=None``: the staged artifact run by
its own runtime in process and compared with the live model), interleaved, median of
``--repeats`` runs each. Models: a small MLP, and two zoo entries at their tiny configs
(MobileNetV3Small, a BERT backbone with real padding; see benchmarks/zoo.py).

Run: ``KERAS_BACKEND=tensorflow python benchmarks/check_cost.py [--repeats 3] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import keras
import zoo

import kexport

SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "openvino": ".xml",
          "torch": ".pt2"}


def _mlp() -> keras.Model:
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(256, "relu")(x)))


def _models() -> dict[str, keras.Model]:
    return {"mlp": _mlp(), "mobilenet_v3_small": zoo.build("mobilenet_v3_small").model,
            "bert": zoo.build("bert").model}


def _time(model: keras.Model, fmt: str, folder: str, verify: bool | None, i: int) -> float:
    path = os.path.join(folder, f"{fmt}_{verify}_{i}{SUFFIX[fmt]}")
    start = time.perf_counter()
    kexport.export_model(model, path, format=fmt, verbose=False, verify=verify)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    backend = keras.backend.backend()
    formats = sorted({r.format for r in kexport.routes(backend)
                      if r.kind == "native" and r.available})
    rows = []
    print(f"backend {backend}; median of {args.repeats} interleaved runs")
    print(f"{'model':20} {'format':15} {'unchecked s':>12} {'checked s':>10} {'added s':>8}")
    for name, model in _models().items():
        for fmt in formats:
            with tempfile.TemporaryDirectory() as folder:
                try:
                    _time(model, fmt, folder, False, -1)  # warm-up: tracing caches
                    plain, checked = [], []
                    for i in range(args.repeats):
                        plain.append(_time(model, fmt, folder, False, i))
                        checked.append(_time(model, fmt, folder, None, i))
                except Exception as e:  # a cell that does not export: say so, go on
                    print(f"{name:20} {fmt:15} {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                    continue
            a, b = statistics.median(plain), statistics.median(checked)
            rows.append({"model": name, "format": fmt, "backend": backend,
                         "unchecked_s": round(a, 3), "checked_s": round(b, 3),
                         "added_s": round(b - a, 3)})
            print(f"{name:20} {fmt:15} {a:12.2f} {b:10.2f} {b - a:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""kexport ONNX export vs Keras's own ``Model.export(format="onnx")``.

For a small zoo (MLP, ResNet-style CNN, LSTM, Transformer encoder) on one
backend (``KERAS_BACKEND``, or every backend with ``--all-backends``) prints:
export time (median of ``--export-reps`` rounds, a freshly built model each,
the two exporters alternating), file size and stored weight bytes vs raw weight bytes (plus the
graph's own bytes), ONNX Runtime p50 latency (one thread, the two artifacts' runs interleaved) at
batch 1 and 32,
max abs error against the live model, and a verdict against the targets of
issue #3. The JAX baseline needs ``pip install jax2onnx`` (Keras's JAX route).

    KERAS_BACKEND=torch python benchmarks/onnx_vs_keras.py --quick
    python benchmarks/onnx_vs_keras.py --all-backends

Keras's exporter is called here only as the baseline; kexport never uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def zoo(quick):
    import keras

    s = 4 if quick else 1

    def mlp():
        i = keras.Input((1024 // s,), name="x")
        x = i
        for _ in range(4):
            x = keras.layers.Dense(1024 // s, activation="relu")(x)
        return keras.Model(i, keras.layers.Dense(10, name="y")(x)), (1024 // s,)

    def cnn():
        i = keras.Input((64, 64, 3), name="image")
        x = keras.layers.Conv2D(64 // s, 3, padding="same", activation="relu")(i)
        for f in (64 // s, 128 // s, 256 // s):
            y = keras.layers.Conv2D(f, 3, padding="same")(x)
            y = keras.layers.BatchNormalization()(y)
            y = keras.layers.ReLU()(y)
            y = keras.layers.Conv2D(f, 3, padding="same")(y)
            y = keras.layers.BatchNormalization()(y)
            sc = keras.layers.Conv2D(f, 1)(x)
            x = keras.layers.ReLU()(y + sc)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(i, keras.layers.Dense(10, name="y")(x)), (64, 64, 3)

    def lstm():
        i = keras.Input((32, 64), name="seq")
        x = keras.layers.LSTM(256 // s, return_sequences=True)(i)
        x = keras.layers.LSTM(256 // s)(x)
        return keras.Model(i, keras.layers.Dense(10, name="y")(x)), (32, 64)

    def transformer():
        d, ff, blocks = (512 // s, 2048 // s, 3 if not quick else 2)
        i = keras.Input((32, d), name="tokens")
        x = i
        for _ in range(blocks):
            a = keras.layers.MultiHeadAttention(8, d // 8)(x, x)
            x = keras.layers.LayerNormalization()(x + a)
            f = keras.layers.Dense(ff, activation="gelu")(x)
            x = keras.layers.LayerNormalization()(x + keras.layers.Dense(d)(f))
        return keras.Model(i, keras.layers.Identity(name="y")(x)), (32, d)

    return {"mlp": mlp, "resnet_cnn": cnn, "lstm": lstm, "transformer": transformer}


def timed_export(tool, model, path):
    """Seconds ``tool`` ("kexport" or "keras", the baseline) takes to write ``path``."""
    import kexport

    t = time.perf_counter()
    if tool == "kexport":
        kexport.export_onnx(model, path, verbose=False)
    else:
        model.export(str(path), format="onnx", verbose=False)
    return time.perf_counter() - t


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _latencies(sessions, shape, batch, reps):
    """p50 ms per session, runs interleaved so machine noise hits all alike."""
    import numpy as np

    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype("float32")
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        s.run(None, feeds[k])
    times = {k: [] for k in sessions}
    for _ in range(reps):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def _size(path):
    """(bytes on disk, bytes of weights held as initializers/constants)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    p = Path(path)
    files = [p] + ([p.with_name(p.name + ".data")] if p.with_name(p.name + ".data").exists() else [])
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
    model = onnx.load(str(p))
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.type == onnx.AttributeProto.TENSOR:
                weights += int(np.prod(a.t.dims or [1])) * 4
    return sum(f.stat().st_size for f in files), weights


# Targets of issue #3: latency no worse than Keras's artifact, export time at
# most 1.2x Keras's, weights at most 1.02x the raw weight bytes (the graph's own
# bytes, shown as "graph KiB", come on top). Latency within 5% counts as equal
# (timer noise at sub-millisecond p50s).
def _verdict(ours, theirs, weights_ratio):
    parts = ["weights ok" if weights_ratio <= 1.02 else f"weights {weights_ratio:.3f}x"]
    if theirs is not None:
        export_ratio = ours[0] / theirs[0]
        parts.append(f"export {export_ratio:.2f}x" + (" ok" if export_ratio <= 1.2 else " MISS"))
        slow = [b for b, a, k in (("b1", ours[1], theirs[1]), ("b32", ours[2], theirs[2]))
                if a > 1.05 * k]
        parts.append("latency ok" if not slow else f"latency MISS ({', '.join(slow)})")
    return "; ".join(parts)


def run_backend(quick, reps, only, export_reps=3):
    import keras
    import numpy as np

    import kexport

    backend = keras.backend.backend()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="kexport-bench-"))
    # warm both exporters once so the first model does not pay imports
    warm = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    kexport.export_onnx(warm, tmp / "warm.onnx", verbose=False)
    with contextlib.suppress(Exception):  # failures are reported per model below
        warm.export(str(tmp / "warm_keras.onnx"), format="onnx", verbose=False)
    for name, build in zoo(quick).items():
        if only and name not in only:
            continue
        exported, failed, times = {}, {}, {"kexport": [], "keras": []}
        # Export time: the median of ``export_reps`` rounds, each on a freshly built
        # model (same seed, same weights: nothing cached for that model), the two
        # exporters alternating which goes first; this machine's timings swing.
        for rep in range(export_reps):
            keras.utils.set_random_seed(0)
            model, shape = build()
            x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
            ref = keras.ops.convert_to_numpy(model(x, training=False))  # Keras needs a call
            order = ("kexport", "keras") if rep % 2 == 0 else ("keras", "kexport")
            for tool in order:
                if tool in failed:
                    continue
                path = tmp / f"{name}_{tool}_{rep}.onnx"
                try:
                    times[tool].append(timed_export(tool, model, path))
                    exported[tool] = path
                except Exception as e:
                    failed[tool] = (f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
                                    if str(e) else type(e).__name__)
        exported = {t: (p, float(np.median(times[t]))) for t, p in exported.items()
                    if t not in failed}
        raw = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
        sessions, errors = {}, {}
        for tool, (path, _) in list(exported.items()):
            try:
                sessions[tool] = _session(path)
                out = sessions[tool].run(None, {sessions[tool].get_inputs()[0].name: x})[0]
                errors[tool] = float(np.abs(out - ref).max())
            except Exception as e:
                failed[tool] = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
                sessions.pop(tool, None)
        p1 = _latencies(sessions, shape, 1, reps) if sessions else {}
        p32 = _latencies(sessions, shape, 32, max(3, reps // 4)) if sessions else {}
        measured = {t: (exported[t][1], p1[t], p32[t]) for t in sessions}
        ours = _size(exported["kexport"][0])[1] / raw if "kexport" in sessions else float("nan")
        for tool in ("kexport", "keras"):
            verdict = "-"
            if tool == "keras" and "kexport" in measured:
                verdict = _verdict(measured["kexport"], measured.get("keras"), ours)
                if "keras" not in measured:
                    verdict = "kexport only; " + verdict
            if tool in failed:
                rows.append((backend, name, tool, "fail", "-", "-", "-", f"{raw / 2**20:.1f}",
                             "-", "-", failed[tool], verdict))
                continue
            size, weights = _size(exported[tool][0])
            rows.append((backend, name, tool, f"{exported[tool][1]:.2f}", f"{size / raw:.3f}",
                         f"{weights / raw:.3f}", f"{(size - weights) / 1024:.0f}",
                         f"{raw / 2**20:.1f}", f"{p1[tool]:.2f}", f"{p32[tool]:.2f}",
                         f"{errors[tool]:.1e}", verdict))
    head = ("backend", "model", "tool", "export s", "size/raw", "weights/raw", "graph KiB",
            "raw MiB", "p50 b1 ms", "p50 b32 ms", "max abs err", "targets (kexport vs keras)")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, few repetitions")
    ap.add_argument("--all-backends", action="store_true", help="run tensorflow, jax and torch")
    ap.add_argument("--reps", type=int, default=None, help="latency repetitions (batch 1)")
    ap.add_argument("--models", nargs="*", default=None, help="subset of the zoo")
    ap.add_argument("--export-reps", type=int, default=3,
                    help="export rounds per model, fresh model each (median reported)")
    args = ap.parse_args()
    reps = args.reps or (10 if args.quick else 50)
    if args.all_backends:
        for b in ("tensorflow", "jax", "torch"):
            cmd = [sys.executable, __file__, "--reps", str(reps),
                   "--export-reps", str(args.export_reps)]
            cmd += ["--quick"] if args.quick else []
            cmd += ["--models", *args.models] if args.models else []
            subprocess.run(cmd, env={**os.environ, "KERAS_BACKEND": b,
                                     "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)
        return
    run_backend(args.quick, reps, args.models, args.export_reps)


if __name__ == "__main__":
    main()

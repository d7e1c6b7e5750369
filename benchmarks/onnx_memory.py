"""Peak memory of an ONNX export, relative to the model's weight bytes.

For an MLP of about ``--mib`` MiB of float32 weights on each backend (one
process per backend) prints: weight MiB, resident memory before the export,
the peak during it (this process and any re-host worker it started, each
measured with Linux's VmHWM after resetting it through
``/proc/<pid>/clear_refs``), the extra peak as a multiple of the weights,
export seconds, whether external data was written and the route taken.

    python benchmarks/onnx_memory.py --mib 512
    KERAS_BACKEND=torch python benchmarks/onnx_memory.py --mib 2300 --threshold-default

Target (issue #3): the extra peak stays near the size of the weights, not a
multiple of it. Keras's own exporter is measured beside it with ``--keras``.
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

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d.name))
            out.extend(_children(int(d.name)))
    return out


def _status(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak(pid):
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def run(mib, tool, threshold_default):
    import keras
    import numpy as np

    import kexport

    backend = keras.backend.backend()
    width = 2048
    layers = max(1, int(mib * 2**20 / 4 / (width * width)))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,), name="x")
    x = inputs
    for _ in range(layers):
        x = keras.layers.Dense(width, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(8, name="y")(x))
    model(np.zeros((1, width), "float32"))  # Keras's exporter refuses never-called models
    raw = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    tmp = Path(tempfile.mkdtemp(prefix="kexport-mem-"))
    warm = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    warm(np.zeros((1, 4), "float32"))
    if tool == "kexport":
        kexport.export_onnx(warm, tmp / "warm.onnx", verbose=False)
    else:
        warm.export(str(tmp / "warm.onnx"), format="onnx", verbose=False)
    me = os.getpid()
    pids = [me, *_children(me)]
    before = {p: _status(p, "VmRSS") for p in pids}
    for p in pids:
        _reset_peak(p)
    path = tmp / "model.onnx"
    # weights go to external data (as they do above 2 GiB) unless told otherwise
    kwargs = {} if threshold_default else {"external_data_threshold": 0}
    t = time.perf_counter()
    if tool == "kexport":
        kexport.export_onnx(model, path, verbose=False, **kwargs)
    else:
        model.export(str(path), format="onnx", verbose=False)
    seconds = time.perf_counter() - t
    pids = [me, *_children(me)]
    extra = sum(max(0, _status(p, "VmHWM") - before.get(p, 0)) for p in pids)
    external = path.with_name(path.name + ".data").exists()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    print(f"{backend:10} | {tool:7} | {raw / 2**20:8.0f} | {before[me] / 2**20:10.0f} | "
          f"{extra / 2**20:13.0f} | {extra / raw:11.2f} | {seconds:8.1f} | {external!s:13} | "
          f"{meta.get('kexport.route', '-')}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=256, help="weight MiB of the model")
    ap.add_argument("--keras", action="store_true", help="also measure Keras's exporter")
    ap.add_argument("--threshold-default", action="store_true",
                    help="keep the default external-data threshold (2 GiB); by default "
                         "the weights go to external data as they do above 2 GiB")
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tool:
        run(args.mib, args.tool, args.threshold_default)
        return
    print("backend    | tool    | weight MiB | RSS before MiB | extra peak MiB | peak/weights"
          " | export s | external data | route")
    backends = [os.environ["KERAS_BACKEND"]] if "KERAS_BACKEND" in os.environ else [
        "tensorflow", "jax", "torch"]
    for b in backends:
        for tool in ("kexport", "keras") if args.keras else ("kexport",):
            cmd = [sys.executable, __file__, "--mib", str(args.mib), "--tool", tool]
            cmd += ["--threshold-default"] if args.threshold_default else []
            subprocess.run(cmd, env={**os.environ, "KERAS_BACKEND": b,
                                     "TF_CPP_MIN_LOG_LEVEL": "3"}, check=False)


if __name__ == "__main__":
    main()

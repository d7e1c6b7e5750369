"""Where kexport's ONNX export time goes, step by step, beside Keras's whole export.

For the zoo of ``onnx_vs_keras.py`` on one backend (``KERAS_BACKEND``) prints,
per model, the median over ``--reps`` rounds (a freshly built model each, the
two exporters alternating) of:

- ``capture``: tracing and converting (tf2onnx, jax2onnx, traced torch.onnx,
  torch.export), every strategy tried included;
- ``finish``: kexport's names, graph optimiser (issue #3 item 10), opset and
  metadata;
- ``checker``: ``onnx.checker.check_model(full_check=True)`` (item 4);
- ``ort check``: the fast routes' check: ONNX Runtime on the finished graph
  against the live model (the wait for the live reference included; it is
  computed in a thread while ``finish`` runs);
- ``re-host``: the whole re-host route (worker process, conversion, check);
- ``rest``: serialization, writing, everything else;

and Keras's own ``Model.export(format="onnx")`` time. The steps are timed by
wrapping kexport's internal functions, so this script follows their names.

    KERAS_BACKEND=jax python benchmarks/onnx_export_steps.py --models mlp transformer
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from onnx_vs_keras import timed_export, zoo

STEPS = ("capture", "finish", "checker", "ort check", "re-host")


def _instrument(spent):
    from kexport.formats.onnx import _accept, _convert, _graph, _write
    from kexport.routing import single

    def timed(step, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[step] = spent.get(step, 0.0) + time.perf_counter() - t
        return wrapper

    # every strategy of every backend is called through Strategy.__call__
    _graph.Strategy.__call__ = timed("capture", _graph.Strategy.__call__)
    _convert.finish = timed("finish", _convert.finish)
    _write._check = timed("checker", _write._check)
    _accept._compare = timed("ort check", _accept._compare)
    # every re-host route calls routing.single.rehost_export
    single.rehost_export = timed("re-host", single.rehost_export)


def main():
    import keras
    import numpy as np

    import kexport

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="subset of the zoo")
    ap.add_argument("--reps", type=int, default=3, help="rounds per model (median reported)")
    args = ap.parse_args()
    spent = {}
    _instrument(spent)
    tmp = Path(tempfile.mkdtemp(prefix="kexport-steps-"))
    warm = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    kexport.export_onnx(warm, tmp / "warm.onnx", verbose=False)
    with contextlib.suppress(Exception):
        warm.export(str(tmp / "warm_keras.onnx"), format="onnx", verbose=False)
    head = ("backend", "model", "kexport s", *STEPS, "rest", "keras s", "ratio")
    rows = []
    for name, build in zoo(False).items():
        if args.models and name not in args.models:
            continue
        ours, theirs, steps = [], [], {s: [] for s in STEPS}
        for rep in range(args.reps):
            keras.utils.set_random_seed(0)
            model, shape = build()
            model(np.zeros((2, *shape), "float32"), training=False)  # Keras needs a call
            for tool in (("kexport", "keras") if rep % 2 == 0 else ("keras", "kexport")):
                path = tmp / f"{name}_{tool}_{rep}.onnx"
                spent.clear()
                try:
                    took = timed_export(tool, model, path)
                except Exception:
                    continue
                if tool == "keras":
                    theirs.append(took)
                    continue
                ours.append(took)
                for s in STEPS:
                    steps[s].append(spent.get(s, 0.0))
        if not ours:
            continue
        med = {s: float(np.median(v)) for s, v in steps.items()}
        total = float(np.median(ours))
        keras_s = float(np.median(theirs)) if theirs else None
        rows.append((keras.backend.backend(), name, f"{total:.2f}",
                     *(f"{med[s]:.2f}" for s in STEPS),
                     f"{max(0.0, total - sum(med.values())):.2f}",
                     f"{keras_s:.2f}" if keras_s else "fails",
                     f"{total / keras_s:.1f}x" if keras_s else "-"))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)))


if __name__ == "__main__":
    main()

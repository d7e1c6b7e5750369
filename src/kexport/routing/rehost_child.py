"""The child side of re-hosting: a persistent worker per target backend.

Started by :mod:`kexport.rehost.worker` as
``python -m kexport.routing.rehost_child`` with ``KERAS_BACKEND`` set to the
target backend (never through ``multiprocessing``, so user scripts without a
``__main__`` guard are safe), and reused for every re-host onto that backend
by the same parent process.

Protocol: one JSON request per stdin line (``{"work": <job folder>,
"sys_path": [...]}``), one JSON reply per stdout line. For each request the
worker reads ``job.json`` from the job folder, rebuilds the models, exports,
runs the artifact on the sample inputs with the format's own runtime
(:func:`kexport.load`, so a new format needs nothing here) and writes
``result.json`` and ``outputs.npz`` there. Every failure is reported with the
stage it happened in; a failed job leaves no state behind for the next one
(``keras.backend.clear_session()`` before and after every job).

It lives in ``routing/`` because it writes the artifact with the host's own
routes (the route table, ``ExportArchive``); the rest of the child's work
(rebuild, run, layer calls) is :mod:`kexport.rehost.child`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from kexport.context import ExportContext, Printer
from kexport.generation.export import export_generative
from kexport.rehost.child import (
    carried_calibration,
    endpoint_fn,
    layer_calls,
    parent_policy,
    rebuild,
    run_artifact,
)
from kexport.rehost.dtypes import with_output_dtypes
from kexport.rehost.generative import MODE as GENERATE
from kexport.rehost.job import Job
from kexport.routing.archive import ExportArchive
from kexport.routing.single import export
from kexport.routing.table import usable

__all__ = ["main", "run_job", "serve"]


def _export(models: list[Any], ordered: list[list[Any]], job: Job,
            work: Path) -> None:
    import keras

    out = job.output
    # the job folder is the child's own; the parent places the artifact with its overwrite
    context = ExportContext(overwrite=True, samples=parent_policy(work, job),
                            source_backend=job.source_backend,
                            printer=Printer(on=job.verbose), source_dtypes=job.output_dtypes)
    if job.mode == GENERATE:  # the parent checks the tokens against the live model
        export_generative(models[0], out, format=job.format, verbose=False, overwrite=True,
                          check=False, **job.kwargs)
        return
    if job.mode == "model":
        (endpoint,) = job.endpoints
        # the host backend's own routes, as export_model would pick them
        found = usable(keras.backend.backend(), job.format, models[0])
        export(found, models[0], out, context=context, input_signature=list(endpoint.signature), **job.kwargs)
        return
    archive = ExportArchive()
    for m in models:
        archive.track(m)
    for ep in job.endpoints:
        fn = with_output_dtypes(endpoint_fn(models[ep.model], ep.method, ep.kwargs),
                                job.output_dtypes.get(ep.name))
        archive.add_endpoint(ep.name, fn, list(ep.signature))
    for name, refs in job.collections.items():
        archive.add_variable_collection(name, [ordered[i][j] for i, j in refs])
    options = dict(job.kwargs)
    if job.calibration:
        options["calibration_data"] = carried_calibration(work, dict(job.calibration))
    archive.write_with(context, out, format=job.format, **options)


def run_job(work: Path) -> dict[str, Any]:
    """Run the job in folder ``work``; write and return its ``result.json`` content."""
    import keras
    import numpy as np

    job = Job.from_json(json.loads((work / "job.json").read_text()))
    stage = "rebuild"
    buffer = io.StringIO()
    keras.backend.clear_session()
    try:
        with contextlib.redirect_stdout(buffer):
            models, ordered = rebuild(work, job)
            extra: dict[str, Any] = {}
            if job.layers is not None:  # a diagnosis: the rebuilt model's layers, no export
                stage = "run"
                outputs, extra["calls"] = layer_calls(work, job, models)
            else:
                stage = "export"
                _export(models, ordered, job, work)
                stage = "run"
                outputs = run_artifact(work, job)
        np.savez(work / ("layers.npz" if job.layers is not None else "outputs.npz"), **outputs)
        result = {"ok": True, "stdout": buffer.getvalue(), **extra}
    except Exception as e:
        result = {"ok": False, "stage": stage, "type": type(e).__name__, "message": str(e),
                  "traceback": traceback.format_exc()[-4000:]}
    finally:
        models = ordered = outputs = None  # drop this job's objects before the next one
        keras.backend.clear_session()
        gc.collect()
    (work / "result.json").write_text(json.dumps(result))
    return result


def serve() -> None:  # pragma: no cover - runs in the child process
    """Worker loop: one request per stdin line, one reply per stdout line."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to the log, never into the protocol
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
    for line in sys.stdin:
        request = json.loads(line)
        for entry in request.get("sys_path", []):
            if entry not in sys.path:
                sys.path.append(entry)
        importlib.invalidate_caches()
        try:
            result = run_job(Path(request["work"]))
            reply = {"ok": bool(result.get("ok"))}
        except BaseException as e:  # a broken job folder must not stop the worker
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


def main(argv: list[str] | None = None) -> int:
    """Serve requests on stdin (no argument), or run one job folder ``argv[0]``."""
    args = argv if argv is not None else sys.argv[1:]
    if args:
        run_job(Path(args[0]))
    else:
        serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

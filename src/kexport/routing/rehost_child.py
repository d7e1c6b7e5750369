"""The child side of re-hosting: a persistent worker per target backend.

Started by :mod:`kexport.routing.rehost.parent` as
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
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kexport.capture.source import rehosted_from
from kexport.check.calibration import EndpointBatches
from kexport.check.probe import recorded_arrays
from kexport.check.samples import SamplePolicy, using
from kexport.routing.archive import ExportArchive
from kexport.routing.rehost.recipe import assign_values, rebuild_model
from kexport.routing.rehost.state import restore_layer_state
from kexport.routing.single import export
from kexport.routing.table import usable
from kexport.runtime import load
from kexport.signature import flat_names, pack_as, specs_from_json

__all__ = ["main", "run_job", "serve"]


def _rebuild_one(work: Path, name: str, imports: list[str]) -> Any:
    """One model, from its config (``<name>.json``) or else by value (``<name>.pkl``)."""
    import keras

    failures = []
    config_file, value_file = work / f"{name}.json", work / f"{name}.pkl"
    if config_file.exists():
        try:
            for module in imports:
                importlib.import_module(module)
            config = json.loads(config_file.read_text())
            # The config was produced by kexport from a live in-process model, not
            # read from an untrusted file, so Lambda layers may be rebuilt.
            return keras.saving.deserialize_keras_object(config, safe_mode=False)
        except Exception as e:
            failures.append(f"from its config: {type(e).__name__}: {e}")
    if value_file.exists():
        try:
            # kexport's own pickle, written by the parent into this job's
            # private (0700) folder: see kexport.routing.rehost.recipe.
            return rebuild_model(value_file.read_bytes())
        except Exception as e:
            failures.append(f"by value: {type(e).__name__}: {e}")
    raise ValueError("; ".join(failures) or f"no description of {name} was written")


def _rebuild(work: Path, job: dict[str, Any]) -> tuple[list[Any], list[list[Any]]]:
    """The models, and each model's variables in the source model's order."""
    import numpy as np

    models, ordered = [], []
    for name in job["models"]:
        model = _rebuild_one(work, name, job["imports"])
        with np.load(work / f"{name}.npz") as data:
            values = [data[f"v{j}"] for j in range(len(data.files))]
        paths = json.loads((work / f"{name}.paths.json").read_text())
        ordered.append(assign_values(model, paths, values))
        _finalize_state(model)
        # then the tensors and arrays layers hold outside variables, as the source has them
        with np.load(work / f"{name}.state.npz") as data:
            arrays = {k: data[k] for k in data.files}
        restore_layer_state(model, json.loads((work / f"{name}.state.json").read_text()),
                            arrays)
        models.append(model)
    return models, ordered


def _finalize_state(model: Any) -> None:
    """Let layers rebuild what they derive from their variables.

    Variables are assigned directly, so layers that cache tensors computed
    from them (an adapted ``Normalization`` keeps ``mean``/``variance`` built
    from ``adapt_mean``/``adapt_variance``; lookup layers their tables) must
    recompute them, as Keras does after ``adapt``.
    """
    for layer in model._flatten_layers(include_self=True):
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize):
            finalize()


def _endpoint_fn(model: Any, method: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The endpoint again; still describable as data (a host whose capture
    re-hosts or records endpoints, e.g. PyTorch, describes it once more)."""
    bound = getattr(model, method)
    return functools.partial(bound, **kwargs) if kwargs else bound


def _carried_calibration(work: Path, layout: dict[str, Any]) -> EndpointBatches:
    """The archive's calibration batches, as the parent read them (``carried.npz``)."""
    import numpy as np

    batches = EndpointBatches()
    with np.load(work / "carried.npz", allow_pickle=False) as data:
        for name, entry in layout.items():
            e = entry["index"]
            batches[name] = [{n: np.array(data[f"cal__{e}__{b}__{i}"])
                              for i, n in enumerate(entry["names"])}
                             for b in range(entry["batches"])]
    return batches


def _export(models: list[Any], ordered: list[list[Any]], job: dict[str, Any],
            work: Path) -> None:
    import keras

    out = job["output"]
    with rehosted_from(job["source_backend"]):
        if job["mode"] == "model":
            (endpoint,) = job["endpoints"]
            # the host backend's own routes, as export_model would pick them
            found = usable(keras.backend.backend(), job["format"], models[0])
            export(found, models[0], out, verbose=job["verbose"],
                   input_signature=specs_from_json(endpoint["signature"]), **job["kwargs"])
            return
        archive = ExportArchive()
        for m in models:
            archive.track(m)
        for ep in job["endpoints"]:
            fn = _endpoint_fn(models[ep["model"]], ep["method"], ep["kwargs"])
            archive.add_endpoint(ep["name"], fn, specs_from_json(ep["signature"]))
        for name, refs in job["collections"].items():
            archive.add_variable_collection(name, [ordered[i][j] for i, j in refs])
        options = dict(job.get("kwargs", {}))
        if job.get("calibration"):
            options["calibration_data"] = _carried_calibration(work, job["calibration"])
        archive.write_out(out, verbose=job["verbose"], format=job["format"], **options)


def _run(work: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run the artifact on the sample inputs with its own runtime (:func:`kexport.runtime.load`)."""
    import numpy as np

    artifact = load(job["output"], format=job["format"])
    outputs: dict[str, Any] = {}
    with np.load(work / "inputs.npz") as data:
        for ep in job["endpoints"]:
            ours = flat_names(specs_from_json(ep["signature"]))
            info = artifact.endpoints.get(ep["name"])
            theirs = info.input_names if info is not None else []
            for case in job["cases"][ep["name"]]:
                key = case["key"]
                flat = [data[f"in__{key}__{i}"] for i in range(case["inputs"])]
                # By name when the artifact kept the Keras input names, else in order.
                feeds: Any = (dict(zip(ours, flat, strict=True))
                              if sorted(ours) == sorted(theirs) else flat)
                result = artifact.run(ep["name"], feeds)
                for i, y in enumerate(result.values()):
                    outputs[f"out__{key}__{i}"] = np.asarray(y)
    return outputs


def _layers(work: Path, job: dict[str, Any], models: list[Any]
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rebuilt model's sublayer calls on one case's inputs, run eagerly (no
    export): the parent matches them with the live model's to name the first
    layer the host backend computes differently
    (:func:`kexport.check.localization.first_divergence`)."""
    import keras
    import numpy as np

    asked = job["layers"]
    (ep,) = [e for e in job["endpoints"] if e["name"] == asked["endpoint"]]
    with np.load(work / "inputs.npz") as data:
        flat = [data[f"in__{asked['key']}__{i}"] for i in range(asked["inputs"])]
    args = pack_as(specs_from_json(ep["signature"]),
                   [keras.ops.convert_to_tensor(x) for x in flat])
    model = models[ep["model"]]
    rows = recorded_arrays(model, _endpoint_fn(model, ep["method"], ep["kwargs"]), args)
    arrays = {f"{kind}__{n}__{i}": x for n, row in enumerate(rows)
              for kind in ("inputs", "outputs") for i, x in enumerate(row[kind])}
    return arrays, [{"path": r["path"], "class_name": r["class_name"],
                     "inputs": len(r["inputs"]), "outputs": len(r["outputs"])} for r in rows]


def _policy(work: Path, job: dict[str, Any]) -> SamplePolicy | None:
    """The parent's sample policy (and user sample data), for the export's own checks."""
    import dataclasses

    import numpy as np

    if "samples" not in job:
        return None
    policy = SamplePolicy.from_json(job["samples"])
    names = job.get("sample_data")
    if names is None:
        return policy
    with np.load(work / "sample_data.npz", allow_pickle=False) as data:
        arrays = {n: np.array(data[f"arr_{i}"]) for i, n in enumerate(names)}
    return dataclasses.replace(policy, data=arrays)


def run_job(work: Path) -> dict[str, Any]:
    """Run the job in folder ``work``; write and return its ``result.json`` content."""
    import keras
    import numpy as np

    job = json.loads((work / "job.json").read_text())
    stage = "rebuild"
    buffer = io.StringIO()
    keras.backend.clear_session()
    try:
        with contextlib.redirect_stdout(buffer):
            models, ordered = _rebuild(work, job)
            extra: dict[str, Any] = {}
            if "layers" in job:  # a diagnosis: the rebuilt model's layers, no export
                stage = "run"
                outputs, extra["calls"] = _layers(work, job, models)
            else:
                stage = "export"
                with using(_policy(work, job)):
                    _export(models, ordered, job, work)
                stage = "run"
                outputs = _run(work, job)
        np.savez(work / ("layers.npz" if "layers" in job else "outputs.npz"), **outputs)
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

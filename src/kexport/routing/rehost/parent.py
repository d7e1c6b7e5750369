"""Re-hosting: rebuild a model on another Keras backend in a child process.

Keras picks its backend once per process, so a route that needs another
backend (PyTorch -> SavedModel without ``torch_xla``, JAX -> a format only the
TensorFlow backend writes, ...) works in four steps:

1. *describe* (parent): every tracked model becomes data: its Keras config
   (``keras.saving.serialize_keras_object``) where every class is importable
   and configurable, the model by value (:mod:`kexport.routing.rehost.recipe`,
   for classes defined in a function or ``__main__`` and layers without a
   usable ``get_config``), and the paths and values of **all** its
   variables, seed-generator states and BatchNorm statistics included (a
   ``.keras`` file drops seed states), and every tensor or array a layer holds
   outside its variables (:mod:`kexport.routing.rehost.state`). Endpoints become :class:`EndpointRecipe`
   objects: which tracked model, which method, which constant keyword
   arguments (``training=False``), which input signature.
2. *rebuild and export* (child, ``KERAS_BACKEND=<target>``, clean
   environment, private temporary folder per job): the models are rebuilt
   from their configs (else by value), their variables assigned by path and
   their layers' other tensors set again by layer path, the endpoints re-created
   from the recipes and the artifact written with the target backend's native
   route. The child then opens the artifact with :func:`kexport.load` (the
   format's own runtime) and runs it on sample inputs. The child is one
   persistent worker per target backend (``python -m
   kexport.routing.rehost_child`` through :class:`subprocess.Popen`, never
   ``multiprocessing``), started on first use, restarted if it died, reused
   by later re-hosts of the same parent process (the backend import is paid
   once) and stopped at exit.
3. *verify* (parent): the child's outputs are compared with the live model's
   (the user's own endpoint functions) at the check's case sizes (batch 1
   and 3, :mod:`kexport.check`: the inputs, float32 tolerances and
   comparison every kexport check uses); a difference is a
   :class:`~kexport.errors.VerificationError` with a per-output report.
4. *place* (parent): only then is the artifact moved to ``filepath``
   atomically (an earlier artifact there is kept on any failure).

The public entry points are :func:`rehost_export` (one model, any format),
:class:`~kexport.routing.rehost.capture.RehostCapture` (an ``ExportArchive`` capture that records endpoints as
data and re-hosts at ``write_out``) and :func:`write_archive_rehosted` (any
capture's archive, for the formats the route tables re-host, e.g. ``.pt2`` from
TensorFlow/JAX archives; the TensorFlow and JAX captures record every
endpoint as data too, best-effort, with :func:`kexport.capture.endpoint.recipe_or_reason`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kexport._atomic import atomic_target
from kexport._dims import plan_signature
from kexport._inference import infer, inference_fn
from kexport.artifact import DEFAULT_ENDPOINT, SAVED_MODEL_MANIFEST, read_manifest
from kexport.capture.endpoint import EndpointRecipe, is_layer, not_described_error
from kexport.check.calibration import calibration_by_endpoint
from kexport.check.compare import Quality, compare, is_scores, judge, quality, tolerance_for
from kexport.check.live import flat_numpy
from kexport.check.localization import ENTERS, first_divergence
from kexport.check.padding import drop_padded, kept_positions, padding_masks
from kexport.check.probe import judged, recorded_arrays
from kexport.check.samples import CASE_SIZES, active_policy, sample_inputs
from kexport.check.tolerance import FLOAT32, thresholds_for
from kexport.check.worker import Worker
from kexport.errors import (
    CaptureError,
    KexportError,
    RouteRefused,
    SignatureError,
    SignatureTypeError,
    UnsupportedRouteError,
    VerificationError,
    WriteError,
    describe,
)
from kexport.routing.rehost.recipe import describe_model, variable_paths
from kexport.routing.rehost.state import layer_state
from kexport.signature import (
    Spec,
    flat_names,
    flatten,
    normalize_for_model,
    pack_as,
)

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "close_workers",
    "rehost_export",
    "rehost_problem",
    "write_archive_rehosted",
]

DEFAULT_ATOL, DEFAULT_RTOL = FLOAT32  # the check's float32 row (kexport.check.tolerance)
CHILD_TIMEOUT_S = 900


# -- can a model be re-hosted? ------------------------------------------------------------------
def _unimportable(model: Any) -> list[str]:
    """The custom classes of ``model`` that a new process cannot import by name."""
    out = []
    for layer in model._flatten_layers(include_self=True):
        cls = type(layer)
        if cls.__module__.split(".")[0] == "keras":
            continue
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            out.append(f"{cls.__module__}.{cls.__qualname__}")
    return out


def _config_json(model: Any) -> tuple[str | None, str]:
    """``model``'s Keras config as JSON, or ``None`` and why it cannot be the way there."""
    import keras

    local = _unimportable(model)
    if local:
        return None, f"class {local[0]} cannot be imported by name in another process"
    try:
        return json.dumps(keras.saving.serialize_keras_object(model)), ""
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def rehost_problem(model: Any) -> str:
    """Why ``model`` cannot be rebuilt in a child process, or ``""`` when it can.

    A model travels by its Keras config when every class is importable and
    configurable, otherwise by value (:mod:`kexport.routing.rehost.recipe`:
    classes pickled by value, layers by their state), so only a layer
    attribute that cannot be pickled (a lock, an open file, ...) stops it;
    the message names the layer and the attribute.
    """
    try:
        describe_model(model)
        return ""
    except UnsupportedRouteError as e:
        if _config_json(model)[0] is not None:
            return ""
        return str(e)


def _check_rehostable(models: list[Any], host: str) -> None:
    for m in models:
        problem = rehost_problem(m)
        if problem:
            raise UnsupportedRouteError(
                f"Cannot re-host model '{m.name}' onto the {host} backend: {problem}"
            )


# -- sample inputs and live outputs -----------------------------------------------------------
def _samples(specs: list[Spec], size: int, rng: Any, endpoint: str | None = None
             ) -> list[Any] | None:
    """Check inputs for ``specs`` (:mod:`kexport.check.samples`, the sample policy
    in force), or ``None`` for string inputs, which cannot be made up: such an
    endpoint is not compared."""
    try:
        return sample_inputs(specs, size, rng, endpoint=endpoint)
    except SignatureError:
        return None


def _all_variables(models: list[Any]) -> list[Any]:
    out: list[Any] = []
    for m in models:
        for v in m.variables:
            if all(v is not o for o in out):
                out.append(v)
    return out


@contextlib.contextmanager
def _state_kept(models: list[Any]) -> Any:
    """Run live calls without leaving a trace in the models' state."""
    import numpy as np

    variables = _all_variables(models)
    saved = [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in variables]
    try:
        yield
    finally:
        for v, value in zip(variables, saved, strict=False):
            v.assign(value)


def _same(a: list[Any], b: list[Any]) -> bool:
    import numpy as np

    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=False))


def _live_cases(recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
                models: list[Any],
                given: list[list[Any]] | Mapping[str, list[list[Any]]] | None = None,
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample inputs per endpoint and batch, and the live outputs for them.

    ``given`` replaces the random samples: one flat list of input arrays per
    batch (e.g. calibration data, on which a full-integer artifact must be
    accurate), or such lists by endpoint name (endpoints not named keep
    random samples). An endpoint whose live outputs differ between two identical
    calls (random layers in training mode) is marked ``deterministic=False``:
    only shapes and dtypes are compared for it.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(20240607)
    arrays: dict[str, Any] = {}
    cases: dict[str, Any] = {}
    for recipe, fn in recipes:
        entries = []
        flat_specs = flatten(recipe.signature)
        mine = given.get(recipe.name) if isinstance(given, Mapping) else given
        for b, case in enumerate(CASE_SIZES if mine is None else mine):
            flat = (_samples(flat_specs, case, rng, recipe.name) if mine is None
                    else [np.asarray(x) for x in case])
            if flat is None:
                entries = []
                break
            batch = case if mine is None else (
                int(np.shape(flat[0])[0]) if flat and np.ndim(flat[0]) else b + 1)
            args = pack_as(list(recipe.signature),
                           [keras.ops.convert_to_tensor(x) for x in flat])
            with _state_kept(models):
                first = flat_numpy(fn(*args))
                second = flat_numpy(fn(*args))
            key = f"{recipe.name}__b{b}"
            for i, x in enumerate(flat):
                arrays[f"in__{key}__{i}"] = x
            entries.append({"key": key, "batch": batch, "inputs": len(flat), "live": first,
                            "masks": padding_masks(dict(zip(flat_names(recipe.signature),
                                                            flat, strict=True))),
                            "deterministic": _same(first, second)})
        cases[recipe.name] = entries
    return arrays, cases


def _compare(cases: dict[str, Any], outputs: Mapping[str, Any], atol: float,
             rtol: float, quantized: str | None = None) -> list[dict[str, Any]]:
    """One row per endpoint and case; the numbers are :func:`kexport.check.compare.compare`'s.

    An endpoint that is not deterministic (``deterministic=False``) only has
    its output shapes compared. A ``quantized`` artifact's float outputs are
    judged by that mode's thresholds on their quality metrics pooled over the
    endpoint's cases (:func:`kexport.check.compare.judge`), not elementwise.
    """
    import numpy as np

    thresholds = thresholds_for(quantized)
    report = []
    for name, entries in cases.items():
        for entry in entries:
            live = entry["live"]
            prefix = f"out__{entry['key']}__"
            got = [np.asarray(outputs[f"{prefix}{i}"])
                   for i in range(sum(k.startswith(prefix) for k in outputs))]
            row: dict[str, Any] = {"endpoint": name, "batch": entry["batch"],
                                   "compared": "values" if entry["deterministic"] else "shapes",
                                   "outputs": []}
            ok = len(got) == len(live)
            for i, (x, y) in enumerate(zip(live, got, strict=False)):
                shapes = {"live_shape": list(x.shape), "artifact_shape": list(y.shape)}
                scores = is_scores(x)
                # outputs at padded positions are undefined (kexport.check.padding)
                x, y, padded = drop_padded(x, y, kept_positions(entry.get("masks", {}), None,
                                                                x.shape))
                err, _, close = compare(x, y, *tolerance_for(x, atol, rtol))
                out: dict[str, Any] = {"index": i, **shapes, "max_abs_error": err}
                if padded:
                    out["padded"] = padded
                if thresholds is not None and x.dtype.kind == "f" and entry["deterministic"]:
                    q = quality(x, y, scores)
                    close = q is not None  # judged pooled below
                    out["quality"] = q
                good = (shapes["live_shape"] == shapes["artifact_shape"]
                        and (close or not entry["deterministic"]))
                ok = ok and good
                out["ok"] = bool(good)
                row["outputs"].append(out)
            if len(got) != len(live):
                row["count"] = {"live": len(live), "artifact": len(got)}
            row["ok"] = bool(ok)
            report.append(row)
    if thresholds is not None:
        _judge_pooled(report, thresholds)
    return report


def _judge_pooled(report: list[dict[str, Any]], thresholds: Any) -> None:
    """Judge each endpoint's float outputs on their quality pooled over the cases;
    the rows of an output that misses the thresholds fail, saying why."""
    pooled: dict[tuple[str, int], list[Quality]] = {}
    for row in report:
        for out in row["outputs"]:
            if isinstance(out.get("quality"), Quality):
                pooled.setdefault((row["endpoint"], out["index"]), []).append(out["quality"])
    verdicts = {key: judge(Quality.pooled(parts), thresholds) for key, parts in pooled.items()}
    for row in report:
        for out in row["outputs"]:
            q = out.pop("quality", None)
            if q is None:
                continue
            out.update({k: v for k, v in q.metrics().items() if v is not None})
            failed = verdicts[(row["endpoint"], out["index"])]
            if failed:
                out["ok"] = row["ok"] = False
                out["failed"] = failed


# -- serialising models -------------------------------------------------------------------------
def _serialize(models: list[Any], host: str, work: Path) -> tuple[list[str], list[str]]:
    """Write each model's ways to the child and its variables; return file names and imports.

    Per model: its Keras config (``model<i>.json``) where every class is
    importable and configurable, the model by value (``model<i>.pkl``,
    :func:`~kexport.routing.rehost.recipe.describe_model`) where it can be
    pickled, and the values (``model<i>.npz``) and paths
    (``model<i>.paths.json``) of all its variables, and the tensors its layers
    hold outside variables (``model<i>.state.npz`` and ``.state.json``,
    :func:`~kexport.routing.rehost.state.layer_state`). The child tries the
    config first, then the pickle, assigns the values by path and sets the
    layer tensors again.

    Raises:
        RouteRefused: a layer holds a tensor that cannot travel (the message
            names the layer path and the attribute).
    """
    import keras
    import numpy as np

    files, modules = [], []
    for i, m in enumerate(models):
        text, why_not_config = _config_json(m)
        try:
            blob: bytes | None = describe_model(m)
            why_not_value = ""
        except UnsupportedRouteError as e:
            blob, why_not_value = None, str(e)
        if text is None and blob is None:
            raise UnsupportedRouteError(
                f"Step 1/3 (re-host onto {host}: describe the model) failed for "
                f"'{m.name}': its config cannot travel ({why_not_config}) and neither can "
                f"the model by value: {why_not_value}")
        if text is not None:
            (work / f"model{i}.json").write_text(text)
        if blob is not None:
            # Read back only by kexport's own child process, from this private
            # (0700) temporary folder.
            (work / f"model{i}.pkl").write_bytes(blob)
        values = {f"v{j}": np.asarray(keras.ops.convert_to_numpy(v.value))
                  for j, v in enumerate(m.variables)}
        np.savez(work / f"model{i}.npz", **values)
        (work / f"model{i}.paths.json").write_text(json.dumps(variable_paths(m)))
        entries, arrays = layer_state(m)
        np.savez(work / f"model{i}.state.npz", **arrays)
        (work / f"model{i}.state.json").write_text(json.dumps(entries))
        files.append(f"model{i}")
        if text is not None:
            for layer in m._flatten_layers(include_self=True):
                mod = type(layer).__module__
                if mod.split(".")[0] != "keras" and mod not in modules:
                    modules.append(mod)
    return files, modules


# -- the persistent worker per target backend --------------------------------------------------
def _parent_path() -> list[str]:
    path = []
    for entry in sys.path:
        entry = os.path.abspath(entry or os.getcwd())
        if os.path.isdir(entry) and entry not in path:
            path.append(entry)
    return path


def _child_env(host: str, home: Path) -> dict[str, str]:
    """A clean environment: the target backend, the parent's import path, nothing else
    (:class:`~kexport.check.worker.Worker` states the float32 math on top)."""
    env = {"KERAS_BACKEND": host, "PYTHONPATH": os.pathsep.join(_parent_path()),
           "KERAS_HOME": str(home / ".keras"), "HOME": str(home),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    for key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "CUDA_VISIBLE_DEVICES"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _start_worker(host: str) -> Worker:
    """One persistent ``python -m kexport.routing.rehost_child`` on ``host``.

    Fed one job folder per request, it answers one JSON line per job; it runs
    in a private home folder, removed when the worker is closed.
    """
    home = Path(tempfile.mkdtemp(prefix="kexport-rehost-worker-"))
    os.chmod(home, 0o700)
    return Worker("kexport.routing.rehost_child", env=_child_env(host, home), cwd=home,
                  name=f"kexport-rehost-{host}",
                  on_close=functools.partial(shutil.rmtree, home, ignore_errors=True))


def _call(worker: Worker, host: str, work: Path, timeout: float) -> None:
    """Run the job in ``work``; raise :class:`CaptureError` if the worker fails."""
    try:
        reply = worker.ask({"work": str(work), "sys_path": _parent_path()}, timeout)
    except TimeoutError as e:
        worker.close(wait=10)
        raise CaptureError(
            f"Step 2/3 (re-host onto {host}): the child process did not finish "
            f"in {timeout:g} s; it was stopped (the next re-host starts a new one)."
        ) from e
    if reply is None:
        code = worker.exit_code()
        tail = worker.log_tail(1500)
        worker.close(wait=10)
        raise CaptureError(
            f"Step 2/3 (re-host onto {host}): the child process exited with "
            f"code {code} without a result. Its last output:\n{tail}"
        )


_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def close_workers() -> None:
    """Stop every re-host worker process of this process (also run at exit)."""
    with _WORKERS_LOCK:
        while _WORKERS:
            _WORKERS.popitem()[1].close(wait=10)


atexit.register(close_workers)


_ERRORS: dict[str, type[KexportError]] = {
    c.__name__: c for c in (SignatureError, CaptureError, RouteRefused, WriteError,
                            UnsupportedRouteError, VerificationError)}


def _run_child(job: dict[str, Any], work: Path, host: str) -> dict[str, Any]:
    """Run ``job`` in the ``host`` worker (started, or restarted, as needed)."""
    (work / "job.json").write_text(json.dumps(job))
    with _WORKERS_LOCK:
        worker = _WORKERS.get(host)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.close(wait=10)
            worker = _WORKERS[host] = _start_worker(host)
        _call(worker, host, work, CHILD_TIMEOUT_S)
    result_file = work / "result.json"
    if not result_file.exists():
        raise CaptureError(
            f"Step 2/3 (re-host onto {host}): the child process wrote no result."
        )
    result = json.loads(result_file.read_text())
    if result.get("ok"):
        return result
    stage, kind, message = result["stage"], result["type"], result["message"]
    if stage == "rebuild":
        # state the rebuilt model cannot carry (a variable or a layer's array without a
        # counterpart): refused, so that a further route of the cell can run
        raise (RouteRefused if kind == "RouteRefused" else UnsupportedRouteError)(
            f"Step 1/3 (re-host: rebuild the model on the {host} backend) failed: "
            f"{kind}: {message}")
    cls = _ERRORS.get(kind, CaptureError)
    prefix = {"export": f"Step 2/3 (re-host: export on the {host} backend)",
              "run": f"Step 3/3 (re-host: run the artifact written on the {host} backend)"}[stage]
    raise cls(f"{prefix} failed: {kind}: {message}")


def _place(src: Path, filepath: str | os.PathLike[str]) -> None:
    """Move the verified artifact (and siblings it wrote) to ``filepath`` atomically."""
    target = Path(os.fspath(filepath))
    with atomic_target(filepath, is_dir=src.is_dir()) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, tmp)
    for sibling in sorted(src.parent.iterdir()):
        if sibling.name != src.name:
            with atomic_target(target.parent / sibling.name, is_dir=sibling.is_dir()) as tmp:
                if sibling.is_dir():
                    shutil.copytree(sibling, tmp, dirs_exist_ok=True)
                else:
                    shutil.copyfile(sibling, tmp)


def _note_source(artifact: Path, backend: str) -> None:
    """Record in a re-hosted SavedModel's manifest the backend it came from."""
    path = artifact / SAVED_MODEL_MANIFEST
    if path.is_file():
        manifest = replace(read_manifest(path), source_backend=backend, route="rehost")
        path.write_text(manifest.dumps())


def _diagnosis(models: list[Any], recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
               cases: dict[str, Any], report: list[dict[str, Any]], job: dict[str, Any],
               work: Path, atol: float, rtol: float) -> str:
    """Where a refused re-host goes wrong: the rebuilt model, run eagerly on the host
    backend (a second job of the same child), against the live model, sublayer call
    by sublayer call on the first failing batch (:func:`first_divergence`).

    A layer that differs there is a difference of the two backends' own
    computations for the same weights (no export can remove it); none: the
    export on the host is at fault. A hint only: ``""`` if it cannot be found.
    """
    import keras
    import numpy as np

    backend, host = job["source_backend"], job["host"]
    rows = iter(report)
    failing = next(((name, entry) for name, entries in cases.items() for entry in entries
                    if not next(rows)["ok"]), None)
    if failing is None:
        return ""
    name, entry = failing
    recipe, fn = next((r, f) for r, f in recipes if r.name == name)
    try:
        with np.load(work / "inputs.npz") as data:
            flat = [data[f"in__{entry['key']}__{i}"] for i in range(entry["inputs"])]
        args = pack_as(list(recipe.signature), [keras.ops.convert_to_tensor(x) for x in flat])
        with _state_kept(models):
            live = recorded_arrays(models[recipe.model], fn, args)
        result = _run_child({**job, "layers": {"endpoint": name, "key": entry["key"],
                                               "inputs": entry["inputs"]}}, work, host)
        with np.load(work / "layers.npz") as data:
            rebuilt = [{**c, **{kind: [data[f"{kind}__{n}__{i}"] for i in range(c[kind])]
                                for kind in ("inputs", "outputs")}}
                       for n, c in enumerate(result["calls"])]
    except Exception:  # a hint: without it, the refusal above still stands
        return ""
    found = first_divergence(live, rebuilt, atol, rtol)
    where = f"endpoint '{name}' batch {entry['batch']}"
    if found is None:
        return (f"\nThe model rebuilt on the {host} backend computes what the live model "
                f"computes, sublayer call by sublayer call ({where}): the difference comes "
                f"from the export on {host}.")
    origin = (f"its inputs agree, so the difference enters in '{found['path']}' itself"
              if found["origin"] == ENTERS else
              "its inputs already differ while every earlier sublayer call agrees, so the "
              "difference enters in code between sublayer calls"
              + (f" inside '{found['enclosing']}'" if found["enclosing"] else ""))
    return (f"\nThe model rebuilt on the {host} backend already computes differently from "
            f"the live model on the {backend} backend, for the same weights and inputs, "
            f"before any export ({where}): the first sublayer call whose outputs differ is "
            f"'{found['path']}' ({found['class_name']}, max abs error "
            f"{found['max_abs_error']:.3g}); {origin}. This is a difference of the two "
            f"backends' implementations of the model's computation (e.g. values a backend "
            f"leaves undefined, such as attention rows that a mask leaves empty), which a "
            f"re-host cannot remove: export from the {host} backend, or with inputs whose "
            f"outputs the backends define alike (`sample_data=`).")


def _rehost(models: list[Any], recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
            filepath: str | os.PathLike[str], format: str, host: str, verbose: bool,
            job_extra: dict[str, Any], atol: float, rtol: float,
            given: list[list[Any]] | Mapping[str, list[list[Any]]] | None = None,
            quantized: str | None = None, carried: Mapping[str, Any] | None = None
            ) -> list[dict[str, Any]]:
    """Run the whole re-host pipeline; return the verification report.

    ``carried``: arrays the child reads from ``carried.npz`` (e.g. an
    archive's calibration batches, named by the job)."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
        raise (SignatureError if isinstance(filepath, (str, os.PathLike))
               else SignatureTypeError)(
            f"Expected `filepath` to be a non-empty str or pathlib.Path. "
            f"Received: {describe(filepath)}")
    _check_rehostable(models, host)
    target = Path(os.fspath(filepath))
    with tempfile.TemporaryDirectory(prefix="kexport-rehost-") as tmpdir:
        work = Path(tmpdir)
        os.chmod(work, 0o700)
        files, modules = _serialize(models, host, work)
        arrays, cases = _live_cases(recipes, models, given)
        np.savez(work / "inputs.npz", **arrays)
        if carried:
            np.savez(work / "carried.npz", **carried)
        (work / "out").mkdir()
        out = work / "out" / (target.name or "artifact")
        job = {"format": format, "host": host, "source_backend": backend,
               "models": files, "imports": modules, "output": str(out),
               "verbose": bool(verbose),
               "endpoints": [r.to_json() for r, _ in recipes],
               "cases": {n: [{"key": e["key"], "inputs": e["inputs"]} for e in es]
                         for n, es in cases.items()}}
        policy = active_policy()
        if policy:  # the child's own checks draw the same kind of inputs
            job["samples"] = policy.to_json()
            if policy.data is not None:
                job["sample_data"] = list(policy.data)
                np.savez(work / "sample_data.npz",
                         **{f"arr_{i}": v for i, v in enumerate(policy.data.values())})
        job.update(job_extra)
        result = _run_child(job, work, host)
        with np.load(work / "outputs.npz") as data:
            outputs = {k: data[k] for k in data.files}
        report = _compare(cases, outputs, atol, rtol, quantized)
        bad = [r for r in report if not r["ok"]]
        if bad and judged():  # a probe's numbers are judged by its caller
            lines = [f"  endpoint '{r['endpoint']}' batch {r['batch']}: " + ", ".join(
                f"output {o['index']} max abs error {o['max_abs_error']:.3g} (shapes live "
                f"{o['live_shape']} vs artifact {o['artifact_shape']})"
                + (f", pooled over the batches: {'; '.join(o['failed'])}" if o.get("failed")
                   else "")
                for o in r["outputs"] if not o["ok"]) for r in bad]
            rule = (f"the {quantized} thresholds" if quantized is not None
                    else f"atol={atol}, rtol={rtol}")
            raise VerificationError(
                f"The {format} artifact re-hosted from the {backend} backend onto {host} "
                f"does not compute what the live model computes ({rule}); nothing was "
                f"written to the target path:\n" + "\n".join(lines)
                + _diagnosis(models, recipes, cases, report, job, work, atol, rtol),
                report=report)
        _note_source(out, backend) if out.is_dir() else None
        _place(out, filepath)
        if verbose:
            text = result.get("stdout", "").replace(str(out), os.fspath(filepath))
            print(f"kexport: re-hosted from the {backend} backend onto {host}; "
                  f"verified {sum(len(es) for es in cases.values())} sample batches")
            if text.strip():
                print(text.rstrip())
    return report


def _json_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise SignatureError(
            "Expected keyword arguments of a re-hosted export to be plain values "
            f"(numbers, strings, lists, dicts), since they travel to a child process. "
            f"Received: {describe(kwargs)}"
        ) from e
    return kwargs


def rehost_export(model: Any, filepath: str | os.PathLike[str],
                  format: str = "tf_saved_model", target_backend: str = "tensorflow",
                  input_signature: Any | None = None, verbose: bool | None = None,
                  *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                  sample_inputs: list[list[Any]] | None = None,
                  quantized: str | None = None,
                  **kwargs: Any) -> list[dict[str, Any]]:
    """Export ``model`` by rebuilding it on ``target_backend`` in a child process.

    The model's config and all its variable values (seed-generator states and
    BatchNorm statistics included) are written to a private temporary folder;
    a child process with ``KERAS_BACKEND=target_backend`` and a clean
    environment rebuilds the model and calls
    ``kexport.export_model(rebuilt, ..., format=format, **kwargs)`` there, then
    runs the artifact with the format's runtime on sample inputs at two batch
    sizes. The parent compares those outputs with the live model's
    (``model(*args, training=False)``) and only then moves the artifact to
    ``filepath`` atomically.

    Args:
        model: a built Keras model or layer on the current backend. Custom
            classes need not be importable nor configurable (they travel by
            value, :mod:`kexport.routing.rehost.recipe`).
        filepath: where the artifact goes (``str`` or ``pathlib.Path``).
        format: any format the target backend writes natively
            (``"tf_saved_model"``, ``"onnx"``, ...).
        target_backend: the Keras backend that writes the artifact.
        input_signature: as for :func:`kexport.export_model`; computed from
            the model when omitted (dynamic batch).
        verbose: print a summary of what was written (default ``True``).
        atol: absolute tolerance of the comparison with the live model.
        rtol: relative tolerance of that comparison.
        sample_inputs: inputs to compare on instead of random ones: one flat
            list of arrays (one per model input, in signature order) per batch.
        quantized: the quantization mode the artifact is written in: its
            float outputs are then judged by that mode's thresholds
            (:data:`kexport.check.tolerance.QUANTIZED`) instead of ``atol``/``rtol``.
        **kwargs: passed to the child's ``export_model`` (JSON-able values
            only, e.g. ``opset_version=17``).

    Returns:
        The verification report: one row per endpoint and batch size with
        the maximum absolute error of each output.

    Raises:
        UnsupportedRouteError: the model cannot be rebuilt in another process
            (a layer attribute that cannot be pickled, e.g. a lock).
        VerificationError: the artifact differs from the live model; nothing
            is written to ``filepath`` then.
        CaptureError, WriteError, SignatureError: when the export fails in the
            child (re-raised with the step that failed).

    Example:

    ```python
    # on KERAS_BACKEND=torch
    from kexport.routing.rehost import rehost_export
    rehost_export(model, "out_dir", format="tf_saved_model")
    ```
    """
    if not is_layer(model):
        raise SignatureTypeError(
            f"Expected `model` to be a Keras model or layer. Received: {describe(model)}")
    if verbose is not None and not isinstance(verbose, bool):
        raise SignatureTypeError(
            f"Expected `verbose` to be True, False or None. Received: {describe(verbose)}")
    signature = plan_signature(inference_fn(model), normalize_for_model(model, input_signature),
                               say=print if verbose is None or verbose else None)
    recipe = EndpointRecipe(DEFAULT_ENDPOINT, 0, "__call__", {"training": False}, signature)

    def live(*args: Any) -> Any:
        return infer(model, *args)

    extra = {"mode": "model", "kwargs": _json_kwargs(dict(kwargs))}
    return _rehost([model], [(recipe, live)], filepath, format, target_backend,
                   True if verbose is None else verbose, extra, atol, rtol, sample_inputs,
                   quantized)


# -- ExportArchive written by re-hosting (any capture) ------------------------------------------
def _collection_refs(name: str, variables: list[Any], models: list[Any],
                     backend: str) -> list[list[int]]:
    """``[model index, variable index]`` for each Keras variable of a collection."""
    refs = []
    for v in variables:
        ref = next(([i, j] for i, m in enumerate(models)
                    for j, w in enumerate(m.variables) if w is v), None)
        if ref is None:
            raise SignatureError(
                f"Variable collection '{name}': expected every variable to belong to a "
                f"tracked layer or model (a re-hosted archive rebuilds them from the "
                f"tracked models). Received: variable '{getattr(v, 'path', v)}' of no "
                "tracked layer. Next step: archive.track(the layer that owns it) first."
            )
        refs.append(ref)
    return refs


def write_archive_rehosted(archive: Any, filepath: str | os.PathLike[str], *,
                           format: str, host: str, options: Any | None = None,
                           verbose: bool = True, atol: float = DEFAULT_ATOL,
                           rtol: float = DEFAULT_RTOL, **format_options: Any
                           ) -> list[dict[str, Any]]:
    """Write ``archive`` in ``format`` by re-hosting it onto the ``host`` backend.

    Used by ``ExportArchive.write_out`` wherever the route tables say so
    (:func:`kexport.routing.archives.archive_host`): every endpoint must have been
    described as data when it was added (:class:`EndpointRecipe`); the tracked
    models are rebuilt on ``host`` in the worker process, the archive is
    re-created and written there with ``host``'s own writer, every endpoint
    is compared with the live endpoint functions at two batch sizes, and only
    then is the artifact placed at ``filepath`` (see the module doc).

    Args:
        archive: the ``ExportArchive`` (any backend's capture).
        filepath: where the artifact goes.
        format: the artifact format.
        host: the backend that writes it (not the current one).
        options: must be ``None`` (it cannot travel to the child).
        verbose: print what was re-hosted and written.
        atol: absolute tolerance of the comparison with the live endpoints.
        rtol: relative tolerance of that comparison.
        **format_options: the format writer's options (``write_out``'s),
            carried to the child: plain values as JSON, ``calibration_data``
            read here against every endpoint's inputs and carried as arrays
            (:class:`~kexport.check.calibration.EndpointBatches`). A
            quantized artifact is compared by its mode's thresholds, on the
            calibration batches when there are some.

    Returns:
        The verification report (one row per endpoint and batch size).

    Raises:
        UnsupportedRouteError: an endpoint could not be described as data (the
            message names it, says why and what to do), ``options`` was
            given, or a model cannot be rebuilt in another process.
        VerificationError: the artifact differs from the live endpoints;
            nothing is written to ``filepath`` then.
    """
    import keras

    backend = keras.backend.backend()
    if host == backend:
        raise UnsupportedRouteError(
            f"Expected a host backend other than the current one to re-host a "
            f"format={format!r} archive. Received: host={host!r} on the {backend} backend."
        )
    if options is not None:
        raise UnsupportedRouteError(
            f"`options` cannot travel to the {host} process that writes this "
            f"format={format!r} archive (the {backend} backend re-hosts it). Expected "
            f"options=None. Received: {describe(options)}"
        )
    state = archive.trackables()
    for resource in state.get("tracked_resources", []):
        raise UnsupportedRouteError(
            f"ExportArchive.write_out(format={format!r}) on the {backend} backend re-hosts "
            f"the archive onto the {host} backend, which rebuilds tracked Keras layers and "
            "models only. Expected no TensorFlow resource tracked with archive.track(). "
            f"Received: {describe(resource)}. Next step: keep lookups inside the model "
            "(e.g. a StringLookup layer), or write this format from an archive without it."
        )
    described = archive.described_endpoints()
    recipes: list[tuple[EndpointRecipe, Callable[..., Any]]] = []
    for name in archive.endpoint_names:
        recipe, fn = described.get(name, ("it was added before endpoints were recorded", None))
        if isinstance(recipe, str):
            raise not_described_error(
                name, fn, recipe, f"ExportArchive.write_out(format={format!r}) on the "
                f"{backend} backend re-hosts the archive onto the {host} backend (a child "
                "process rebuilds the tracked models and their endpoints)", host)
        recipes.append((recipe, fn))
    models = list(state["tracked_layers"])
    collections = {k: _collection_refs(k, v, models, backend)
                   for k, v in archive.variable_collections().items()}
    kwargs, carried, calibration, given = _archive_options(recipes, format_options)
    extra = {"mode": "archive", "collections": collections, "tracked": len(models),
             "kwargs": kwargs, "calibration": calibration}
    return _rehost(models, recipes, filepath, format, host, bool(verbose), extra, atol, rtol,
                   given or None, format_options.get("quantization"), carried)


def _archive_options(recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
                     format_options: Mapping[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                dict[str, list[list[Any]]]]:
    """What of an archive's format options travels to the child: the plain
    options (JSON), the calibration batches as arrays (``carried.npz``: key
    ``cal__<endpoint index>__<batch>__<input index>``) with their layout
    (endpoint -> input names and batch count), and the first two batches of
    each endpoint as the cases the artifact is compared on.

    Raises:
        QuantizationError: calibration data that does not fit an endpoint.
        SignatureError: an option that is not a plain value.
    """
    import types

    import numpy as np

    kwargs = dict(format_options)
    data = kwargs.pop("calibration_data", None)
    views = [types.SimpleNamespace(name=r.name, signature=r.signature,
                                   input_names=flat_names(r.signature)) for r, _ in recipes]
    batches = calibration_by_endpoint(views, data)
    carried: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for e, (name, endpoint_batches) in enumerate(batches.items()):
        names = list(endpoint_batches[0]) if endpoint_batches else []
        for b, batch in enumerate(endpoint_batches):
            for i, input_name in enumerate(names):
                carried[f"cal__{e}__{b}__{i}"] = np.asarray(batch[input_name])
        layout[name] = {"index": e, "names": names, "batches": len(endpoint_batches)}
    given = {name: [list(b.values()) for b in bs[:2]] for name, bs in batches.items() if bs}
    return _json_kwargs(kwargs), carried, layout, given

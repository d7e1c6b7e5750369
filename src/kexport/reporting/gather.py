"""The data of a report: one JSON-able dict per model and its artifacts.

:func:`collect` is what ``--json`` writes; the HTML page
(:mod:`kexport.reporting.render`) is rendered from that dict alone. Per
artifact: the route it records, its files and sizes, endpoints with shapes and
dtypes, operator counts (each runtime's ``Artifact.op_counts``), the
verification report (:func:`kexport.verify`, in a fresh process), a histogram
of ``|artifact - model|`` per output of the default endpoint, p50/p90 latency
at a few batch sizes next to the live model, the quantization record, and
where verification failed the localiser's finding. No local path enters it:
artifacts are named by their base names, and any path in a message is cut to
its base name.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kexport._version import __version__
from kexport.artifact.quantization import read_record
from kexport.check.calibration import calibration_sample
from kexport.check.live import live_reference
from kexport.check.policy import flat_sample_data
from kexport.check.report import VerificationReport
from kexport.check.samples import SamplePolicy, recorded_policy, sample_inputs
from kexport.errors import KexportError, SignatureError, describe
from kexport.reporting.localization import _localize_finding
from kexport.reporting.timing import bench_inputs, stats, time_calls
from kexport.runtime import Artifact, EndpointInfo, detect, load
from kexport.verify import verify

__all__ = ["BATCH_SIZES", "HISTOGRAM_ROWS", "SCHEMA", "SECONDS", "collect", "scrub"]

#: The ``schema`` of a report's JSON.
SCHEMA = "kexport.report/1"
#: Batch sizes timed by default (a static batch is timed at its own size).
BATCH_SIZES: tuple[int, ...] = (1, 8)
#: Time budget per runner and batch size, in seconds (at least 3 timed calls).
SECONDS = 0.25
_MIN_RUNS, _MAX_RUNS = 3, 200
#: Size of other dynamic dims when timing.
DIM_SIZE = 8
#: Rows of the generated batch the error histograms are computed on.
HISTOGRAM_ROWS = 16
#: Decades a histogram spans at most (smaller errors go to its ``below`` count).
_DECADES = 12


def collect(model: Any, artifacts: Sequence[str | os.PathLike[str]], *,
            data: Any | None = None, calibration_data: Any | None = None,
            batch_sizes: Sequence[int] = BATCH_SIZES,
            seconds: float = SECONDS, seed: int = 0, precision: str | None = None,
            model_file: str | os.PathLike[str] | None = None,
            verified: Mapping[str, VerificationReport] | None = None,
            timer: Callable[[Callable[[], Any], float], list[float]] | None = None
            ) -> dict[str, Any]:
    """The report's data for ``model`` and each artifact (see the module doc).

    Args:
        model: the live Keras model the artifacts were exported from.
        artifacts: artifact paths (one path alone is also accepted).
        data: sample data (the model's input structure) for verification
            and the histograms, instead of generated inputs.
        calibration_data: the data a quantized artifact was calibrated on
            (as given to the export): without ``data``, the artifacts are
            checked on it (verification, histograms, localiser), as the
            export checked them.
        batch_sizes: batch sizes timed.
        seconds: time budget per runner and batch size.
        seed: seed of the generated inputs.
        precision: the runtimes' compute precision (see :func:`kexport.load`).
        model_file: the ``.keras`` file the model came from (its base name
            is shown).
        verified: reports already computed for some artifacts, by path as
            given (an export that just verified its artifact): not redone.
        timer: replaces the timing loop (tests).

    Raises:
        SignatureError: a model that is no Keras layer, no artifacts, bad
            batch sizes or time budget.
        ArtifactError: a path that is missing or no artifact.
    """
    import keras

    if not isinstance(model, keras.layers.Layer):
        raise SignatureError(f"Expected `model` to be a Keras model. Received: {describe(model)}")
    paths = _paths(artifacts)
    if (not isinstance(batch_sizes, (list, tuple)) or not batch_sizes
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                       for b in batch_sizes)):
        raise SignatureError(f"Expected `batch_sizes` to be a non-empty list of ints >= 1. "
                             f"Received: {describe(batch_sizes)}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise SignatureError(f"Expected `seconds` to be a number > 0. Received: "
                             f"{describe(seconds)}")
    formats = [detect(p) for p in paths]  # every path checked before any work
    names = _names(paths)
    timer = timer or (lambda fn, s: time_calls(fn, s, _MIN_RUNS, _MAX_RUNS))
    keras_latency: dict[int, dict[str, Any]] = {}
    sections = []
    for path, format, name in zip(paths, formats, names, strict=True):
        given = (verified or {}).get(os.fspath(path))
        section = _artifact(model, path, format, name, data=data,
                            calibration_data=calibration_data, batch_sizes=batch_sizes,
                            seconds=seconds, seed=seed, precision=precision, verified=given,
                            timer=timer, keras_latency=keras_latency)
        sections.append(scrub(section, _replacements(path, name)))
    report = {
        "schema": SCHEMA, "producer": "kexport", "producer_version": __version__,
        "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "ok": all(s["ok"] for s in sections),
        "model": _model(model, model_file),
        "settings": {"seed": seed, "batch_sizes": list(batch_sizes), "seconds": seconds,
                     "histogram_rows": HISTOGRAM_ROWS, "precision": precision or "f32",
                     "inputs": "data" if data is not None else (
                         "generated" if calibration_data is None else "calibration")},
        "keras_latency": [keras_latency[b] for b in sorted(keras_latency)],
        "artifacts": sections,
    }
    return scrub(report, {})


# -- inputs -----------------------------------------------------------------

def _paths(artifacts: Any) -> list[Path]:
    if isinstance(artifacts, (str, os.PathLike)):
        artifacts = [artifacts]
    if not isinstance(artifacts, (list, tuple)) or not artifacts or not all(
            isinstance(a, (str, os.PathLike)) and os.fspath(a) for a in artifacts):
        raise SignatureError(f"Expected `artifacts` to be a non-empty list of artifact paths. "
                             f"Received: {describe(artifacts)}")
    return [Path(os.fspath(a)) for a in artifacts]


def _names(paths: Sequence[Path]) -> list[str]:
    """Base names, made unique with the parent folder's name where two agree."""
    names = [p.resolve().name or os.fspath(p) for p in paths]
    out = []
    for p, n in zip(paths, names, strict=True):
        out.append(f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n)
    return out


# -- sections -----------------------------------------------------------------

def _model(model: Any, model_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    import keras

    try:
        params: int | None = int(model.count_params())
    except ValueError:  # not built
        params = None
    return {"name": model.name, "class_name": type(model).__name__,
            "backend": keras.backend.backend(), "keras_version": keras.__version__,
            "parameters": params,
            "file": Path(os.fspath(model_file)).name if model_file is not None else None}


def _artifact(model: Any, path: Path, format: str, name: str, *, data: Any,
              calibration_data: Any, batch_sizes: Sequence[int], seconds: float, seed: int, precision: str | None,
              verified: VerificationReport | None,
              timer: Callable[[Callable[[], Any], float], list[float]],
              keras_latency: dict[int, dict[str, Any]]) -> dict[str, Any]:
    section: dict[str, Any] = {"name": name, "format": format, "ok": False, "error": None}
    report = verified if verified is not None else verify(
        model, path, seed=seed, precision=precision, data=data, store=False,
        calibration_data=calibration_data)
    try:
        artifact: Artifact | None = load(path, precision=precision)
    except (KexportError, RuntimeError, OSError) as e:
        artifact = None
        section["error"] = f"could not be opened: {type(e).__name__}: {e}"
    if artifact is not None:
        metadata = artifact.metadata
        section.update(_describe(artifact))
        section["route"] = route(metadata, format, _backend())
        section["quantization"] = read_record(metadata)
    else:
        section.update({"route": None, "quantization": None, "files": [], "size": None,
                        "endpoints": [], "operators": None, "runtime_precision": None,
                        "default_endpoint": None})
    section["verification"] = report.to_json()
    section["ok"] = report.ok
    tolerances = {r["output"]: (r["atol"], r["rtol"]) for r in report.summary()}
    section["histograms"] = []
    section["latency"] = []
    if artifact is not None:
        info = artifact.endpoints[artifact.default_endpoint]
        policy = recorded_policy(artifact.metadata)
        if data is None and report.inputs == "calibration":
            # checked on its calibration data: the histograms and the localiser too
            data = calibration_sample(calibration_data, info.inputs, info.input_names)
        section["histograms"] = _guard(lambda: _histograms(
            model, artifact, info, policy, data, seed, tolerances))
        section["latency"] = _guard(lambda: _latency(
            model, artifact, info, dataclasses.replace(policy, data=None), batch_sizes,
            seconds, seed, timer, keras_latency))
    section["localization"] = None if report.ok else _localize_finding(model, path, data)
    return section


def _guard(fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]] | dict[str, str]:
    """``fn()``, or ``{"error": ...}`` when the artifact's runtime fails on it."""
    try:
        return fn()
    except (KexportError, RuntimeError, ValueError, TypeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def _backend() -> str:
    import keras

    return keras.backend.backend()


def route(metadata: Mapping[str, Any], format: str, model_backend: str | None = None
          ) -> dict[str, Any]:
    """How the artifact was made, as its metadata records it: the backend that
    wrote it, the model's backend when it was re-hosted (recorded, else the
    live ``model_backend`` when the writer's differs), and the converter chain
    where the format records one (ONNX: ``kexport.route``)."""
    def first(*keys: str) -> str | None:
        return next((str(metadata[k]) for k in keys if metadata.get(k)), None)

    backend = first("backend", "kexport.backend")
    source = first("source_backend", "kexport.source_backend")
    if source is None and backend and model_backend and backend != model_backend:
        source = model_backend
    kind = first("route") or ("rehost" if source and source != backend else "native")
    detail = first("kexport.route")
    text = (f"{kind}: {source} model rebuilt on {backend} -> {format}"
            if kind == "rehost" and source else f"{kind}: {backend or '?'} -> {format}")
    if detail and detail != kind:
        text += f" ({detail})"
    return {"kind": kind, "backend": backend, "source_backend": source, "detail": detail,
            "text": text}


def _describe(artifact: Artifact) -> dict[str, Any]:
    files = artifact.files
    try:
        operators = artifact.op_counts()
    except (RuntimeError, ValueError, KeyError, AttributeError) as e:
        operators = {"error": f"{type(e).__name__}: {e}"}
    return {
        "files": [{"name": n, "bytes": int(b)} for n, b in sorted(files.items())],
        "size": int(sum(files.values())),
        "runtime_precision": artifact.precision,
        "default_endpoint": artifact.default_endpoint,
        "endpoints": [{"name": n, "default": n == artifact.default_endpoint,
                       **e.to_json()} for n, e in artifact.endpoints.items()],
        "operators": operators,
    }


# -- error histograms -------------------------------------------------------------

def _histograms(model: Any, artifact: Artifact, info: EndpointInfo, policy: SamplePolicy,
                data: Any, seed: int, tolerances: Mapping[str, tuple[float, float]]
                ) -> list[dict[str, Any]]:
    """``|artifact - model|`` per output on one batch of :data:`HISTOGRAM_ROWS`
    generated rows (or the rows of ``data``), binned by decade."""
    import numpy as np

    if data is not None:
        policy = dataclasses.replace(policy, data=flat_sample_data(
            data, info.inputs, info.input_names))
    arrays = sample_inputs(info.inputs, HISTOGRAM_ROWS, seed + 2, endpoint=info.name,
                           policy=policy)
    feeds = dict(zip(info.input_names, arrays, strict=True))
    got = artifact.run(info.name, feeds)
    want = live_reference(model, info.input_names)(feeds)
    out = []
    for t, expected in zip(info.outputs, want, strict=False):
        received = np.asarray(got[t.name])
        atol, rtol = tolerances.get(t.name, (0.0, 0.0))
        if received.shape != np.shape(expected):
            out.append({"output": t.name, "error": f"shape {tuple(received.shape)} instead of "
                                                   f"{tuple(np.shape(expected))}"})
            continue
        diff = np.abs(received.astype(np.float64) - np.asarray(expected, np.float64)).ravel()
        out.append(histogram(t.name, diff, atol, rtol))
    return out


def histogram(output: str, errors: Any, atol: float, rtol: float) -> dict[str, Any]:
    """Absolute errors binned by decade: ``bins`` of ``[lo, hi)`` with their
    counts, ``exact`` (zero error), ``below`` (nonzero, under the first bin),
    ``nan`` (NaN on either side) and ``max_abs``."""
    import numpy as np

    errors = np.asarray(errors, np.float64).ravel()
    nan = int(np.count_nonzero(np.isnan(errors)))
    errors = errors[~np.isnan(errors)]
    exact = int(np.count_nonzero(errors == 0))
    nonzero = errors[errors > 0]
    bins: list[dict[str, Any]] = []
    below = 0
    if nonzero.size:
        finite = nonzero[np.isfinite(nonzero)]
        top = math.ceil(math.log10(float(finite.max()))) if finite.size else 1
        top = max(top, math.floor(math.log10(atol)) + 1 if atol > 0 else top)
        if finite.size and 10.0 ** top <= float(finite.max()):
            top += 1
        low = math.floor(math.log10(float(finite.min()))) if finite.size else top - 1
        if atol > 0:
            low = min(low, math.floor(math.log10(atol)))
        low = max(low, top - _DECADES)
        below = int(np.count_nonzero(nonzero < 10.0 ** low))
        for e in range(low, top):
            lo, hi = 10.0 ** e, 10.0 ** (e + 1)
            count = int(np.count_nonzero((nonzero >= lo) & (nonzero < hi)))
            bins.append({"lo": lo, "hi": hi, "exponent": e, "count": count})
        if not np.all(np.isfinite(nonzero)):
            bins.append({"lo": math.inf, "hi": math.inf, "exponent": None,
                         "count": int(np.count_nonzero(~np.isfinite(nonzero)))})
    return {"output": output, "elements": int(errors.size) + nan, "exact": exact,
            "below": below, "nan": nan, "bins": bins,
            "max_abs": float(errors.max()) if errors.size else 0.0,
            "atol": float(atol), "rtol": float(rtol)}


# -- latency -----------------------------------------------------------------------

def _latency(model: Any, artifact: Artifact, info: EndpointInfo, policy: SamplePolicy,
             batch_sizes: Sequence[int], seconds: float, seed: int,
             timer: Callable[[Callable[[], Any], float], list[float]],
             keras_latency: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """p50/p90 of the artifact per batch size, the live model's beside it
    (timed once per batch size for every artifact of the report)."""
    static = {t.shape[0] for t in info.inputs if t.shape and t.shape[0] is not None}
    sizes = sorted(static) if static else list(batch_sizes)
    reference = live_reference(model, info.input_names)
    rows = []
    for batch in sizes:
        feeds = bench_inputs(info, batch, DIM_SIZE, seed, policy)
        row = {"batch": batch, **_short(stats(timer(
            lambda f=feeds: artifact.run(info.name, f), seconds), batch))}
        if batch not in keras_latency:
            keras_latency[batch] = {"batch": batch, **_short(stats(timer(
                lambda f=feeds: reference(f), seconds), batch))}
        keras = keras_latency[batch]
        row["keras_p50_ms"], row["keras_p90_ms"] = keras["p50_ms"], keras["p90_ms"]
        rows.append(row)
    return rows


def _short(s: Mapping[str, float]) -> dict[str, Any]:
    return {"p50_ms": round(s["p50_ms"], 4), "p90_ms": round(s["p90_ms"], 4),
            "runs": int(s["runs"])}


# -- no local paths ----------------------------------------------------------------

_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?:/[^\s/'\"<>:;,()\[\]]+)+/?")


def _replacements(path: Path, name: str) -> dict[str, str]:
    """Local spellings of an artifact's path -> its report name."""
    out = {}
    for spelling in (os.fspath(path.resolve()), os.path.abspath(path), os.fspath(path)):
        if spelling and spelling not in (".", os.sep):
            out[spelling] = name
    return out


def scrub(value: Any, replacements: Mapping[str, str]) -> Any:
    """``value`` with every known spelling of a local path replaced by its name,
    and any other absolute path cut to its base name, in every string."""
    if isinstance(value, str):
        for local in sorted(replacements, key=len, reverse=True):
            value = value.replace(local, replacements[local])
        return _ABSOLUTE.sub(lambda m: os.path.basename(m.group(0).rstrip("/")), value)
    if isinstance(value, Mapping):
        return {scrub(k, replacements) if isinstance(k, str) else k: scrub(v, replacements)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, replacements) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    return value


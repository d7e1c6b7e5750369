"""The localiser: name the first Keras layer whose output an artifact gets wrong.

:func:`localize` reads what the artifact says about itself (format, backend,
route, quantization mode, opset), exports a *probe* of the model
(:mod:`kexport.check.probe`: the same computation, every sublayer's inputs
and outputs as outputs) through the same route with the same options, and
verifies the probe like any artifact (:func:`kexport.verify`: a fresh
process running the format's runtime, the one sample generator, the one
tolerance table and comparison). Each layer call becomes a row of a
:class:`~kexport.check.localization.LocalizationReport`; the first row whose
outputs fail is the culprit, and its inputs say whether the error enters
there or grows from upstream.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kexport.check.probe as probe_module
from kexport import routing
from kexport.artifact import (
    MANIFEST_NAME,
    SAVED_MODEL_MANIFEST,
    read_openvino_metadata,
    read_torch_program_metadata,
    strict_json,
)
from kexport.artifact.quantization import check_quantization
from kexport.check.localization import LocalizationReport, rows_from
from kexport.check.policy import policy_for
from kexport.check.probe import plan_of
from kexport.check.samples import sample_inputs
from kexport.check.tolerance import quantization_mode
from kexport.check.worker import Worker
from kexport.context import ExportContext, Printer
from kexport.errors import (
    ArtifactError,
    LocalizationError,
    SignatureTypeError,
    describe,
)
from kexport.runtime import detect, runtime_module
from kexport.runtime._worker import MARKER
from kexport.signature import flatten, normalize_for_model, pack_as
from kexport.verify import verify

__all__ = ["localize"]

#: Rows of the generated calibration batches of an ``int8`` probe (when the
#: caller gives no ``calibration_data`` nor ``data``).
_CALIBRATION_BATCHES = 4


def _manifest_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a folder artifact (a SavedModel's, a generic ``kexport.json``;
    not an ONNX archive's, whose graphs hold their quantization record)."""
    folder = Path(os.fspath(path))
    for name in (SAVED_MODEL_MANIFEST, MANIFEST_NAME) if folder.is_dir() else ():
        if (folder / name).is_file():
            return strict_json((folder / name).read_bytes(), what=f"'{folder / name}'")
    return None


#: What an artifact says about itself, read without its runtime where a file
#: holds it as JSON; other artifacts (an ONNX file's metadata_props, a LiteRT
#: flatbuffer) are opened by their runtime in a fresh process.
_READERS = (_manifest_file, read_openvino_metadata, read_torch_program_metadata)


def _metadata(path: str | os.PathLike[str], timeout: float) -> dict[str, Any]:
    """What the artifact says about itself (its manifest: format, backend, route,
    quantization, opset...)."""
    for reader in _READERS:
        found = reader(path)
        if found:
            return dict(found)
    worker = Worker("kexport.runtime._worker", marker=MARKER, lifetime=timeout,
                    name="kexport-localize")
    try:
        reply = worker.ask({"cmd": "open", "path": os.fspath(path), "precision": None})
    finally:
        worker.close({"cmd": "exit"})
    if not reply or not reply.get("ok"):
        raise ArtifactError(
            f"Expected an artifact its runtime can open at '{os.fspath(path)}'. Received "
            f"an error: {(reply or {}).get('error') or 'the child process ended'}")
    return dict(reply.get("metadata") or {})


def _options(metadata: Mapping[str, Any], format: str, given: dict[str, Any],
             calibration: Any) -> dict[str, Any]:
    """The export options the artifact was written with, as far as it records them;
    the caller's ``given`` options win."""
    options: dict[str, Any] = {}
    mode = quantization_mode(metadata)
    if mode is not None:
        options["quantization"] = mode
        if mode == "int8":
            options["calibration_data"] = calibration()
    opset = metadata.get("opset", metadata.get("kexport.opset"))
    if isinstance(opset, (int, str)) and str(opset).isdigit() and format == "onnx":
        options["opset_version"] = int(opset)
    options.update(given)
    check_quantization(format, options.get("quantization"), options.get("calibration_data"))
    return options


def _routes(backend: str, format: str, probe: Any, metadata: Mapping[str, Any]
            ) -> list[routing.Route]:
    """The routes to try, the artifact's own kind first (a re-host onto the
    backend that wrote it, or the native route)."""
    candidates = routing.usable(backend, format, probe)
    rehosted = metadata.get("route") == "rehost" or bool(metadata.get("source_backend"))
    wrote = metadata.get("backend")

    def rank(route: routing.Route) -> int:
        if rehosted:
            return 0 if route.kind == "rehost" and route.host == wrote else 1
        return 0 if route.kind == "native" else 1

    return sorted(candidates, key=rank)


def localize(model: Any, artifact_path: str | os.PathLike[str], data: Any | None = None, *,
             seed: int = 0, timeout: float = 600.0, **options: Any) -> LocalizationReport:
    """Find the first Keras layer whose outputs the artifact at ``artifact_path``
    computes differently from the live ``model``.

    A probe of ``model`` (every sublayer's inputs and outputs as outputs; nested
    models' and subclassed models' sublayers included) is exported through the
    artifact's own route with its recorded options (format, quantization mode,
    opset), run in a fresh process by the format's runtime, and compared with
    the live model layer by layer with the tolerances :func:`kexport.verify`
    would use for the artifact (a quantized artifact: its mode's thresholds).

    Args:
        model: the Keras model (Functional, Sequential or subclassed) the
            artifact was exported from.
        artifact_path: the artifact.
        data: sample data in the model's input structure (as for
            :func:`kexport.verify`); ``None``: generated inputs.
        seed: seed of the generated inputs.
        timeout: seconds each child process may take.
        **options: export options that override what the artifact records,
            e.g. ``calibration_data`` for an ``int8`` artifact (default: ``data``,
            else generated batches) or ``opset_version``.

    Returns:
        A :class:`~kexport.check.localization.LocalizationReport`: ``culprit``
        (the first failing layer's path, ``None`` when every layer matches),
        ``layers`` (one row per layer call in topological order), ``format``,
        ``route``, ``to_json()``.

    Example:

    ```python
    report = kexport.localize(model, "model.onnx")
    print(report.culprit)   # e.g. "encoder/attention"
    print(report)           # the per-layer table
    ```

    Raises:
        ArtifactError: ``artifact_path`` is no artifact its runtime can open.
        LocalizationError: ``model`` has no sublayer to probe (a ``ValueError``).
        SignatureError, SampleDataError, QuantizationError, UnsupportedRouteError:
            as :func:`kexport.export_model` / :func:`kexport.verify` for the probe.
    """
    import keras
    import numpy as np

    if not isinstance(model, keras.layers.Layer):
        raise SignatureTypeError(
            f"Expected `model` to be a Keras model or layer. Received: {describe(model)}")
    format = detect(artifact_path)
    metadata = _metadata(artifact_path, timeout)
    signature = normalize_for_model(model, None)
    specs = flatten(signature)
    policy = policy_for(model, signature, data)
    flat = (list(policy.data.values()) if policy.data is not None
            else sample_inputs(specs, 2, np.random.default_rng(seed), policy=policy))
    args = pack_as(signature, [np.asarray(a) for a in flat])
    calls, slots = plan_of(model, args)
    if not calls:
        raise LocalizationError(
            f"Expected a model with sublayers whose tensors can be probed. Received "
            f"{type(model).__name__} '{model.name}', which calls no Keras sublayer: it gives "
            f"no intermediate tensors to compare (localisation needs layers; "
            f"`kexport.verify` still checks its outputs).")
    spread = len(signature) > 1
    probe = probe_module.Probe(model, slots, spread=spread)
    probe(tuple(args) if spread else args[0])  # built, as exports need
    probe_signature = [tuple(signature)] if spread else [signature[0]]
    probe_data = None
    if data is not None:
        probe_data = tuple(args) if spread else args[0]

    def calibration() -> Any:
        if data is not None:
            return [probe_data]
        rng = np.random.default_rng(seed + 7)
        batches = []
        for _ in range(_CALIBRATION_BATCHES):
            arrays = sample_inputs(specs, 8, rng, policy=policy)
            packed = pack_as(signature, arrays)
            batches.append(tuple(packed) if spread else packed[0])
        return batches

    export_options = _options(metadata, format, dict(options), calibration)
    backend = keras.backend.backend()
    routes = _routes(backend, format, probe, metadata)
    route = routes[0]
    with tempfile.TemporaryDirectory(prefix="kexport-localize-") as tmp:
        target = os.path.join(tmp, "probe" + _suffix(artifact_path))
        # written as the faulty artifact was: the route's own checks do not refuse it
        context = ExportContext(overwrite=True, judged=False, printer=Printer(on=False),
                                samples=policy_for(probe, probe_signature, probe_data))
        routing.export(routes, probe, target, context=context, input_signature=probe_signature, **export_options)
        report = verify(probe, target, store=False, seed=seed, timeout=timeout,
                        data=probe_data, scores=[])
    if report.error is not None:
        raise LocalizationError(
            f"The probe of {type(model).__name__} '{model.name}' could not be run by the "
            f"{format} runtime: {report.error}")
    tolerance = (report.thresholds.to_json() if report.thresholds is not None
                 else {"atol": report.atol, "rtol": report.rtol})
    culprit, rows = rows_from(calls, report.summary(), tolerance,
                              _ops(format, artifact_path, calls))
    return LocalizationReport(culprit, rows, format,
                              f"{route.backend} -> {route.format} ({route.kind}: {route.via})",
                              quantization_mode(metadata))


def _suffix(path: str | os.PathLike[str]) -> str:
    """The artifact's suffix (``.onnx``, ``.tflite``, ``.xml``, ``.pt2``; ``""`` for folders)."""
    path = os.fspath(path)
    return "" if os.path.isdir(path) else os.path.splitext(path)[1]


def _ops(format: str, path: str | os.PathLike[str], calls: list[Any]) -> dict[str, list[str]]:
    """Layer path -> the first op kinds of the artifact from that layer, from the
    format's runtime (``layer_ops(path, names)``) where the format keeps that mapping."""
    reader = getattr(runtime_module(format), "layer_ops", None)
    if reader is None:
        return {}
    names = {c.path: c.path.split("@")[0].split("/")[-1] for c in calls}
    try:
        found = reader(os.fspath(path), sorted(set(names.values())))
    except Exception:  # the mapping is a hint; without it, no ops
        return {}
    return {p: list(found.get(n, [])) for p, n in names.items()}

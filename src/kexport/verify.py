"""Verification: does the artifact compute what the live model computes?

:func:`verify` runs the artifact with its own runtime in a fresh child
process (:mod:`kexport.runtime._worker`, which never imports Keras or the
model's code), runs the live model on the same inputs here, and compares
every output of every checked endpoint. Without explicit inputs, seeded
random inputs are generated from the artifact's signature by
:mod:`kexport.check.samples` (the generator every kexport check uses), one
case per size: the batch axis at each size, 1 included, every other dynamic
axis at a size of its own.

A quantized artifact (its metadata records a mode of
:data:`kexport.check.tolerance.QUANTIZATION_MODES`) is judged by that mode's
thresholds on SQNR, cosine similarity and, for score outputs, top-1/top-5
agreement, pooled over the cases, plus one larger case (every row of the
sample data, at most :data:`QUANTIZED_ROWS`; else :data:`QUANTIZED_ROWS`
generated rows) so the statistics rest on enough samples; a float artifact
keeps the elementwise ``atol``/``rtol`` verdict.

The :class:`VerificationReport` prints as a table, has ``.ok``, converts to
JSON, and is stored inside the artifact (SavedModel: a JSON file in
``assets.extra/``; ONNX: ``metadata_props``), without any local path.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kexport._verify_cases import QUANTIZED_ROWS, _cases, _checked, _quantized_case
from kexport.capture.precision import live_precision
from kexport.check.calibration import calibration_sample
from kexport.check.live import live_reference
from kexport.check.policy import flat_sample_data
from kexport.check.report import VerificationReport, raise_if_failed
from kexport.check.samples import (
    CASE_SIZES,
    SamplePolicy,
    recorded_policy,
)
from kexport.check.text import portable
from kexport.check.tolerance import (
    TOLERANCES,
    declared_tolerances,
    default_tolerances,
    quantization_mode,
    thresholds_for,
    tolerances_for,
)
from kexport.check.worker import Worker
from kexport.errors import SignatureError, describe
from kexport.runtime import check_precision, detect, runtime_module
from kexport.runtime._base import EndpointInfo, feeds_for
from kexport.runtime._worker import MARKER, InProcess

__all__ = ["QUANTIZED_ROWS", "VerificationReport", "declared_tolerances", "raise_if_failed",
           "store_report", "verify"]



def _precision(metadata: Mapping[str, Any], endpoints: Mapping[str, EndpointInfo]) -> str:
    """The artifact's compute precision: stated in its metadata, else from its dtypes."""
    for key in ("precision", "quantization", "dtype"):
        value = metadata.get(key)
        if isinstance(value, str) and value in TOLERANCES:
            return value
    floats = {t.dtype for e in endpoints.values() for t in (*e.inputs, *e.outputs)
              if t.dtype in TOLERANCES}
    for low in ("int8", "float16", "bfloat16", "float32", "float64"):
        if low in floats:
            return low
    return "float32"


# -- inputs -----------------------------------------------------------------


# -- the live model ---------------------------------------------------------

# -- verify -----------------------------------------------------------------

def _references(model: Any, endpoints: dict[str, EndpointInfo], default: str
                ) -> dict[str, Callable[[dict[str, Any]], list[Any]]]:
    import keras

    if isinstance(model, keras.layers.Layer):
        return {default: live_reference(model, endpoints[default].input_names)}
    if isinstance(model, Mapping):
        out = {}
        for name, fn in model.items():
            if name not in endpoints:
                raise SignatureError(
                    f"Expected `model` keys to be endpoints of the artifact "
                    f"{list(endpoints)}. Received: {name!r}"
                )
            if not callable(fn):
                raise SignatureError(
                    f"Expected a callable reference for endpoint '{name}'. "
                    f"Received: {describe(fn)}"
                )
            out[name] = live_reference(fn, endpoints[name].input_names)
        return out
    raise SignatureError(
        "Expected `model` to be a Keras model/layer, or a dict mapping endpoint "
        f"names to callables. Received: {describe(model)}"
    )


def verify(model: Any, path: str | os.PathLike[str], inputs: Any | None = None, *,
           atol: float | None = None, rtol: float | None = None, seed: int = 0,
           sizes: Sequence[int] = CASE_SIZES, store: bool = True,
           timeout: float = 600.0, precision: str | None = None,
           data: Any | None = None, scores: Sequence[str] | None = None,
           calibration_data: Any | None = None) -> VerificationReport:
    """Compare the artifact at ``path`` with the live ``model``.

    The artifact is opened with its own runtime in a fresh child process;
    the model runs here with ``training=False``.

    Args:
        model: the Keras model (checked against the artifact's default
            endpoint), or a dict ``{endpoint name: callable}`` for archives.
        path: the artifact.
        inputs: inputs for the default endpoint (one array, a list, or a dict
            by input name), or ``{endpoint: inputs}`` when ``model`` is a dict.
            ``None``: seeded random inputs (see :mod:`kexport.check.samples`:
            floats standard normal, ids over the range the artifact's
            manifest records, masks with a kept prefix, other ints 0 or 1),
            one case per entry of ``sizes``.
        atol: absolute tolerance; ``None`` picks it from the artifact's
            precision (see :data:`kexport.check.tolerance.TOLERANCES`).
        rtol: relative tolerance; ``None`` likewise.
        seed: seed of the generated inputs.
        sizes: one generated case per size ``s`` (default ``(1, 3)``): a
            dynamic axis 0 (the batch) has size ``s``, every other dynamic
            axis ``k`` size ``s + k + 1`` (distinct per axis, so wrongly
            unified dims fail). Inputs without dynamic dims give one case.
        store: also store the report inside the artifact.
        timeout: seconds the child process may take in all.
        precision: the precision the artifact's runtime computes in (see
            :func:`kexport.load`): ``None``/``"f32"`` by default on every CPU;
            ``"bf16"``/``"f16"`` where the runtime offers it, with that
            precision's tolerance (the report's ``runtime_precision``).
        data: sample data for the default endpoint, in the model's input
            structure (one array, a tuple/list, or a dict by input name):
            one case per entry of ``sizes`` takes that many rows of it
            (repeated when it has fewer) instead of generated inputs; a
            quantized artifact is also checked on every row of it (at most
            1024). Its metrics are then computed on that data.
        calibration_data: the calibration data the artifact was quantized
            on, as given to the export (``calibration_data=``, a ``.npz``
            file's arrays, batches, a ``tf.data.Dataset``; read by
            :func:`kexport.check.calibration.calibration_sample`). Without
            ``inputs``/``data`` the check runs on it (at most 1024 rows;
            the report's ``inputs`` is ``"calibration"``): a quantized
            artifact is only meaningful on inputs like those it was
            calibrated on, not on generated ones. A one-pass iterator (a
            generator, which the export has consumed) is not read: generated
            inputs then.
        scores: the names of the outputs that are class scores (logits or
            probabilities), judged by top-1/top-5 agreement when the artifact
            is quantized; ``None``: the rule of
            :func:`kexport.check.compare.is_scores` (rank 2 with at least 2
            columns, or probability rows); ``[]``: none.

    Returns:
        The :class:`VerificationReport` (check ``.ok``); integer and boolean
        outputs must match exactly.

    Example:

    ```python
    report = kexport.verify(model, "out/model")
    print(report)        # a table per endpoint and output
    assert report.ok
    ```

    Raises:
        ArtifactError: ``path`` is missing or is no artifact at all (an
            artifact that its runtime cannot open or run gives a failed
            report with ``.error`` instead).
        SignatureError: bad tolerances, sizes, precision or inputs (expected
            vs received).
        SampleDataError: ``data`` does not fit the artifact's inputs.
        QuantizationError: ``calibration_data`` (used) does not fit them.
    """
    return verify_on(model, path, inputs, atol=atol, rtol=rtol, seed=seed, sizes=sizes,
                     store=store, timeout=timeout, precision=precision, data=data,
                     scores=scores, data_source="data", calibration_data=calibration_data)


def verify_on(model: Any, path: str | os.PathLike[str], inputs: Any | None = None, *,
              atol: float | None = None, rtol: float | None = None, seed: int = 0,
              sizes: Sequence[int] = CASE_SIZES, store: bool = True, timeout: float = 600.0,
              precision: str | None = None, data: Any | None = None,
              scores: Sequence[str] | None = None, data_source: str = "data",
              calibration_data: Any | None = None,
              policy: SamplePolicy | None = None,
              in_process: bool = False, twice: bool | None = None) -> VerificationReport:
    """:func:`verify`, where ``data_source`` names where ``data`` came from in
    the report (``"data"``: the user's; ``"calibration"``: an export's
    calibration samples) and ``policy`` is the sample policy of the export
    that calls it (its context's; else the one the artifact recorded).
    ``in_process``: the artifact's runtime runs in this process (an export's
    check of its staged artifact) instead of a fresh one. ``twice``: run each
    live case twice, comparing by shape only where the two differ (random
    layers); by default for live functions by endpoint name."""
    import numpy as np

    if scores is not None and (isinstance(scores, str) or not isinstance(scores, (list, tuple))
                               or not all(isinstance(n, str) for n in scores)):
        raise SignatureError(f"Expected `scores` to be a list of output names. Received: "
                             f"{describe(scores)}")

    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value >= 0):
            raise SignatureError(f"Expected `{name}` to be a number >= 0. Received: "
                                 f"{describe(value)}")
    if (not isinstance(sizes, (list, tuple)) or not sizes
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise SignatureError(f"Expected `sizes` to be a non-empty list of ints >= 1. "
                             f"Received: {describe(sizes)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SignatureError(f"Expected `seed` to be an int. Received: {describe(seed)}")
    import keras

    if not isinstance(model, (keras.layers.Layer, Mapping)):
        raise SignatureError(
            "Expected `model` to be a Keras model/layer, or a dict mapping endpoint "
            f"names to callables. Received: {describe(model)}"
        )
    format = detect(path)
    runtime_precision = check_precision(format, precision)
    worker: Worker | InProcess = InProcess() if in_process else Worker(
        "kexport.runtime._worker", marker=MARKER, lifetime=timeout, name="kexport-verify")
    where = "in this process" if in_process else "in a fresh process"
    try:
        opened = _ask(worker, {"cmd": "open", "path": os.fspath(path),
                               "precision": runtime_precision})
        if not opened.get("ok"):
            # A recognised artifact that its runtime cannot open (corrupt
            # weights, missing files) fails verification; it is no bad input.
            d_atol, d_rtol = default_tolerances("float32")
            return VerificationReport(
                format, "float32", d_atol if atol is None else float(atol),
                d_rtol if rtol is None else float(rtol), seed,
                error=f"the artifact could not be opened {where}: "
                      f"{opened.get('error')}", runtime_precision=runtime_precision)
        endpoints = {n: EndpointInfo.from_json(n, e) for n, e in opened["endpoints"].items()}
        default = opened["default"]
        metadata = opened.get("metadata") or {}
        used = str(opened.get("precision") or runtime_precision)
        (d_atol, d_rtol), precision = tolerances_for(
            live_precision(model, _precision(metadata, endpoints)), used,
            declared_tolerances(format, metadata))
        atol = d_atol if atol is None else float(atol)
        rtol = d_rtol if rtol is None else float(rtol)
        mode = quantization_mode(metadata)
        report = VerificationReport(format, precision, atol, rtol, seed,
                                    runtime_precision=used, quantization=mode,
                                    thresholds=thresholds_for(mode))
        refs = _references(model, endpoints, default)
        # the export's policy when called by it, else the one the artifact recorded
        policy = policy or recorded_policy(metadata)
        info = endpoints[default]
        if data is None and inputs is None and policy.data is None \
                and calibration_data is not None:
            # the user's data wins; else what the artifact was calibrated on
            data = calibration_sample(calibration_data, info.inputs, info.input_names)
            data_source = "calibration"
        if data is not None:
            policy = dataclasses.replace(policy, data=flat_sample_data(
                data, info.inputs, info.input_names))
        cases: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for name in refs:
            info = endpoints[name]
            given = inputs.get(name) if isinstance(model, Mapping) and isinstance(
                inputs, Mapping) else (inputs if name == default else None)
            if given is not None:
                per_case = {"given": feeds_for(info, given)}
                report.inputs = "given"
            else:
                own = policy if name == default else dataclasses.replace(policy, data=None)
                per_case = _cases(info, sizes, seed, own)
                if report.thresholds is not None:
                    per_case.update(_quantized_case(info, sizes, seed, own))
                if name == default and own.data is not None:
                    report.inputs = data_source
            for case, feeds in per_case.items():
                cases[f"{name}.{case}"] = (name, case, feeds)
        with tempfile.TemporaryDirectory(prefix="kexport-verify-") as tmp:
            in_file, out_file = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
            np.savez(in_file, **{f"{key}/{n}": portable(v) for key, (_, _, feeds) in cases.items()
                                 for n, v in feeds.items()})
            ran = _ask(worker, {"cmd": "run", "inputs": in_file, "outputs": out_file,
                              "calls": [[key, ep] for key, (ep, _, _) in cases.items()]})
            if not ran.get("ok"):
                report.error = str(ran.get("error"))
                return report
            with np.load(out_file, allow_pickle=False) as data:
                received = {k: np.array(data[k]) for k in data.files}
        _checked(report, endpoints, cases, refs, received, ran.get("errors", {}), scores,
                 twice=isinstance(model, Mapping) if twice is None else twice)
    finally:
        worker.close({"cmd": "exit"})
    if store and report.error is None:
        store_report(format, path, report)
    return report


def _ask(worker: Worker | InProcess, request: dict[str, Any]) -> dict[str, Any]:
    """The runtime worker's reply, or a failed one saying how the child process ended."""
    reply = worker.ask(request)
    if reply is not None:
        return reply
    tail = worker.log_tail(500, lines=5)
    return {"ok": False, "error": f"the child process ended (exit code "
                                  f"{worker.exit_code()}): {tail}"}


def store_report(format: str, path: str | os.PathLike[str], report: VerificationReport) -> bool:
    """Store ``report`` inside the artifact, if its format's runtime can.

    Returns:
        Whether it was stored.
    """


    module = runtime_module(format)
    writer = getattr(module, "store_report", None)
    if writer is None:
        return False
    writer(Path(os.fspath(path)), report.to_json())
    return True

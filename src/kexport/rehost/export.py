"""The re-host pipeline: describe, rebuild and export in the child, check, place.

See :mod:`kexport.rehost` for the four steps. :func:`rehost` runs them for
any set of tracked models and endpoints (one model: :func:`rehost_export`;
an archive: :func:`kexport.rehost.archive.write_archive_rehosted`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kexport._atomic import check_filepath
from kexport._dims import plan_signature
from kexport._inference import infer, inference_fn
from kexport.artifact import DEFAULT_ENDPOINT
from kexport.capture.endpoint import EndpointRecipe, is_layer
from kexport.check.report import VerificationReport
from kexport.check.tolerance import FLOAT32
from kexport.context import ExportContext, Printer
from kexport.errors import SignatureError, SignatureTypeError, VerificationError, describe
from kexport.rehost.cases import LiveCase, live_cases, report_on
from kexport.rehost.diagnosis import diagnosis
from kexport.rehost.dtypes import source_dtypes
from kexport.rehost.eligibility import check_rehostable
from kexport.rehost.job import CaseRef, Job
from kexport.rehost.placement import place
from kexport.rehost.serialize import serialize
from kexport.rehost.worker import run_child
from kexport.signature import normalize_for_model

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "json_kwargs", "rehost", "rehost_export"]

DEFAULT_ATOL, DEFAULT_RTOL = FLOAT32  # the check's float32 row (kexport.check.tolerance)


def _policy_fields(work: Path, context: ExportContext) -> dict[str, Any]:
    """The export's sample policy, for the child's own checks (same kind of inputs)."""
    import numpy as np

    policy = context.samples
    if not policy:
        return {}
    fields: dict[str, Any] = {"samples": policy.to_json()}
    if policy.data is not None:
        fields["sample_data"] = tuple(policy.data)
        np.savez(work / "sample_data.npz",
                 **{f"arr_{i}": v for i, v in enumerate(policy.data.values())})
    return fields


def _refusal(report: VerificationReport, job: Job) -> str:
    """The message of a refused re-host: what differs, case by case and pooled."""
    lines = [f"  endpoint '{c.endpoint}' {c.case}: {c.output} max abs error "
             f"{c.max_abs:.3g} (shapes live {c.expected_shape} vs artifact "
             f"{c.received_shape})" + (f": {c.error}" if c.error else "")
             for c in report.failures]
    lines += [f"  endpoint '{r['endpoint']}' {r['output']}, pooled over the "
              f"batches: {'; '.join(r['failed'])}" for r in report.summary() if r["failed"]]
    rule = (f"the {report.quantization} thresholds" if report.quantization is not None
            else f"atol={report.atol}, rtol={report.rtol}")
    return (f"The {job.format} artifact re-hosted from the {job.source_backend} backend onto "
            f"{job.host} does not compute what the live model computes ({rule}); nothing "
            f"was written to the target path:\n" + "\n".join(lines))


def _first_failing(cases: Mapping[str, list[LiveCase]], report: VerificationReport
                   ) -> tuple[str, LiveCase] | None:
    """The first case with a failed output (else the first case of an endpoint whose
    pooled quality failed)."""
    failed = [(c.endpoint, c.case) for c in report.failures] + [
        (r["endpoint"], r["cases"][0]) for r in report.summary() if r["failed"]]
    if not failed:
        return None
    endpoint, label = failed[0]
    labels = [c.case for c in report.checks if c.endpoint == endpoint]
    order = list(dict.fromkeys(labels))
    return endpoint, cases[endpoint][order.index(label)]


def rehost(models: list[Any], recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
           filepath: str | os.PathLike[str], format: str, host: str,
           fields: Mapping[str, Any], atol: float, rtol: float,
           given: list[list[Any]] | Mapping[str, list[list[Any]]] | None = None,
           quantized: str | None = None, carried: Mapping[str, Any] | None = None,
           *, context: ExportContext) -> VerificationReport:
    """Run the whole re-host pipeline; return the verification report.

    ``fields``: the job's fields of this kind of re-host (``mode``,
    ``kwargs``, an archive's collections...). ``carried``: arrays the child
    reads from ``carried.npz`` (e.g. an archive's calibration batches, named
    by the job)."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    assert isinstance(filepath, (str, os.PathLike)), filepath  # checked where the call entered
    target = Path(os.fspath(filepath))
    check_rehostable(models, host)
    with tempfile.TemporaryDirectory(prefix="kexport-rehost-") as tmpdir:
        work = Path(tmpdir)
        os.chmod(work, 0o700)
        files, modules = serialize(models, host, work)
        arrays, cases = live_cases(recipes, models, given, context.samples)
        np.savez(work / "inputs.npz", **arrays)
        if carried:
            np.savez(work / "carried.npz", **carried)
        (work / "out").mkdir()
        out = work / "out" / (target.name or "artifact")
        job = Job(format=format, host=host, source_backend=backend, models=tuple(files),
                  imports=tuple(modules), output=str(out), verbose=context.printer.on,
                  endpoints=tuple(r for r, _ in recipes),
                  output_dtypes=source_dtypes({n: [e.live for e in es]
                                               for n, es in cases.items()}),
                  cases={n: tuple(CaseRef(e.key, e.inputs) for e in es)
                         for n, es in cases.items()},
                  **_policy_fields(work, context), **fields)
        result = run_child(job, work)
        with np.load(work / "outputs.npz") as data:
            outputs = {k: data[k] for k in data.files}
        report = report_on(cases, outputs, format, atol, rtol, quantized, given is not None)
        if not report.ok and context.judged:  # a probe's numbers are judged by its caller
            raise VerificationError(
                _refusal(report, job) + diagnosis(models, recipes, _first_failing(
                    cases, report), job, work, atol, rtol), report=report)
        place(out, filepath, overwrite=context.overwrite)
        text = result.get("stdout", "").replace(str(out), os.fspath(filepath))
        context.printer(f"kexport: re-hosted from the {backend} backend onto {host}; "
                        f"verified {sum(len(es) for es in cases.values())} sample batches")
        if text.strip():
            context.printer(text.rstrip())
    return report


def json_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
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
                  quantized: str | None = None, context: ExportContext | None = None,
                  **kwargs: Any) -> VerificationReport:
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
            value, :mod:`kexport.rehost.recipe`).
        filepath: where the artifact goes (``str`` or ``pathlib.Path``).
        format: any format the target backend writes natively
            (``"tf_saved_model"``, ``"onnx"``, ...).
        target_backend: the Keras backend that writes the artifact.
        input_signature: as for :func:`kexport.export_model`; computed from
            the model when omitted (dynamic batch).
        verbose: print a summary of what was written (default ``True``);
            ignored when ``context`` is given (its printer says it, and the
            arguments were checked where that context was built).
        atol: absolute tolerance of the comparison with the live model.
        rtol: relative tolerance of that comparison.
        sample_inputs: inputs to compare on instead of random ones: one flat
            list of arrays (one per model input, in signature order) per batch.
        quantized: the quantization mode the artifact is written in: its
            float outputs are then judged by that mode's thresholds
            (:data:`kexport.check.tolerance.QUANTIZED`) instead of ``atol``/``rtol``.
        context: the export's :class:`~kexport.context.ExportContext`
            (``overwrite``, the sample policy its checks draw under, its
            printer); by default a new export that replaces only kexport
            artifacts, printing as ``verbose`` says.
        **kwargs: passed to the child's ``export_model`` (JSON-able values
            only, e.g. ``opset_version=17``).

    Returns:
        The :class:`~kexport.check.report.VerificationReport` (the type
        :func:`kexport.verify` returns): one check per output and batch.

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
    from kexport.rehost import rehost_export
    rehost_export(model, "out_dir", format="tf_saved_model")
    ```
    """
    if context is None:  # called directly: this is where the call enters, and is checked
        if not is_layer(model):
            raise SignatureTypeError(
                f"Expected `model` to be a Keras model or layer. Received: {describe(model)}")
        check_filepath(filepath)
        context = ExportContext(printer=Printer.resolve(verbose))
    signature = plan_signature(inference_fn(model), normalize_for_model(model, input_signature),
                               say=context.printer.say)
    recipe = EndpointRecipe(DEFAULT_ENDPOINT, 0, "__call__", {"training": False}, signature)

    def live(*args: Any) -> Any:
        return infer(model, *args)

    return rehost([model], [(recipe, live)], filepath, format, target_backend,
                  {"mode": "model", "kwargs": json_kwargs(dict(kwargs))}, atol, rtol,
                  sample_inputs, quantized, context=context)

"""Accepting a fast converter's ONNX graph only when ONNX Runtime agrees with the model.

Fast converters (the traced ``torch.onnx`` exporter, ``jax2onnx``) can silently
fix a dynamic dimension or produce a graph ONNX Runtime cannot run. Their
output is used only after :class:`Acceptance` ran the finished graph
(optimised, named: the bytes that will be written) at the check's case
sizes (:data:`kexport.check.samples.CASE_SIZES`, batch 1 and 3; every other
dynamic axis at a size of its own, none equal to the sample the converter
saw) and compared it with the live model with the comparison and float32
tolerances every kexport check uses (:mod:`kexport.check`); anything else
raises :class:`NotTraceable` and the caller moves on to its next strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from kexport._numerics import onnxruntime_options
from kexport.check.report import VerificationReport
from kexport.check.samples import CASE_SIZES, SamplePolicy, sample_inputs
from kexport.check.tolerance import FLOAT32
from kexport.check.verdict import Case, verdict
from kexport.context import ExportContext
from kexport.errors import SignatureError
from kexport.signature import Spec

__all__ = ["Acceptance", "NotTraceable", "samples"]


class NotTraceable(Exception):
    """The fast graph cannot be trusted for this model; use the next strategy."""


def samples(specs: Sequence[Spec], batch: int, seed: int, policy: SamplePolicy | None,
            sized_as: int | None = None, data: bool = True) -> list[Any]:
    """:func:`kexport.check.samples.sample_inputs` (under the export's sample ``policy``:
    id ranges, masks, user data unless ``data=False``), a string input being
    :class:`NotTraceable` (a fast converter cannot take it; the next strategy runs)."""
    if not data and any(s.dtype == "string" for s in specs):  # a converter's trace sample
        raise NotTraceable("string inputs: a fast converter cannot trace them")
    try:
        return sample_inputs(specs, batch, seed, sized_as=sized_as, data=data, policy=policy)
    except SignatureError as e:
        raise NotTraceable(str(e)) from e


def _cases(specs: Sequence[Spec], policy: SamplePolicy | None) -> list[list[Any]]:
    # Every batch shares its other dynamic sizes (none the converter saw), so the
    # live model runs once on all of them concatenated (JAX compiles per shape);
    # a model that mixes samples across the batch then fails the check: safe.
    return [samples(specs, batch, seed, policy, sized_as=CASE_SIZES[0])
            for seed, batch in enumerate(CASE_SIZES, start=1)]


def _run_in_onnxruntime(data: bytes | str, names: Sequence[str], cases: list[list[Any]],
                        wants: Callable[[], list[list[Any]]], judged: bool) -> None:
    """Run the graph on ``cases``; :func:`~kexport.check.verdict.verdict` judges its outputs
    against the live ones (unless not ``judged``: a localiser probe)."""
    import onnxruntime as ort

    # a graph ONNX Runtime cannot run is an answer here, not an error to print:
    # the next strategy runs (ORT would log it in red on stderr)
    options = onnxruntime_options(threads=1, log_level=4)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        gots = [session.run(None, dict(zip(names, flat, strict=True))) for flat in cases]
        del session
    except Exception as e:
        raise NotTraceable(f"ONNX Runtime: {type(e).__name__}: {str(e)[:300]}") from e
    wanted = wants()
    if any(len(got) != len(want) for got, want in zip(gots, wanted, strict=True)):
        raise NotTraceable("gives another number of outputs than the live model")
    if not judged:  # a probe's numbers are judged by its caller
        return
    report = verdict(VerificationReport("onnx", "float32", *FLOAT32, 0), [
        Case("serve", f"batch {batch}", dict(zip(names, flat, strict=True)), want, got)
        for batch, flat, got, want in zip(CASE_SIZES, cases, gots, wanted, strict=True)])
    if not report.ok:
        where = report.failures[0].case if report.failures else "every batch"
        raise NotTraceable(f"differs from the live model at {where}")


class Acceptance:
    """The check of a fast converter's graph against one model: ``RawGraph.accept``.

    Calling it runs the graph (serialized, or a file's path) in ONNX Runtime
    and compares it with the live model; it raises :class:`NotTraceable` when
    ONNX Runtime cannot load or run it or an output differs.

    The live model's outputs on the check inputs start computing at once, in
    a background thread, so they are ready by the time the finished graph
    (optimised, named) is checked: the reference overlaps kexport's own
    graph passes instead of adding to them. Calling the object (or
    :meth:`close`) waits for that thread, so no live call is left running
    when a later strategy starts tracing the model.
    """

    def __init__(self, names: Sequence[str], specs: Sequence[Spec],
                 live: Callable[[list[Any]], list[Any]], context: ExportContext) -> None:
        self.names = list(names)
        self.judged = context.judged
        self.cases = _cases(specs, context.samples)
        pool = ThreadPoolExecutor(1, thread_name_prefix="kexport-live")
        self._reference = pool.submit(_live_once, self.cases, specs, live)
        pool.shutdown(wait=False)

    def __call__(self, data: bytes | str) -> None:
        """Raises :class:`NotTraceable` unless ONNX Runtime reproduces the live model."""
        try:
            # the live model's own errors propagate as they are
            _run_in_onnxruntime(data, self.names, self.cases, self._reference.result,
                                self.judged)
        finally:
            self.close()

    def close(self) -> None:
        """Wait for the live reference (its errors are for ``__call__`` to raise)."""
        wait([self._reference])


def _live_once(cases: list[list[Any]], specs: Sequence[Spec],
               live: Callable[[list[Any]], list[Any]]) -> list[list[Any]]:
    """``[live(case) for case in cases]``, in one call where every axis 0 is the batch."""
    import numpy as np

    if not specs or any(not s.shape or s.shape[0] is not None for s in specs):
        return [live(case) for case in cases]
    joined = live([np.concatenate(parts, axis=0) for parts in zip(*cases, strict=True)])
    total = sum(len(case[0]) for case in cases)
    if any(np.ndim(o) == 0 or np.shape(o)[0] != total for o in joined):
        return [live(case) for case in cases]
    out, start = [], 0
    for case in cases:
        n = len(case[0])
        out.append([np.asarray(o)[start:start + n] for o in joined])
        start += n
    return out

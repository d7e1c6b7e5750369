"""The one verdict: does an artifact compute what the live model computes?

Every check of kexport decides here, and nowhere else: :func:`kexport.verify`
(the artifact run by its own runtime in a fresh process), the re-host check
before an artifact is placed (:mod:`kexport.rehost`) and the ONNX Runtime
acceptance of a fast converter's graph (``formats/onnx/_accept.py``). Each
gathers its :class:`Case` objects -- one endpoint's inputs on one case, the
live outputs and the artifact's -- and :func:`verdict` turns them into the
one report type, :class:`~kexport.check.report.VerificationReport`, one
:class:`~kexport.check.report.OutputCheck` per endpoint, output and case:

- positions the inputs' padding mask pads are left out
  (:mod:`kexport.check.padding`) and counted;
- a float artifact: every element within ``atol``/``rtol``
  (:func:`kexport.check.compare.elementwise`), integer, boolean and string
  outputs exactly;
- a quantized artifact (the report's ``thresholds`` set): float outputs need
  their shapes and NaN positions alike here, and the mode's thresholds on
  their quality metrics pooled over the cases
  (:meth:`~kexport.check.report.VerificationReport.summary`);
- a case whose live outputs differ between two identical calls
  (``values=False``: random layers in training mode): shapes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kexport.check.compare import elementwise, is_scores, quality, tolerance_for
from kexport.check.padding import drop_padded, kept_positions, padding_masks
from kexport.check.report import OutputCheck, VerificationReport

__all__ = ["Case", "verdict"]


@dataclass(frozen=True)
class Case:
    """One endpoint on one case: its inputs, the live outputs and the artifact's.

    Attributes:
        endpoint: the endpoint's name.
        name: the case, e.g. ``"dyn=3"`` or ``"batch=3"``.
        inputs: the inputs by name (their shapes are reported; padding masks
            among them leave positions out).
        expected: the live model's outputs, in order.
        received: the artifact's outputs in the order of ``output_names``
            (an entry ``None``: that output did not come back).
        output_names: the artifact's output names (default ``output_<i>``).
        error: why the artifact produced no outputs for this case.
        values: ``False``: only shapes are compared (live outputs that differ
            between two identical calls).
    """

    endpoint: str
    name: str
    inputs: Mapping[str, Any]
    expected: Sequence[Any]
    received: Sequence[Any | None]
    output_names: Sequence[str] = ()
    error: str | None = None
    values: bool = True


def verdict(report: VerificationReport, cases: Iterable[Case],
            scores: Sequence[str] | None = None) -> VerificationReport:
    """Judge ``cases`` by ``report``'s tolerances (and thresholds); return ``report``
    with one :class:`OutputCheck` per output of every case added (``report.ok``:
    the verdict).

    Args:
        report: the report to fill: its ``atol``/``rtol`` (and, for a quantized
            artifact, ``thresholds``) are the rule.
        cases: the cases to judge.
        scores: the outputs that are class scores (:func:`is_scores`).
    """
    for case in cases:
        report.checks.extend(_case_checks(report, case, scores))
    return report


def _case_checks(report: VerificationReport, case: Case,
                 scores: Sequence[str] | None) -> list[OutputCheck]:
    import numpy as np

    received = list(case.received)
    names = list(case.output_names) or [f"output_{i}" for i in range(len(received))]
    error = case.error
    if error is None and len(case.expected) != len(names):
        error = (f"the model has {len(case.expected)} outputs, the artifact {len(names)} "
                 f"({names})")
    names += [f"output_{i}" for i in range(len(names), len(case.expected))]
    shapes = {str(n): list(np.shape(v)) for n, v in case.inputs.items()}
    masks = padding_masks(case.inputs)
    out = []
    for i, name in enumerate(names):
        want = case.expected[i] if i < len(case.expected) else None
        got = received[i] if i < len(received) else None
        if want is None or got is None or error:
            atol, rtol = ((report.atol, report.rtol) if want is None
                          else tolerance_for(want, report.atol, report.rtol))
            out.append(OutputCheck(
                case.endpoint, name, case.name, shapes,
                list(np.shape(want)) if want is not None else [],
                list(np.shape(got)) if got is not None else None, float("inf"),
                float("inf"), atol, rtol, False, error or "no output",
                compared="values" if case.values else "shapes"))
            continue
        out.append(_output_check(report, case, name, want, got, masks, shapes, scores))
    return out


def _output_check(report: VerificationReport, case: Case, name: str, want: Any, got: Any,
                  masks: Mapping[str, Any], shapes: dict[str, list[int]],
                  scores: Sequence[str] | None) -> OutputCheck:
    import numpy as np

    is_score = is_scores(want, name, scores)  # by the output's own shape
    want_shape, got_shape = list(np.shape(want)), list(np.shape(got))
    # outputs at padded positions are undefined: compared where the mask keeps them
    want, got, padded = drop_padded(want, got, kept_positions(masks, name, want_shape))
    atol, rtol = tolerance_for(want, report.atol, report.rtol)
    max_abs, max_rel, ok = elementwise(want, got, atol, rtol)
    q = quality(want, got, is_score) if case.values else None
    if not case.values:
        ok = want_shape == got_shape  # the live model itself varies: shapes only
    elif report.thresholds is not None and np.asarray(want).dtype.kind == "f":
        ok = q is not None  # same shape, NaNs alike: the pooled thresholds judge the rest
    return OutputCheck(
        case.endpoint, name, case.name, shapes, want_shape, got_shape, max_abs, max_rel,
        atol, rtol, bool(ok), quality=q, scores=is_score and q is not None and q.rows > 0,
        padded=padded, compared="values" if case.values else "shapes")

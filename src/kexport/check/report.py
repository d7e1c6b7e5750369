"""The report of a check: one :class:`OutputCheck` per endpoint, output and case.

:class:`VerificationReport` is what every check returns, through the one
verdict (:func:`kexport.check.verdict.verdict`): :func:`kexport.verify` (and
``kexport.VerificationReport``), the re-host check, the ONNX acceptance. It
prints as a table, has ``.ok``, converts
to and from JSON (what is stored inside an artifact, without local paths).

Every float output also carries its :class:`~kexport.check.compare.Quality`
(SQNR, cosine per sample, top-1/top-5 for score outputs), pooled over the
cases in :meth:`VerificationReport.summary`. A float artifact is judged
elementwise (``atol``/``rtol``) case by case; a quantized one
(``quantization`` set) by its mode's
:class:`~kexport.check.tolerance.Thresholds` on the pooled numbers, which
the report carries, prints and writes to JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kexport._numerics import short
from kexport._version import __version__
from kexport.check.compare import Quality, missed_thresholds
from kexport.check.tolerance import Thresholds
from kexport.errors import VerificationError

__all__ = ["OutputCheck", "VerificationReport", "raise_if_failed"]


def _shape(shape: list[int]) -> str:
    """``[3, 2]`` -> ``'(3, 2)'``, ``[3]`` -> ``'(3,)'`` (a report's shapes are concrete)."""
    return str(tuple(shape))


@dataclass(frozen=True)
class OutputCheck:
    """One output of one endpoint on one input case.

    Attributes:
        endpoint: the endpoint's name.
        output: the output's name.
        case: which inputs, e.g. ``"dyn=1"`` (every dynamic dim 1) or ``"given"``.
        input_shapes: the input shapes of the case.
        expected_shape: the live model's output shape.
        received_shape: the artifact's output shape (``None`` if it failed).
        max_abs: max absolute error (``inf`` when shapes differ).
        max_rel: max relative error, over elements where the model's value
            exceeds ``atol`` in magnitude.
        atol: absolute tolerance used.
        rtol: relative tolerance used.
        ok: whether shapes match and every element is within tolerance
            (for a quantized artifact's float output: whether shapes match
            and NaNs sit alike; its numbers are judged pooled, see
            :meth:`VerificationReport.summary`).
        error: why the artifact produced no output, if it did not.
        quality: SQNR, cosine and top-k sums of a float output (``None``
            for other outputs, or when shapes differ).
        scores: whether the output was judged as class scores (top-k).
        padded: (batch, length) positions not compared because the inputs'
            padding mask marks them as padding (:mod:`kexport.check.padding`).
        compared: ``"values"``, or ``"shapes"`` where only the shape was
            compared (live outputs that differ between two identical calls).
    """

    endpoint: str
    output: str
    case: str
    input_shapes: dict[str, list[int]]
    expected_shape: list[int]
    received_shape: list[int] | None
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool
    error: str | None = None
    quality: Quality | None = None
    scores: bool = False
    padded: int = 0
    compared: str = "values"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: the fields, ``quality`` as its sums plus the derived metrics."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.quality is not None:
            d["quality"] = self.quality.to_json()
            d.update(self.quality.metrics())
        return _finite(d)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputCheck:
        names = {f.name for f in fields(cls)}
        d = {k: _unfinite(v) for k, v in data.items() if k in names}
        if isinstance(d.get("quality"), Mapping):
            d["quality"] = Quality.from_json(d["quality"])
        return cls(**d)

    @property
    def shape_ok(self) -> bool:
        """Whether the artifact's output has the model's shape."""
        return self.received_shape == self.expected_shape


@dataclass
class VerificationReport:
    """The outcome of :func:`kexport.verify`.

    Attributes:
        format: the artifact's format.
        precision: the compute precision the tolerances were chosen for.
        atol: default absolute tolerance of the run.
        runtime_precision: the precision the artifact's runtime computed in,
            as the runtime reported it (``"float32"`` unless asked otherwise).
        rtol: default relative tolerance of the run.
        seed: seed of the generated inputs.
        checks: one :class:`OutputCheck` per endpoint, output and case.
        error: why the artifact could not be opened or run at all.
        quantization: the quantization mode the artifact records (``None``:
            a float artifact, judged by ``atol``/``rtol``).
        thresholds: the mode's :class:`~kexport.check.tolerance.Thresholds`
            its float outputs were judged by (``None`` for a float artifact).
        inputs: where the compared inputs came from: ``"given"`` (``inputs=``),
            ``"data"`` (the user's sample data), ``"calibration"`` or
            ``"generated"``.
    """

    format: str
    precision: str
    atol: float
    rtol: float
    seed: int
    checks: list[OutputCheck] = field(default_factory=list)
    error: str | None = None
    runtime_precision: str = "float32"
    quantization: str | None = None
    thresholds: Thresholds | None = None
    inputs: str = "generated"

    @property
    def ok(self) -> bool:
        """True when every check passed (and there was at least one); for a
        quantized artifact, every output also meets its mode's thresholds."""
        return (self.error is None and bool(self.checks)
                and all(row["ok"] for row in self.summary()))

    @property
    def failures(self) -> list[OutputCheck]:
        """The checks that failed, case by case (a quantized artifact's outputs
        that miss its thresholds: :attr:`failed_outputs`)."""
        return [c for c in self.checks if not c.ok]

    @property
    def failed_outputs(self) -> list[str]:
        """``"endpoint/output"`` of every output that failed, in any case or pooled."""
        return [f"{r['endpoint']}/{r['output']}" for r in self.summary() if not r["ok"]]

    @property
    def max_abs(self) -> float:
        """The largest absolute error over every check."""
        return max((c.max_abs for c in self.checks), default=0.0)

    def summary(self) -> list[dict[str, Any]]:
        """One row per endpoint and output: the worst case's errors, the
        quality metrics pooled over the cases (``samples``, ``sqnr_db``,
        ``cosine_min``, ``cosine_mean``, ``top1``, ``top5``; ``None`` where they
        do not apply), and ``ok``: every case passed and, for a quantized
        artifact, the pooled metrics meet :attr:`thresholds` (``failed``
        says which did not)."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        parts: dict[tuple[str, str], list[Quality]] = {}
        for c in self.checks:
            key = (c.endpoint, c.output)
            row = rows.setdefault(key, {
                "endpoint": c.endpoint, "output": c.output, "cases": [],
                "shape_match": True, "max_abs": 0.0, "max_rel": 0.0,
                "atol": c.atol, "rtol": c.rtol, "scores": c.scores, "ok": True,
                "failed": []})
            row["cases"].append(c.case)
            row["shape_match"] &= c.shape_ok
            row["max_abs"] = max(row["max_abs"], c.max_abs)
            row["max_rel"] = max(row["max_rel"], c.max_rel)
            row["ok"] &= c.ok
            if c.quality is not None:
                parts.setdefault(key, []).append(c.quality)
        for key, row in rows.items():
            pooled = Quality.pooled(parts.get(key, []))
            row["samples"] = pooled.samples if pooled is not None else 0
            row.update(pooled.metrics() if pooled is not None else dict.fromkeys(
                ("sqnr_db", "cosine_min", "cosine_mean", "top1", "top5")))
            if self.thresholds is not None and row["ok"] and pooled is not None:
                row["failed"] = missed_thresholds(pooled, self.thresholds)
                row["ok"] = not row["failed"]
        return list(rows.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what is stored in the artifact)."""
        return {
            "producer": "kexport", "producer_version": __version__,
            "ok": self.ok, "format": self.format, "precision": self.precision,
            "runtime_precision": self.runtime_precision, "atol": self.atol, "rtol": self.rtol, "seed": self.seed,
            "quantization": self.quantization,
            "thresholds": self.thresholds.to_json() if self.thresholds is not None else None,
            "inputs": self.inputs,
            "error": self.error, "summary": [_finite(r) for r in self.summary()],
            "checks": [c.to_json() for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerificationReport:
        """Rebuild a report from :meth:`to_json` output."""
        checks = [OutputCheck.from_json(c) for c in data.get("checks", [])]
        thresholds = data.get("thresholds")
        return cls(data["format"], data["precision"], data["atol"], data["rtol"],
                   data["seed"], checks, data.get("error"),
                   data.get("runtime_precision", "float32"), data.get("quantization"),
                   Thresholds.from_json(thresholds) if isinstance(thresholds, Mapping) else None,
                   data.get("inputs", "generated"))

    def table(self) -> str:
        """The report as a text table, one row per endpoint and output."""
        head = ("endpoint", "output", "cases", "shape", "max abs err", "max rel err",
                "SQNR dB", "cos min", "top-1", "top-5",
                "thresholds" if self.thresholds is not None else "tolerance", "result")
        rows = [head]
        t = self.thresholds
        for r in self.summary():
            if t is None or r["sqnr_db"] is None:
                rule = f"atol={r['atol']:g} rtol={r['rtol']:g}" if r["atol"] or r["rtol"] \
                    else "exact"
            else:
                rule = f"SQNR>={t.sqnr_db:g} cos>={t.cosine:g}" + (
                    f" top1>={t.top1:g}" if r["top1"] is not None else "") + (
                    f" top5>={t.top5:g}" if r["top5"] is not None else "")
            rows.append((r["endpoint"], r["output"], " ".join(r["cases"]),
                         "ok" if r["shape_match"] else "MISMATCH",
                         f"{r['max_abs']:.3g}", f"{r['max_rel']:.3g}",
                         _num(r["sqnr_db"], ".1f"), _num(r["cosine_min"], ".4f"),
                         _num(r["top1"], ".3f"), _num(r["top5"], ".3f"),
                         rule, "pass" if r["ok"] else "FAIL"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "PASSED" if self.ok else "FAILED"
        judged = (f"quantized {self.quantization}: judged by SQNR, cosine and top-k on "
                  f"{self.inputs} inputs" if self.thresholds is not None
                  else f"tolerances for {self.precision}")
        title = (f"Verification {verdict} ({self.format}, runtime {short(self.runtime_precision)}"
                 f", {judged}, seed {self.seed})")
        out = [title, *lines] if self.checks else [title]
        if self.error:
            out.append(f"error: {self.error}")
        for r in self.summary():
            if r["failed"]:
                out.append(f"{r['endpoint']}/{r['output']} below the {self.quantization} "
                           f"thresholds: {'; '.join(r['failed'])}")
        padded: dict[str, int] = {}
        for c in self.checks:
            if c.padded:
                key = f"{c.endpoint}/{c.output}"
                padded[key] = padded.get(key, 0) + c.padded
        if padded:
            out.append("not compared: positions the inputs' padding mask marks as padding "
                       "(undefined there), " + ", ".join(f"{k} {n}" for k, n in padded.items()))
        if not self.ok and self.thresholds is not None and self.inputs == "generated":
            out.append(f"note: a {self.quantization} artifact was judged on generated inputs, "
                       "which can lie outside what it was calibrated for; check it on real "
                       "inputs (data= / --data) or on its calibration data "
                       "(calibration_data= / --calibration)")
        for c in self.failures:
            if c.error:
                out.append(f"error in {c.endpoint}/{c.output} [{c.case}]: {c.error}")
            elif not c.shape_ok:
                out.append(f"shape mismatch in {c.endpoint}/{c.output} [{c.case}]: expected "
                           f"{_shape(c.expected_shape)}, received "
                           f"{_shape(c.received_shape or [])}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def raise_if_failed(report: VerificationReport, path: str | os.PathLike[str],
                    placed: bool = True) -> None:
    """Raise :class:`VerificationError` carrying ``report`` unless it passed
    (``placed=False``: the artifact was checked before it was placed at ``path``,
    and was not placed)."""
    if report.ok:
        return
    names = sorted(set(report.failed_outputs))
    rule = (f"below the {report.quantization} thresholds (SQNR >= {report.thresholds.sqnr_db:g} "
            f"dB, cosine >= {report.thresholds.cosine:g}, top-1 >= {report.thresholds.top1:g})"
            if report.thresholds is not None
            else f"out of tolerance atol={report.atol:g}, rtol={report.rtol:g}")
    where = (f"at '{os.fspath(path)}'" if placed else
             f"written for '{os.fspath(path)}' was checked before it was placed and")
    errors = [c.error for c in report.failures if c.error]
    if report.error is not None:
        why = f"could not be run: {report.error}"
    elif errors and len(errors) == len(report.failures):  # its runtime refused every case
        why = f"could not be run by its runtime: {errors[0][:400]}"
    else:
        why = f"does not compute what the model computes (outputs {names or 'none'} {rule})"
    after = "" if placed else (" Nothing was written: what was at the path is kept. Pass "
                               "verify=False to write it unchecked.")
    raise VerificationError(
        f"The {report.format} artifact {where} {why}.{after}\n{report.table()}", report)


def _num(value: float | None, spec: str) -> str:
    """A metric for the table: ``-`` where it does not apply."""
    return "-" if value is None else format(value, spec)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf/nan: store them as strings."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def _unfinite(v: Any) -> Any:
    return float(v) if v in ("inf", "-inf", "nan") else v

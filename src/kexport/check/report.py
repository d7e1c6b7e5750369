"""The report of a check: one :class:`OutputCheck` per endpoint, output and case.

:class:`VerificationReport` is what :func:`kexport.verify` returns (and
``kexport.VerificationReport``): it prints as a table, has ``.ok``, converts
to and from JSON (what is stored inside an artifact, without local paths).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from kexport._numerics import short
from kexport._version import __version__

__all__ = ["OutputCheck", "VerificationReport"]


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
        ok: whether shapes match and every element is within tolerance.
        error: why the artifact produced no output, if it did not.
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
    """

    format: str
    precision: str
    atol: float
    rtol: float
    seed: int
    checks: list[OutputCheck] = field(default_factory=list)
    error: str | None = None
    runtime_precision: str = "float32"

    @property
    def ok(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[OutputCheck]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    @property
    def max_abs(self) -> float:
        """The largest absolute error over every check."""
        return max((c.max_abs for c in self.checks), default=0.0)

    def summary(self) -> list[dict[str, Any]]:
        """One row per endpoint and output, worst case over the input cases."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.checks:
            row = rows.setdefault((c.endpoint, c.output), {
                "endpoint": c.endpoint, "output": c.output, "cases": [],
                "shape_match": True, "max_abs": 0.0, "max_rel": 0.0,
                "atol": c.atol, "rtol": c.rtol, "ok": True})
            row["cases"].append(c.case)
            row["shape_match"] &= c.shape_ok
            row["max_abs"] = max(row["max_abs"], c.max_abs)
            row["max_rel"] = max(row["max_rel"], c.max_rel)
            row["ok"] &= c.ok
        return list(rows.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what is stored in the artifact)."""
        return {
            "producer": "kexport", "producer_version": __version__,
            "ok": self.ok, "format": self.format, "precision": self.precision,
            "runtime_precision": self.runtime_precision, "atol": self.atol, "rtol": self.rtol, "seed": self.seed,
            "error": self.error, "summary": self.summary(),
            "checks": [_finite(asdict(c)) for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerificationReport:
        """Rebuild a report from :meth:`to_json` output."""
        checks = [OutputCheck(**{k: _unfinite(v) for k, v in c.items()})
                  for c in data.get("checks", [])]
        return cls(data["format"], data["precision"], data["atol"], data["rtol"],
                   data["seed"], checks, data.get("error"),
                   data.get("runtime_precision", "float32"))

    def table(self) -> str:
        """The report as a text table, one row per endpoint and output."""
        head = ("endpoint", "output", "cases", "shape", "max abs err", "max rel err",
                "tolerance", "result")
        rows = [head]
        for r in self.summary():
            rows.append((r["endpoint"], r["output"], " ".join(r["cases"]),
                         "ok" if r["shape_match"] else "MISMATCH",
                         f"{r['max_abs']:.3g}", f"{r['max_rel']:.3g}",
                         f"atol={r['atol']:g} rtol={r['rtol']:g}",
                         "pass" if r["ok"] else "FAIL"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "PASSED" if self.ok else "FAILED"
        title = (f"Verification {verdict} ({self.format}, runtime {short(self.runtime_precision)}"
                 f", tolerances for {self.precision}, seed {self.seed})")
        out = [title, *lines] if self.checks else [title]
        if self.error:
            out.append(f"error: {self.error}")
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


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf/nan: store them as strings."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def _unfinite(v: Any) -> Any:
    return float(v) if v in ("inf", "nan") else v

"""The localiser's report: per Keras layer, how far the artifact's tensors are from the live ones.

:func:`kexport.localize` builds a :class:`LocalizationReport` from a probe's
verification (:mod:`kexport.check.probe`, :mod:`kexport.verify`): one
:class:`LayerRow` per recorded sublayer call, in topological order, with the
error of its inputs and of its outputs, the tolerance they were judged by
(the artifact's row of :data:`kexport.check.tolerance.TOLERANCES`, or its
quantization mode's :class:`~kexport.check.tolerance.Thresholds`), and where
the error comes from: ``"enters here"`` (its inputs pass, its outputs do
not) or ``"grows from upstream"`` (its inputs already fail). The culprit is
the first row that fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kexport.check.compare import compare, tolerance_for
from kexport.check.probe import MODEL_INPUT, ProbeCall

__all__ = ["ENTERS", "GROWS", "ErrorStat", "LayerRow", "LocalizationReport", "first_divergence",
           "rows_from"]

#: :attr:`LayerRow.origin` of a layer whose inputs pass and whose outputs fail.
ENTERS = "enters here"
#: :attr:`LayerRow.origin` of a failing layer whose inputs already fail.
GROWS = "grows from upstream"


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ErrorStat:
    """The largest absolute and relative errors of some tensors (``row.output_error.max_abs``,
    or ``row.output_error["max_abs"]``)."""

    max_abs: float = 0.0
    max_rel: float = 0.0

    def __getitem__(self, key: str) -> float:
        if key not in ("max_abs", "max_rel"):
            raise KeyError(key)
        return float(getattr(self, key))

    def to_json(self) -> dict[str, float | None]:
        """``{"max_abs", "max_rel"}``; an infinite or NaN error is ``None``."""
        return {"max_abs": _num(self.max_abs), "max_rel": _num(self.max_rel)}


def _worst(stats: Sequence[ErrorStat]) -> ErrorStat:
    def pick(values: list[float]) -> float:
        if any(math.isnan(v) for v in values):
            return math.nan
        return max(values, default=0.0)

    return ErrorStat(pick([s.max_abs for s in stats]), pick([s.max_rel for s in stats]))


@dataclass(frozen=True)
class LayerRow:
    """One Keras layer call of the model, as the artifact's route computes it.

    Attributes:
        path: the layer's path below the model (``"block/dense"``).
        class_name: its class name.
        input_error: the error of its inputs (0 for the model's inputs).
        output_error: the error of its outputs.
        tolerance: what they were judged by: ``{"atol", "rtol"}`` for a float
            artifact, the quantization mode's thresholds (``{"mode",
            "sqnr_db", "cosine", ...}``) for a quantized one.
        ok: whether its outputs are within tolerance.
        origin: ``"enters here"``, ``"grows from upstream"``, ``None`` when ok.
        ops: the first op kinds of the artifact that came from this layer,
            where the format keeps that mapping (else ``[]``).
        failed: for a quantized artifact, the thresholds its outputs miss.
        compared: ``False`` when the artifact keeps no value of this layer
            (read from the artifact itself: no value named by the layer).
    """

    path: str
    class_name: str
    input_error: ErrorStat
    output_error: ErrorStat
    tolerance: Mapping[str, Any]
    ok: bool
    origin: str | None = None
    ops: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    compared: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "class_name": self.class_name, "compared": self.compared,
                "input_error": self.input_error.to_json(),
                "output_error": self.output_error.to_json(),
                "tolerance": dict(self.tolerance), "ok": self.ok, "origin": self.origin,
                "ops": list(self.ops), "failed": list(self.failed)}


@dataclass(frozen=True)
class LocalizationReport:
    """Where an artifact's numbers leave the live model's (see :func:`kexport.localize`).

    Attributes:
        culprit: the path of the first layer whose outputs fail, ``None``
            when every layer matches.
        layers: one :class:`LayerRow` per layer call, in topological order.
        format: the artifact's format.
        route: the route the probe took (the artifact's own), e.g.
            ``"jax -> onnx (native: ...)"``.
        quantization: the artifact's quantization mode, ``None`` for float.
        method: ``"artifact"`` when the artifact's own intermediate values
            were compared (:mod:`kexport.check.artifact_values`), ``"probe"``
            when a probe of the model was exported through its route.
    """

    culprit: str | None
    layers: list[LayerRow]
    format: str
    route: str
    quantization: str | None = None
    method: str = "probe"

    @property
    def ok(self) -> bool:
        """Whether every layer matches."""
        return self.culprit is None

    @property
    def culprit_row(self) -> LayerRow | None:
        """The culprit's row."""
        return next((r for r in self.layers if r.path == self.culprit), None)

    def to_json(self) -> dict[str, Any]:
        return {"culprit": self.culprit, "format": self.format, "route": self.route,
                "quantization": self.quantization, "method": self.method,
                "layers": [r.to_json() for r in self.layers]}

    def table(self) -> str:
        """The rows as text, with the verdict first."""
        if self.culprit is None:
            head = f"Every layer matches ({self.format}, {self.route})."
        else:
            row = self.culprit_row
            assert row is not None
            ops = f"; artifact ops: {', '.join(row.ops)}" if row.ops else ""
            head = (f"First diverging layer: {row.path} ({row.class_name}), error "
                    f"{row.origin}: inputs max_abs {row.input_error.max_abs:.3g}, outputs "
                    f"max_abs {row.output_error.max_abs:.3g}{ops} ({self.format}, {self.route}).")
        head += (" Read from the artifact's own intermediate values." if self.method == "artifact"
                 else " Compared through a probe exported by the artifact's route.")
        width = max([len(r.path) for r in self.layers] + [5])
        lines = [head, f"{'layer':<{width}}  {'class':<20} {'in max_abs':>10} "
                       f"{'out max_abs':>11} {'out max_rel':>11}  verdict"]
        for r in self.layers:
            verdict = ("not kept" if not r.compared else "ok" if r.ok
                       else f"FAIL ({r.origin})")
            lines.append(f"{r.path:<{width}}  {r.class_name:<20} {r.input_error.max_abs:>10.3g} "
                         f"{r.output_error.max_abs:>11.3g} {r.output_error.max_rel:>11.3g}  "
                         f"{verdict}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def rows_from(calls: Sequence[ProbeCall], summary: Sequence[Mapping[str, Any]],
              tolerance: Mapping[str, Any], ops: Mapping[str, list[str]] | None = None
              ) -> tuple[str | None, list[LayerRow]]:
    """``(culprit, rows)`` from a probe's calls and its verification summary.

    Args:
        calls: the probe's recorded calls (:func:`kexport.check.probe.plan_of`).
        summary: :meth:`kexport.check.report.VerificationReport.summary` of
            the probe's artifact, one row per probe output in order.
        tolerance: what the outputs were judged by (shown on every row).
        ops: layer path -> the artifact's first op kinds from that layer.
    """
    stats = [ErrorStat(float(r["max_abs"]), float(r["max_rel"])) for r in summary]
    passed = [bool(r["ok"]) for r in summary]
    failed = [list(r.get("failed") or []) for r in summary]

    def of(indices: Sequence[int]) -> tuple[ErrorStat, bool, list[str]]:
        known = [i for i in indices if i != MODEL_INPUT and i < len(stats)]
        return (_worst([stats[i] for i in known]), all(passed[i] for i in known),
                [f for i in known for f in failed[i]])

    rows: list[LayerRow] = []
    culprit = None
    for call in calls:
        in_err, in_ok, _ = of(call.inputs)
        out_err, out_ok, misses = of(call.outputs)
        origin = None if out_ok else (ENTERS if in_ok else GROWS)
        rows.append(LayerRow(call.path, call.class_name, in_err, out_err, dict(tolerance),
                             out_ok, origin, list((ops or {}).get(call.path, [])),
                             sorted(set(misses))))
        if not out_ok and culprit is None:
            culprit = call.path
    return culprit, rows


def first_divergence(expected: Sequence[Mapping[str, Any]], received: Sequence[Mapping[str, Any]],
                     atol: float, rtol: float) -> dict[str, Any] | None:
    """The first layer call whose outputs differ between two recordings of one
    model's sublayer calls (:func:`kexport.check.probe.recorded_arrays`: the
    live model, and the same model rebuilt elsewhere), matched by path.

    Calls are taken in ``expected``'s order; one with no counterpart, or with
    outputs of other shapes, is skipped (two backends may call different
    sublayers inside one layer). Returns ``None`` when every matched call
    agrees, else ``{"path", "class_name", "max_abs_error", "origin", "enclosing"}``:
    ``origin`` is :data:`ENTERS` when the call's inputs agree, :data:`GROWS`
    when they already differ (the difference then comes from code between
    sublayer calls, e.g. in ``enclosing``, the innermost layer holding it).
    """
    theirs = {r["path"]: r for r in received}

    def worst(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[float, bool] | None:
        if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys, strict=True)):
            return None
        errs = [compare(x, y, *tolerance_for(x, atol, rtol)) for x, y in zip(xs, ys, strict=True)]
        return max((e[0] for e in errs), default=0.0), all(e[2] for e in errs)

    for row in expected:
        other = theirs.get(row["path"])
        found = worst(row["outputs"], other["outputs"]) if other is not None else None
        if found is None or found[1]:
            continue
        inputs = worst(row["inputs"], other["inputs"])  # type: ignore[index]
        path = str(row["path"])
        parent = path.split("@")[0].rsplit("/", 1)[0] if "/" in path else None
        return {"path": path, "class_name": row["class_name"], "max_abs_error": found[0],
                "origin": GROWS if inputs is not None and not inputs[1] else ENTERS,
                "enclosing": parent}
    return None

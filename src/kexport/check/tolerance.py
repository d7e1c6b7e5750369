"""The one tolerance table: ``(atol, rtol)`` by compute precision.

Outputs are compared like ``numpy.allclose`` (see
:func:`kexport.check.compare.compare`): ``|artifact - model| <= atol + rtol *
|model|``. Every check uses this table: :func:`kexport.verify` by the
artifact's precision, the re-host check and the ONNX acceptance of fast
converters with the ``float32`` row.
"""

from __future__ import annotations

__all__ = ["FLOAT32", "TOLERANCES", "default_tolerances", "tolerances_for"]

# (atol, rtol) by the artifact's compute precision.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "bfloat16": (5e-2, 5e-2),
    "float16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}
FLOAT32: tuple[float, float] = TOLERANCES["float32"]


def default_tolerances(precision: str) -> tuple[float, float]:
    """``(atol, rtol)`` for an artifact computing in ``precision`` (float32's if unknown)."""
    return TOLERANCES.get(precision, FLOAT32)


def _looser(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (max(a[0], b[0]), max(a[1], b[1]))


def tolerances_for(precision: str, runtime_precision: str,
                   declared: tuple[float, float] | None = None
                   ) -> tuple[tuple[float, float], str]:
    """``((atol, rtol), precision)`` for an artifact of ``precision`` run in ``runtime_precision``.

    The artifact's own precision applies, or ``declared`` when its format
    declares a tolerance for it (e.g. LiteRT by quantization mode); a runtime
    computing in less than float32 widens it to that precision's row, and the
    returned precision names the row that won.

    Args:
        precision: the artifact's compute precision (a :data:`TOLERANCES` key).
        runtime_precision: the precision its runtime reported computing in.
        declared: the format's own ``(atol, rtol)`` for this artifact, if any.
    """
    tol = declared or default_tolerances(precision)
    if runtime_precision in TOLERANCES and runtime_precision not in ("float32", "float64"):
        runtime_tol = default_tolerances(runtime_precision)
        if runtime_tol[0] > tol[0]:
            precision = runtime_precision
        tol = _looser(tol, runtime_tol)
    return tol, precision

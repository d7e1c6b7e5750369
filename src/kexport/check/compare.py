"""The one comparison: is an artifact's output the live model's, within tolerance?

Every check decides here: :func:`kexport.verify` per output and case, the
re-host check before an artifact is placed, the ONNX acceptance of a fast
converter's graph. The rule is ``numpy.allclose``'s, computed in float64:
``|received - expected| <= atol + rtol * |expected|`` elementwise, NaNs must
sit at the same positions, shapes must match; integer, boolean and string
outputs must match exactly (:func:`tolerance_for`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare", "tolerance_for"]


def tolerance_for(expected: Any, atol: float, rtol: float) -> tuple[float, float]:
    """``(atol, rtol)`` for an output like ``expected``: ``(0, 0)`` unless it is float.

    Integer, boolean and string outputs (ids, masks, labels) must match
    exactly; float (and complex) outputs get ``(atol, rtol)``.
    """
    import numpy as np

    return (atol, rtol) if np.asarray(expected).dtype.kind in "fc" else (0.0, 0.0)


def compare(expected: Any, received: Any, atol: float, rtol: float
            ) -> tuple[float, float, bool]:
    """Compare one output of the artifact with the live model's.

    Args:
        expected: the live model's output (array-like).
        received: the artifact's output (array-like).
        atol: absolute tolerance.
        rtol: relative tolerance (of ``|expected|``).

    Returns:
        ``(max_abs, max_rel, ok)``: the largest absolute difference (``inf``
        when shapes differ, ``nan`` when NaNs sit at other positions); the
        largest relative difference over elements whose magnitude exceeds
        ``atol`` (or 1e-12); whether every element is within tolerance.
    """
    import numpy as np

    e, r = np.asarray(expected), np.asarray(received)
    if e.shape != r.shape:
        return float("inf"), float("inf"), False
    if e.size == 0:
        return 0.0, 0.0, True
    if e.dtype.kind not in "fciub" or r.dtype.kind not in "fciub":  # strings: equal or not
        same = bool(np.array_equal(e, r))
        return (0.0, 0.0, True) if same else (float("inf"), float("inf"), False)
    wide = np.complex128 if "c" in (e.dtype.kind, r.dtype.kind) else np.float64
    e, r = e.astype(wide), r.astype(wide)
    nan_e, nan_r = np.isnan(e), np.isnan(r)
    if np.any(nan_e != nan_r):
        return float("nan"), float("nan"), False
    mask = ~nan_e
    diff = np.abs(e[mask] - r[mask])
    if diff.size == 0:
        return 0.0, 0.0, True
    mag = np.abs(e[mask])
    big = mag > max(atol, 1e-12)
    max_rel = float(np.max(diff[big] / mag[big])) if np.any(big) else 0.0
    ok = bool(np.all(diff <= atol + rtol * mag))
    return float(np.max(diff)), max_rel, ok

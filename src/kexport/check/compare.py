"""The metrics of one output against the live one: elementwise errors and quantization quality.

These are the measures; the verdict that uses them is one function,
:func:`kexport.check.verdict.verdict` (for :func:`kexport.verify`, the
re-host check before an artifact is placed, the ONNX acceptance of a fast
converter's graph). :func:`elementwise`'s rule is ``numpy.allclose``'s with ``atol`` in units of the output's
scale, computed in float64: ``|received - expected| <= atol * s + rtol *
|expected|`` elementwise, where ``s = max(1, max |expected|)`` over the output
(for outputs within [-1, 1], exactly ``allclose``); NaNs must
sit at the same positions, shapes must match; integer, boolean and string
outputs must match exactly (:func:`tolerance_for`).

:func:`quality` measures how close a float output is in the terms that
matter for a quantized artifact, as sums that pool over cases
(:class:`Quality`): the signal-to-quantization-noise ratio
``10 log10(sum(ref**2) / sum((ref - out)**2))`` in dB (``inf`` when equal),
the cosine similarity of each sample (the output's rows along axis 0,
flattened; min and mean over samples) and, for score outputs
(:func:`is_scores`), top-1 agreement (fraction of rows over the last axis
whose argmax matches, a class the reference scores within :data:`DISTINCT` of
its row's range of the top counting as a tie that agrees) and top-5 overlap (mean over rows of the share of the
reference's top-5 classes found in the artifact's top-5, with at least 5
classes; only classes whose reference score stands out of the row count, see
:func:`top_overlap`). :func:`missed_thresholds` lists what they miss of a quantization
mode's :class:`~kexport.check.tolerance.Thresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kexport.check.tolerance import Thresholds

__all__ = ["DISTINCT", "Quality", "compare", "elementwise", "is_scores", "judge",
           "missed_thresholds", "quality", "tolerance_for", "top_overlap"]


def tolerance_for(expected: Any, atol: float, rtol: float) -> tuple[float, float]:
    """``(atol, rtol)`` for an output like ``expected``: ``(0, 0)`` unless it is float.

    Integer, boolean and string outputs (ids, masks, labels) must match
    exactly; float (and complex) outputs get ``(atol, rtol)``.
    """
    import numpy as np

    return (atol, rtol) if np.asarray(expected).dtype.kind in "fc" else (0.0, 0.0)


def elementwise(expected: Any, received: Any, atol: float, rtol: float
                ) -> tuple[float, float, bool]:
    """The elementwise errors of one output of the artifact against the live model's.

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
    # atol in units of the output's scale: float32 rounding grows with the values
    # summed, so an element near 0 of an output whose values reach 40 carries the
    # rounding of numbers of size 40 (measured: EfficientNetB0 on PyTorch -> ONNX)
    scale = max(1.0, float(np.max(mag)))
    ok = bool(np.all(diff <= atol * scale + rtol * mag))
    return float(np.max(diff)), max_rel, ok


@dataclass(frozen=True)
class Quality:
    """How close one float output is to the live model's, as sums that pool over cases.

    Attributes:
        samples: samples compared (rows along axis 0; 1 for a scalar output).
        signal: ``sum(ref**2)``.
        noise: ``sum((ref - out)**2)``.
        cosine_min: the least cosine similarity of one sample.
        cosine_sum: the sum of the samples' cosine similarities.
        rows: rows over the class axis judged for top-k (0: not a score output).
        top1_hits: rows whose argmax matches (or ties with the reference's, see
            :data:`DISTINCT`).
        classes: the size of the class axis (0: not a score output).
        top5_sum: the sum over rows of their top-5 overlap
            (:func:`top_overlap`; 0 with fewer than 5 classes).
    """

    samples: int
    signal: float
    noise: float
    cosine_min: float
    cosine_sum: float
    rows: int = 0
    top1_hits: int = 0
    classes: int = 0
    top5_sum: float = 0.0

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio in dB: ``inf`` when equal, ``-inf``
        for noise on a zero signal."""
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    @property
    def cosine_mean(self) -> float:
        return self.cosine_sum / self.samples if self.samples else 1.0

    @property
    def top1(self) -> float | None:
        """Top-1 agreement, ``None`` for an output that is not scores."""
        return self.top1_hits / self.rows if self.rows else None

    @property
    def top5(self) -> float | None:
        """Top-5 overlap, ``None`` for an output that is not scores of >= 5 classes."""
        return self.top5_sum / self.rows if self.rows and self.classes >= 5 else None

    def __add__(self, other: Quality) -> Quality:
        return Quality(self.samples + other.samples, self.signal + other.signal,
                       self.noise + other.noise, min(self.cosine_min, other.cosine_min),
                       self.cosine_sum + other.cosine_sum, self.rows + other.rows,
                       self.top1_hits + other.top1_hits, max(self.classes, other.classes),
                       self.top5_sum + other.top5_sum)

    @classmethod
    def pooled(cls, parts: Iterable[Quality]) -> Quality | None:
        """The sum of ``parts``; ``None`` when there is none."""
        total = None
        for q in parts:
            total = q if total is None else total + q
        return total

    def metrics(self) -> dict[str, float | None]:
        """The derived numbers a report shows."""
        return {"sqnr_db": self.sqnr_db, "cosine_min": self.cosine_min,
                "cosine_mean": self.cosine_mean, "top1": self.top1, "top5": self.top5}

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "signal": self.signal, "noise": self.noise,
                "cosine_min": self.cosine_min, "cosine_sum": self.cosine_sum,
                "rows": self.rows, "top1_hits": self.top1_hits, "classes": self.classes,
                "top5_sum": self.top5_sum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quality:
        return cls(int(data["samples"]), float(data["signal"]), float(data["noise"]),
                   float(data["cosine_min"]), float(data["cosine_sum"]),
                   int(data.get("rows", 0)), int(data.get("top1_hits", 0)),
                   int(data.get("classes", 0)), float(data.get("top5_sum", 0.0)))


def is_scores(expected: Any, name: str | None = None,
              scores: Iterable[str] | None = None) -> bool:
    """Whether an output holds class scores (logits or probabilities), judged by top-k.

    The user's list wins: with ``scores`` given, exactly the outputs named in
    it are scores. Otherwise the rule: a float output whose last axis has at
    least 2 entries and which is either of rank 2 (``(batch, classes)``, a
    classifier head) or holds probability distributions over its last axis
    (every value in ``[0, 1]`` and each row summing to 1, e.g. per-token
    softmax ``(batch, steps, vocabulary)``).
    """
    import numpy as np

    if scores is not None:
        return name is not None and name in set(scores)
    e = np.asarray(expected)
    if e.dtype.kind != "f" or e.ndim < 2 or e.shape[-1] < 2 or e.size == 0:
        return False
    if e.ndim == 2:
        return True
    if not np.all(np.isfinite(e)) or np.any(e < 0) or np.any(e > 1):
        return False
    return bool(np.allclose(e.astype(np.float64).sum(axis=-1), 1.0, atol=1e-3))


def quality(expected: Any, received: Any, scores: bool = False) -> Quality | None:
    """The :class:`Quality` of a float output; ``None`` when not comparable
    (shapes differ, not float, NaNs at other positions)."""
    import numpy as np

    e, r = np.asarray(expected), np.asarray(received)
    if e.shape != r.shape or e.dtype.kind != "f" or r.dtype.kind not in "fiu":
        return None
    e, r = e.astype(np.float64), r.astype(np.float64)
    if np.any(np.isnan(e) != np.isnan(r)):
        return None
    e, r = np.nan_to_num(e), np.nan_to_num(r)
    rows_e = e.reshape(e.shape[0] if e.ndim else 1, -1)
    rows_r = r.reshape(rows_e.shape)
    samples = rows_e.shape[0]
    dot = np.sum(rows_e * rows_r, axis=1)
    norms = np.linalg.norm(rows_e, axis=1) * np.linalg.norm(rows_r, axis=1)
    both_zero = (np.linalg.norm(rows_e, axis=1) == 0) & (np.linalg.norm(rows_r, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)
    q = Quality(samples, float(np.sum(e * e)), float(np.sum((e - r) ** 2)),
                float(np.min(cos)) if samples else 1.0, float(np.sum(cos)))
    if not scores or e.ndim < 1 or e.shape[-1] < 2 or e.size == 0:
        return q
    classes = e.shape[-1]
    ce, cr = e.reshape(-1, classes), r.reshape(-1, classes)
    # a row agrees when the artifact's top class is the live one, or one the live model
    # scores within DISTINCT of its row's range of the top (a tie: either is its answer)
    chosen = ce[np.arange(ce.shape[0]), np.argmax(cr, axis=1)]
    top, low = ce.max(axis=1), ce.min(axis=1)
    hits = int(np.sum(top - chosen <= DISTINCT * (top - low)))
    top5 = float(np.sum(top_overlap(ce, cr))) if classes >= 5 else 0.0
    return Quality(q.samples, q.signal, q.noise, q.cosine_min, q.cosine_sum,
                   ce.shape[0], hits, classes, top5)


#: Top-k overlap counts the reference classes that stand out of their row: whose
#: score exceeds the row's minimum by more than this fraction of the row's range
#: (see :func:`top_overlap`).
DISTINCT = 0.02


def top_overlap(expected: Any, received: Any, k: int = 5) -> Any:
    """Per row (over the last axis), the share of the reference's top-``k``
    classes found in the artifact's top-``k``, in ``[0, 1]``.

    Only reference classes that stand out count: the row's ``k`` highest
    scores that exceed its minimum by more than :data:`DISTINCT` of its range
    (a row where none does agrees fully). The near-zero probabilities of a
    confident softmax do not stand out: ``int8`` rounds them to tied zeros,
    and their order says nothing. A counted class is found when the
    artifact's score for it is above the artifact's ``k``-th highest; tied
    with it, it gets the share of the remaining places among the tied classes
    (what a random order of the ties would give on average, so ties never
    favour the reference). A class the artifact lost (rounded to the tied
    zeros) or moved (permuted classes) is therefore (mostly) missed.
    """
    import numpy as np

    e = np.asarray(expected, dtype=np.float64).reshape(-1, np.shape(expected)[-1])
    r = np.asarray(received, dtype=np.float64).reshape(e.shape)
    k = min(k, e.shape[1])
    out = np.ones(e.shape[0])
    low, span = e.min(axis=1), np.ptp(e, axis=1)
    for i in range(e.shape[0]):
        standing = np.flatnonzero(e[i] - low[i] > DISTINCT * span[i])
        if standing.size == 0:
            continue
        counted = standing[np.argsort(-e[i, standing], kind="stable")[:k]]
        kth = np.sort(r[i])[-k]
        places = k - int(np.sum(r[i] > kth))  # left for the scores tied with the k-th
        tied = int(np.sum(r[i] == kth))
        found = np.where(r[i, counted] > kth, 1.0,
                         np.where(r[i, counted] == kth, places / tied, 0.0))
        out[i] = float(np.mean(found))
    return out


def missed_thresholds(q: Quality | None, thresholds: Thresholds) -> list[str]:
    """What ``q`` misses of ``thresholds``: one line per criterion failed (empty: pass).

    ``None`` (nothing comparable) fails.
    """
    if q is None:
        return ["no comparable output"]
    failed = []
    if not q.sqnr_db >= thresholds.sqnr_db:
        failed.append(f"SQNR {q.sqnr_db:.1f} dB < {thresholds.sqnr_db:g} dB")
    if not q.cosine_min >= thresholds.cosine:
        failed.append(f"cosine {q.cosine_min:.4f} < {thresholds.cosine:g}")
    if q.top1 is not None and not q.top1 >= thresholds.top1:
        failed.append(f"top-1 agreement {q.top1:.3f} < {thresholds.top1:g}")
    if q.top5 is not None and not q.top5 >= thresholds.top5:
        failed.append(f"top-5 overlap {q.top5:.3f} < {thresholds.top5:g}")
    return failed


# The names of these helpers before the one verdict (kexport.check.verdict), kept
# for code written against them.
compare = elementwise
judge = missed_thresholds

"""The one tolerance table: ``(atol, rtol)`` by compute precision.

Outputs are compared like ``numpy.allclose`` with ``atol`` in units of the
output's scale (see :func:`kexport.check.compare.compare`): ``|artifact -
model| <= atol * max(1, max|model|) + rtol * |model|``. Every check uses this table: :func:`kexport.verify` by the
artifact's precision, the re-host check and the ONNX acceptance of fast
converters with the ``float32`` row.

A *quantized* artifact (one whose metadata records a mode of
:data:`QUANTIZATION_MODES`) is not judged elementwise: quantization noise
grows with the output's scale, so one ``(atol, rtol)`` passes a broken
classifier with small outputs and fails a good one with large outputs.
Its float outputs are judged by :data:`QUANTIZED` instead: the mode's
:class:`Thresholds` on the signal-to-quantization-noise ratio, the cosine
similarity per sample and, for score outputs, top-1 agreement and top-5
overlap with the float model (see :mod:`kexport.check.compare`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kexport.artifact import FORMATS

__all__ = ["FLOAT32", "QUANTIZATION_MODES", "QUANTIZED", "TOLERANCES", "Thresholds", "declared_tolerances",
           "default_tolerances", "quantization_mode", "thresholds_for", "tolerances_for"]

# (atol, rtol) by the artifact's compute precision.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "bfloat16": (5e-2, 5e-2),
    "float16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}
FLOAT32: tuple[float, float] = TOLERANCES["float32"]

#: Runtimes that reorder float arithmetic (OpenVINO computes ``x / s`` as ``x * (1 / s)``):
#: before the per-call int8 input quantization of a layer Keras quantized
#: (``Model.quantize``), an ulp there can flip one rounding, one int8 step of that row
#: (measured 2.3e-3 on tests/test_keras_quantized.py's model; its float model is 1.1e-2
#: away). The check of such a model's artifact uses this row.
KERAS_QUANTIZED_REORDERED: dict[str, tuple[float, float]] = {"openvino": (5e-3, 5e-3)}


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


#: The quantization modes, named alike on every format that has them.
QUANTIZATION_MODES: tuple[str, ...] = ("float16", "bfloat16", "dynamic_int8", "int8")


@dataclass(frozen=True)
class Thresholds:
    """What a quantized artifact's float outputs must reach, pooled over every case.

    Attributes:
        mode: the quantization mode they are for.
        sqnr_db: least signal-to-quantization-noise ratio of every output, in dB.
        cosine: least cosine similarity of any one sample (the worst sample).
        top1: least fraction of samples whose argmax matches, for score outputs.
        top5: least mean overlap of the top-5 classes, for score outputs of
            at least 5 classes.
    """

    mode: str
    sqnr_db: float
    cosine: float
    top1: float
    top5: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thresholds:
        return cls(str(data["mode"]), float(data["sqnr_db"]), float(data["cosine"]),
                   float(data["top1"]), float(data["top5"]))


#: Thresholds by quantization mode, set from measurement (docs/verification.md,
#: "Quantized artifacts"): a good artifact of each mode clears them with a
#: margin on the measured models, a broken one (a layer's weights wrong, the
#: output scaled) falls far below.
QUANTIZED: dict[str, Thresholds] = {
    "float16": Thresholds("float16", sqnr_db=40.0, cosine=0.999, top1=0.99, top5=0.99),
    # not measurable with LiteRT (no bfloat16 mode): between float16 and dynamic_int8
    "bfloat16": Thresholds("bfloat16", sqnr_db=30.0, cosine=0.995, top1=0.97, top5=0.97),
    "dynamic_int8": Thresholds("dynamic_int8", sqnr_db=25.0, cosine=0.99, top1=0.95,
                               top5=0.95),
    "int8": Thresholds("int8", sqnr_db=20.0, cosine=0.98, top1=0.9, top5=0.9),
}


def quantization_mode(metadata: Mapping[str, Any]) -> str | None:
    """The quantization mode an artifact's metadata records (``quantization``,
    or ``kexport.quantization`` in flat metadata), ``None`` for a float artifact."""
    for key in ("quantization", "kexport.quantization"):
        mode = metadata.get(key)
        if isinstance(mode, str) and mode in QUANTIZED:
            return mode
    return None


def thresholds_for(mode: str | None) -> Thresholds | None:
    """The :class:`Thresholds` of ``mode``; ``None`` for a float artifact (allclose applies)."""
    return QUANTIZED.get(mode) if mode is not None else None


def declared_tolerances(format: str, metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """The tolerances a format declares for one of its artifacts, if it does.

    A format's descriptor (:data:`kexport.artifact.FORMATS`) may declare
    ``tolerance(metadata) -> (atol, rtol) | None``; e.g. LiteRT answers by the
    quantization mode its metadata records, so verify and the format share one
    table. Formats without one get :data:`TOLERANCES` by precision.
    """
    descriptor = FORMATS.get(format)
    if descriptor is None or descriptor.tolerance is None:
        return None
    return descriptor.tolerance(metadata)

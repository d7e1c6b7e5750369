"""Checking an artifact against the live model, built once.

Every check kexport runs (the public :func:`kexport.verify`, the re-host
check before an artifact is placed, the ONNX Runtime acceptance of a fast
converter's graph) draws its inputs from :mod:`~kexport.check.samples`,
its tolerances (and a quantized artifact's thresholds) from
:mod:`~kexport.check.tolerance`, takes the live model's
outputs with :mod:`~kexport.check.live`, decides with
:func:`~kexport.check.compare.compare`, and talks to child processes through
:class:`~kexport.check.worker.Worker`; :mod:`~kexport.check.report` holds the
report types. So one model gets one verdict whichever check asks.

This package imports nothing heavy at module level and nothing of kexport
above :mod:`kexport.signature` and :mod:`kexport._numerics`.
"""

from __future__ import annotations

from kexport.check.compare import Quality, compare, is_scores, judge, quality, tolerance_for
from kexport.check.live import flat_numpy, live_reference
from kexport.check.report import OutputCheck, VerificationReport
from kexport.check.samples import CASE_SIZES, dynamic_size, sample_inputs
from kexport.check.tolerance import (
    QUANTIZED,
    TOLERANCES,
    Thresholds,
    default_tolerances,
    thresholds_for,
    tolerances_for,
)
from kexport.check.worker import Worker

__all__ = ["CASE_SIZES", "QUANTIZED", "TOLERANCES", "OutputCheck", "Quality", "Thresholds",
           "VerificationReport", "Worker", "compare", "default_tolerances", "dynamic_size",
           "flat_numpy", "is_scores", "judge", "live_reference", "quality", "sample_inputs",
           "thresholds_for", "tolerance_for", "tolerances_for"]

"""Checking an artifact against the live model, built once.

Every check kexport runs (the public :func:`kexport.verify`, the re-host
check before an artifact is placed, the ONNX Runtime acceptance of a fast
converter's graph) draws its inputs from :mod:`~kexport.check.samples`,
its tolerances (and a quantized artifact's thresholds) from
:mod:`~kexport.check.tolerance`, takes the live model's
outputs with :mod:`~kexport.check.live`, decides with the one function
:func:`~kexport.check.verdict.verdict` (on the metrics of
:mod:`~kexport.check.compare`), and talks to child processes through
:class:`~kexport.check.worker.Worker`; :mod:`~kexport.check.report` holds the
one report type every check returns. So one model gets one verdict whichever
check asks.

This package imports nothing heavy at module level and nothing of kexport
above its own layer (``docs/architecture.md``: artifact descriptors,
dimensions, signatures and the base modules).
"""

from __future__ import annotations

from kexport.check.compare import (
    Quality,
    compare,
    elementwise,
    is_scores,
    judge,
    missed_thresholds,
    quality,
    tolerance_for,
)
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

# (kexport.check.verdict is the module of the one verdict, not re-exported here so
# that the name stays the module's)
__all__ = ["CASE_SIZES", "QUANTIZED", "TOLERANCES", "OutputCheck", "Quality", "Thresholds",
           "VerificationReport", "Worker", "compare", "default_tolerances", "dynamic_size",
           "elementwise", "flat_numpy", "is_scores", "judge", "live_reference",
           "missed_thresholds", "quality", "sample_inputs", "thresholds_for", "tolerance_for",
           "tolerances_for"]

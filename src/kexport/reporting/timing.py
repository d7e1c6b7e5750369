"""Latency of a callable: the timing loop of ``kexport bench`` and the report.

One warm-up call (first-call compilation and allocation), then timed calls
until both ``min_runs`` and the time budget are reached, or ``max_runs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kexport.check.samples import SamplePolicy, sample_inputs
from kexport.runtime import EndpointInfo, TensorInfo

__all__ = ["bench_inputs", "stats", "time_calls"]


def time_calls(fn: Callable[[], Any], seconds: float, min_runs: int = 5,
               max_runs: int = 10_000) -> list[float]:
    """Seconds per call of ``fn`` (after one untimed warm-up call)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def stats(times: list[float], batch: int) -> dict[str, float]:
    """p50/p90/p99 in milliseconds, the number of runs and items per second."""
    import numpy as np

    ms = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "runs": len(times),
            "throughput_per_s": float(batch * len(times) / max(sum(times), 1e-12))}


def bench_inputs(endpoint: EndpointInfo, batch: int, dim_size: int, seed: int = 0,
                 policy: SamplePolicy | None = None) -> dict[str, Any]:
    """Random inputs by name: the leading dynamic dim is ``batch``, others
    ``dim_size``; ids and masks as ``policy`` says (see :mod:`kexport.check.samples`)."""
    fixed = [TensorInfo(t.name, tuple((batch if i == 0 else dim_size) if d is None else d
                                      for i, d in enumerate(t.shape)), t.dtype)
             for t in endpoint.inputs]
    arrays = sample_inputs(fixed, 1, seed, endpoint=endpoint.name, policy=policy)
    return dict(zip(endpoint.input_names, arrays, strict=True))

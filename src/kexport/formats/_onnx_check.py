"""Accepting a fast converter's ONNX graph only when ONNX Runtime agrees with the model.

Fast converters (the traced ``torch.onnx`` exporter, ``jax2onnx``) can silently
fix a dynamic dimension or produce a graph ONNX Runtime cannot run. Their
output is used only after :func:`check_against_live` ran it at batch 1 and 3
(every other dynamic axis at two further sizes, none equal to the sample the
converter saw) and compared it with the live model; anything else raises
:class:`NotTraceable` and the caller moves on to its next strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kexport.signature import Spec

__all__ = ["CHECK_BATCHES", "NotTraceable", "check_against_live", "samples"]

CHECK_BATCHES = (1, 3)
_ATOL, _RTOL = 1e-4, 1e-3


class NotTraceable(Exception):
    """The fast graph cannot be trusted for this model; use the next strategy."""


def _size(axis: int, batch: int) -> int:
    # distinct per axis so that unrelated dynamic axes are not unified
    return batch if axis == 0 else axis + 1 + batch


def samples(specs: Sequence[Spec], batch: int, seed: int) -> list[Any]:
    """Random inputs for ``specs``: dynamic axes sized from ``batch``, ints in {0, 1}."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        shape = [_size(a, batch) if d is None else d for a, d in enumerate(spec.shape)]
        dtype = np.dtype(spec.dtype) if spec.dtype != "string" else np.dtype("O")
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.kind in "iu":
            out.append(rng.integers(0, 2, shape).astype(dtype))
        elif dtype.kind == "b":
            out.append(rng.random(shape) > 0.5)
        else:
            raise NotTraceable(f"no sample inputs for dtype {spec.dtype}")
    return out


def check_against_live(data: bytes, names: Sequence[str], specs: Sequence[Spec],
                       live: Callable[[list[Any]], list[Any]]) -> None:
    """Run the serialized graph ``data`` and compare with ``live(flat inputs)``.

    Raises:
        NotTraceable: ONNX Runtime cannot load or run it, or an output differs.
    """
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        for seed, batch in enumerate(CHECK_BATCHES, start=1):
            flat = samples(specs, batch, seed)
            got = session.run(None, dict(zip(names, flat, strict=True)))
            want = live(flat)
            if len(got) != len(want) or any(
                    g.shape != w.shape or not np.allclose(g, w, atol=_ATOL, rtol=_RTOL)
                    for g, w in zip(got, want, strict=False)):
                raise NotTraceable(f"differs from the live model at batch {batch}")
    except NotTraceable:
        raise
    except Exception as e:
        raise NotTraceable(f"ONNX Runtime: {type(e).__name__}: {str(e)[:300]}") from e

"""JAX -> ONNX in process with ``jax2onnx``, kept only where ONNX Runtime agrees.

``jax2onnx`` converts the model's JAX computation directly (~0.1 s a model
once loaded, where re-hosting onto TensorFlow takes seconds), but it has gaps:
some graphs it writes do not run in ONNX Runtime (MaxPool on this stack) and
some primitives it refuses (reverse scans: Bidirectional RNNs). Its graph is
used only after :func:`kexport.formats._onnx_check.check_against_live`;
otherwise :class:`NotTraceable` sends the export to the re-host route.
"""

from __future__ import annotations

from typing import Any

from kexport.formats._onnx_check import NotTraceable, check_against_live, samples
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["capture_jax2onnx"]

_ROUTE = "jax: jax2onnx (verified)"


def capture_jax2onnx(model: Any, signature: list[Any], opset: int, route: str = _ROUTE) -> Any:
    """Convert ``model(..., training=False)``; a ``RawGraph`` or :class:`NotTraceable`."""
    import jax
    import keras
    import numpy as np

    from kexport.capture._base import output_names
    from kexport.formats.onnx import RawGraph

    try:
        import jax2onnx
    except ImportError as e:  # the registry only offers this route when it imports
        raise NotTraceable("jax2onnx is not installed") from e
    specs = flatten(signature)
    names = flat_names(signature)
    structure = signature

    def fn(*flat: Any) -> tuple[Any, ...]:
        return tuple(flatten(model(*pack_as(list(structure), list(flat)), training=False)))

    # One compilation per checked shape (not one per op), with the variables as
    # arguments: closed over, XLA would embed (copy) and fold every weight.
    @jax.jit
    def stateless(trainable: Any, non_trainable: Any, *flat: Any) -> tuple[Any, ...]:
        out, _ = model.stateless_call(trainable, non_trainable,
                                      *pack_as(list(structure), list(flat)), training=False)
        return tuple(flatten(out))

    def live(flat: list[Any]) -> list[Any]:
        out = stateless([v.value for v in model.trainable_variables],
                        [v.value for v in model.non_trainable_variables], *flat)
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in out]

    first = jax.eval_shape(fn, *samples(specs, 2, 0))  # shapes only, nothing runs
    outs = output_names(list(first), model)
    out_specs = [Spec((None, *tuple(o.shape)[1:]) if len(o.shape) else (), str(o.dtype), n)
                 for o, n in zip(first, outs, strict=False)]
    inputs = [jax.ShapeDtypeStruct(
        tuple(("batch" if a == 0 else f"d{a}") if d is None else d
              for a, d in enumerate(s.shape)), np.dtype(s.dtype)) for s in specs]
    try:
        proto = jax2onnx.to_onnx(fn, inputs=inputs, input_names=names, output_names=outs,
                                 opset=opset, return_mode="proto")
    except Exception as e:  # the re-host route reports real failures
        raise NotTraceable(f"jax2onnx: {type(e).__name__}: {str(e)[:300]}") from e
    check_against_live(proto.SerializeToString(), names, specs, live)
    return RawGraph(proto, names, outs, out_specs, route)

"""JAX -> ONNX in process with ``jax2onnx``, kept only where ONNX Runtime agrees.

``jax2onnx`` converts the model's JAX computation directly (~0.1 s a model
once loaded, where re-hosting onto TensorFlow takes seconds), but it has gaps:
some graphs it writes do not run in ONNX Runtime (MaxPool on this stack) and
some primitives it refuses (reverse scans: Bidirectional RNNs). Its graph is
used only after :class:`kexport.formats._onnx_check.Acceptance`
accepted the finished graph; otherwise :class:`NotTraceable` sends the export
to the re-host route.

Peer-library workaround, :func:`linear_output_binding`: jax2onnx checks after
every equation that its outputs are connected to the graph by scanning every
input, initializer and node output (quadratic in the model's size: 40% of a
3-block Transformer's conversion). Within the context a value produced by a
node of the graph being built is recognised in O(1); every other case still
runs jax2onnx's own scan, so the answers are the same.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kexport._patch import scoped_patch
from kexport.formats.onnx._accept import Acceptance, NotTraceable, samples
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["capture_jax2onnx", "linear_output_binding"]

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

    stateless = _live_function(model, structure)

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
    try:  # an onnx_ir model: no proto round trip before kexport's own passes
        with linear_output_binding():
            graph = jax2onnx.to_onnx(fn, inputs=inputs, input_names=names,
                                     output_names=outs, opset=opset, return_mode="ir")
    except Exception as e:  # the re-host route reports real failures
        raise NotTraceable(f"jax2onnx: {type(e).__name__}: {str(e)[:300]}") from e
    return RawGraph(graph, names, outs, out_specs, route, accept=Acceptance(names, specs, live))


# XLA's backend at -O0 compiles a model about 2x faster; the reference runs
# once per export, so compile time is what counts (outputs agree within 3e-6).
_REFERENCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _live_function(model: Any, structure: list[Any]) -> Any:
    """``model.stateless_call(..., training=False)`` compiled with :mod:`jax`, flat outputs.

    One compilation per checked shape (not one per op, as eager calls would
    be on a cold process), with the variables as arguments: closed over, XLA
    would embed (copy) and fold every weight.
    """
    import jax

    def stateless(trainable: Any, non_trainable: Any, *flat: Any) -> tuple[Any, ...]:
        out, _ = model.stateless_call(trainable, non_trainable,
                                      *pack_as(list(structure), list(flat)), training=False)
        return tuple(flatten(out))

    def run(*args: Any) -> tuple[Any, ...]:
        lowered = jax.jit(stateless).lower(*args)
        try:
            compiled = lowered.compile(compiler_options=_REFERENCE_COMPILER_OPTIONS)
        except Exception:  # an XLA without the option
            compiled = lowered.compile()
        return compiled(*args)

    return run


def linear_output_binding() -> contextlib.AbstractContextManager[None]:
    """Make jax2onnx's per-equation "is this output connected" check O(1) while inside.

    Reference-counted and thread-safe (:func:`kexport._patch.scoped_patch`);
    outside the context jax2onnx behaves as shipped. A no-op when the private
    function is not where jax2onnx 0.17 keeps it.
    """
    try:
        from jax2onnx.converter import output_binding
    except ImportError:
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        def connected(ctx: Any, value: Any) -> bool:
            producer = getattr(value, "producer", None)
            node = producer() if callable(producer) else None
            graph = getattr(getattr(ctx, "builder", None), "nodes", None)
            if node is not None and graph is not None and getattr(node, "graph", None) is graph:
                return True  # jax2onnx's scan would find ``node`` among the graph's nodes
            return shipped(ctx, value)

        return connected

    return scoped_patch(output_binding, "_value_is_graph_connected", make)

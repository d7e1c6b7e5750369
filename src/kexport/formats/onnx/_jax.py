"""The JAX strategy: ``jax2onnx`` in process, kept only where ONNX Runtime agrees.

``jax2onnx`` converts the model's JAX computation directly (~0.1 s a model
once loaded, where re-hosting onto TensorFlow takes seconds), but it has gaps:
some graphs it writes do not run in ONNX Runtime (MaxPool on this stack) and
some primitives it refuses (reverse scans: Bidirectional RNNs). Its graph is
used only after :class:`kexport.formats.onnx._accept.Acceptance` accepted the
finished graph; otherwise the strategy refuses (:class:`NotTraceable`) and the
export re-hosts. The conversion runs inside
:func:`kexport.formats.onnx.compat.linear_output_binding`.
"""

from __future__ import annotations

from typing import Any

from kexport._inference import stateless_run
from kexport.capture._base import output_names
from kexport.context import ExportContext
from kexport.formats.onnx._accept import Acceptance, NotTraceable, samples
from kexport.formats.onnx._graph import RawGraph, Source, Strategy
from kexport.formats.onnx.compat import linear_output_binding
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["Jax2Onnx"]


class Jax2Onnx(Strategy):
    """``jax2onnx`` on ``model(..., training=False)``, checked against the live model."""

    description = "the jax2onnx graph"
    route = "jax: jax2onnx (verified)"

    def capture(self, source: Source, opset: int, context: ExportContext) -> RawGraph:
        """Convert; refuses the endpoint when jax2onnx is missing or fails."""
        import jax
        import keras
        import numpy as np

        route = self.route_for(source)
        try:
            import jax2onnx
        except ImportError as e:  # the registry only offers this route when it imports
            raise NotTraceable("jax2onnx is not installed") from e
        signature = source.signature
        specs = flatten(signature)
        names = flat_names(signature)
        structure = signature
        call = source.call

        def fn(*flat: Any) -> tuple[Any, ...]:
            return tuple(flatten(call(*pack_as(list(structure), list(flat)))))

        trainable, frozen = source.variables
        stateless = _live_function(call, trainable, frozen, structure)

        def live(flat: list[Any]) -> list[Any]:
            out = stateless([v.value for v in trainable], [v.value for v in frozen], *flat)
            return [np.asarray(keras.ops.convert_to_numpy(o)) for o in out]

        given = samples(specs, 2, 0, context.samples, data=False)
        # shapes only, nothing runs; named from the structure (dict keys), as on TensorFlow
        shaped = jax.eval_shape(lambda *flat: call(*pack_as(list(structure), list(flat))), *given)
        first = flatten(shaped)
        outs = output_names(shaped, source.model)
        out_specs = [Spec((None, *tuple(o.shape)[1:]) if len(o.shape) else (), str(o.dtype), n)
                     for o, n in zip(first, outs, strict=False)]
        inputs = [jax.ShapeDtypeStruct(
            tuple(s.symbol(a) if d is None else d for a, d in enumerate(s.shape)), np.dtype(s.dtype)) for s in specs]
        try:  # an onnx_ir model: no proto round trip before kexport's own passes
            with linear_output_binding():
                graph = jax2onnx.to_onnx(fn, inputs=inputs, input_names=names,
                                         output_names=outs, opset=opset, return_mode="ir")
        except Exception as e:  # the re-host route reports real failures
            raise NotTraceable(f"jax2onnx: {type(e).__name__}: {str(e)[:300]}") from e
        return RawGraph(graph, names, outs, out_specs, route, accept=Acceptance(names, specs, live, context))


# XLA's backend at -O0 compiles a model about 2x faster; the reference runs
# once per export, so compile time is what counts (outputs agree within 3e-6).
_REFERENCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _live_function(call: Any, trainable: list[Any], frozen: list[Any],
                   structure: list[Any]) -> Any:
    """The endpoint on given variable values, compiled with :mod:`jax`, flat outputs.

    One compilation per checked shape (not one per op, as eager calls would
    be on a cold process), with the variables as arguments: closed over, XLA
    would embed (copy) and fold every weight.
    """
    import jax

    def stateless(trainable_values: Any, frozen_values: Any, *flat: Any) -> tuple[Any, ...]:
        out, _ = stateless_run(call, trainable, frozen, trainable_values, frozen_values,
                               *pack_as(list(structure), list(flat)))
        return tuple(flatten(out))

    def run(*args: Any) -> tuple[Any, ...]:
        lowered = jax.jit(stateless).lower(*args)
        try:
            compiled = lowered.compile(compiler_options=_REFERENCE_COMPILER_OPTIONS)
        except Exception:  # an XLA without the option
            compiled = lowered.compile()
        return compiled(*args)

    return run

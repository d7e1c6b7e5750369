"""How endpoints are traced for the TFLite converter: recurrent layers unrolled
where their length is static, and (JAX) contractions the converter lowers
and indexing it refuses rewritten first (:mod:`._jax_forms`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kexport.formats.litert._jax_forms import jax_forms
from kexport.formats.litert._newaxis import new_axes_expanded
from kexport.formats.litert._tables import ranked_lookups
from kexport.signature import flatten, pack_as

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint

__all__ = ["concrete_signature", "recurrent_layers", "signature_function"]

# -- peer-library workaround: recurrent layers and the TFLite converter -----------------------
def recurrent_layers(layers: list[Any]) -> list[str]:
    """``'name' (Class)`` of each Keras recurrent layer among ``layers``' sublayers."""
    import keras

    found: list[str] = []
    for layer in layers:
        for sub in layer._flatten_layers(include_self=True):
            if isinstance(sub, keras.layers.RNN):
                text = f"'{sub.name}' ({type(sub).__name__})"
                if text not in found:
                    found.append(text)
    return found


@contextlib.contextmanager
def _rnn_unrolled(layers: list[Any]) -> Iterator[None]:
    """Trace Keras recurrent layers unrolled, so TFLite gets builtin ops.

    Workaround: Keras 3 on TensorFlow runs RNNs as a ``tf.while_loop`` over
    ``TensorList`` ops; the TFLite converter can only lower those to builtin
    ops when the list elements have a static shape, i.e. *not* with a dynamic
    batch ("'tf.TensorListReserve' op requires element_shape to be static"),
    and otherwise needs Select-TF (Flex) ops. Unrolling over the (static)
    time axis computes the same thing with plain matmuls. The cuDNN path is
    switched off too (``CudnnRNN`` has no TFLite form). Attributes are
    restored on exit; layers whose time axis is dynamic fail to unroll, and
    the caller then traces them as they are.
    """
    import keras

    changed: list[tuple[Any, str, Any]] = []
    for layer in layers:
        for sub in layer._flatten_layers(include_self=True):
            if isinstance(sub, keras.layers.RNN):
                if not getattr(sub, "unroll", True):
                    changed.append((sub, "unroll", sub.unroll))
                    sub.unroll = True
                if getattr(sub, "use_cudnn", False) not in (False, None):
                    changed.append((sub, "use_cudnn", sub.use_cudnn))
                    sub.use_cudnn = False
    try:
        yield
    finally:
        for obj, attr, value in reversed(changed):
            setattr(obj, attr, value)


def signature_function(endpoint: TracedEndpoint, python_fn: Callable[..., Any]) -> Any:
    """A flat ``tf.function``: named inputs in, outputs keyed by name out."""
    import tensorflow as tf

    flat = flatten(endpoint.signature)
    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flat, endpoint.input_names, strict=True)]
    structure = endpoint.signature
    names = endpoint.output_names

    @tf.function(input_signature=specs, autograph=False)
    def signature(*flat_inputs: Any) -> dict[str, Any]:
        args = pack_as(list(structure), list(flat_inputs))
        outputs = python_fn(*args)
        return dict(zip(names, tf.nest.flatten(outputs), strict=True))

    return signature


def concrete_signature(endpoint: TracedEndpoint, layers: list[Any]) -> Any:
    """Trace the endpoint for LiteRT: unrolled RNNs first, as captured otherwise; table
    lookups keep their rank (:mod:`kexport.formats.litert._tables`), new axes are
    ``expand_dims`` (:mod:`kexport.formats.litert._newaxis`)."""
    python_fn = getattr(endpoint.function, "python_function", None)
    with jax_forms(), ranked_lookups(), new_axes_expanded():
        if python_fn is not None and layers:
            try:
                with _rnn_unrolled(layers):
                    return signature_function(endpoint, python_fn).get_concrete_function()
            except (ValueError, TypeError):
                pass  # e.g. a dynamic time axis cannot be unrolled: trace as captured
        return signature_function(endpoint, endpoint.function).get_concrete_function()

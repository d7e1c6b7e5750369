"""TensorFlow backend: endpoints are traced directly with ``tf.function``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kexport.capture._base import Capture, is_tf_variable
from kexport.capture._naming import named_like
from kexport.capture._tf_function import tf_specs
from kexport.capture.portable import portable_ops
from kexport.errors import SignatureTypeError
from kexport.signature import flat_names

__all__ = ["TensorFlowCapture"]


class TensorFlowCapture(Capture):
    """Traces Keras functions with ``tf.function`` on the TensorFlow backend.

    Keras variables on this backend wrap ``tf.Variable`` objects, so the traced
    graph reads and updates the model's own state (seed generators advance,
    as they would in the live model).
    """

    backend = "tensorflow"

    def _held(self, variable: Any) -> Any:
        return variable.value

    def collection(self, variables: Any) -> list[Any]:
        return [v if is_tf_variable(v) else v.value for v in variables]

    def _trace(self, name: str, fn: Callable[..., Any], signature: list[Any],
               **kwargs: Any) -> Any:
        import tensorflow as tf

        if kwargs:

            raise SignatureTypeError(
                f"Endpoint '{name}': unexpected keyword arguments for the "
                f"TensorFlow backend: {sorted(kwargs)}. `is_static` and "
                "`jax2tf_kwargs` only apply to the JAX backend."
            )
        specs = tf_specs(signature, flat_names(signature))

        def portable(*args: Any) -> Any:  # every (re)trace lowers ops all formats hold
            with portable_ops():
                return fn(*args)

        return tf.function(named_like(fn, len(specs), portable), input_signature=specs,
                           autograph=False)

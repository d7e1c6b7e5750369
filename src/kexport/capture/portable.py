"""Keras's TensorFlow lowerings that other runtimes cannot hold, rewritten while tracing.

Keras's TensorFlow backend computes ``ops.signbit`` by bit-casting a float32
tensor to int32 and masking the sign bit (``tf.bitcast`` + ``tf.bitwise.bitwise_and``),
and ``ops.argmax``/``ops.argmin`` of floats call it (to order ``-0.0`` before
``0.0``). Those two ops have no ONNX (``Bitcast`` fails ``onnx.checker``), no
TFLite builtin (``BitwiseAnd``) and no OpenVINO conversion, so every model
with an argmax head (a label beside its probabilities) was refused outside
SavedModel.

Within :func:`portable_ops` Keras's ``signbit`` of a float is the same
predicate in comparison ops every runtime has: ``x < 0``, or ``x == 0`` and
``1 / x < 0`` (true exactly for ``-0.0``). It differs only on NaNs with the
sign bit set (``False`` here); ``argmax`` of NaN is undefined anyway. The
scope is a :func:`kexport._patch.scoped_patch` of the backend module's
attribute, so ``argmax`` (which looks ``signbit`` up in its module) uses it;
outside the scope Keras is unchanged.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["portable_ops"]


def _signbit(original: Any) -> Any:
    def signbit(x: Any) -> Any:
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        if not x.dtype.is_floating:
            return original(x)
        zero = tf.zeros([], x.dtype)
        negative_zero = tf.logical_and(tf.equal(x, zero), tf.less(tf.math.reciprocal(x), zero))
        return tf.logical_or(tf.less(x, zero), negative_zero)

    return signbit


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Within the context, Keras's TensorFlow ``signbit`` uses comparison ops only."""
    tf_numpy = sys.modules.get("keras.src.backend.tensorflow.numpy")
    if tf_numpy is None:  # not the TensorFlow backend (or Keras moved it): nothing to do
        yield
        return
    with scoped_patch(tf_numpy, "signbit", _signbit):
        yield

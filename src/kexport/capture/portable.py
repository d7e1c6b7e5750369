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

Keras's JAX backend orders ``-0.0`` before ``0.0`` in ``argmax``/``argmin`` of
floats with ``jnp.signbit``, which lowers to a bit-cast (jax2onnx writes
``BitCast``, which ``onnx.checker`` refuses), and ``jnp.argmax`` is a
two-operand reduce the TFLite converter cannot legalize. Within the scope
they use the same comparison predicate and are the first index where the
row reaches its max (min), or its first NaN: one-operand reductions only. Its ``top_k`` lowers to ``chlo.top_k``, which JAX
serializes as a StableHLO composite that TensorFlow's ``XlaCallModule`` of an
older StableHLO cannot read (a SavedModel that fails when called), and a sort
the TFLite converter refuses: within :func:`sorted_top_k` (the jax2tf
capture) a ``top_k`` of ``k <= 32`` is ``k`` max-reductions, each taking the
row's largest value not taken yet at its lowest index: the same values and
indices as JAX's (ties: the lower index first; NaNs are not ordered).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["portable_ops", "sorted_top_k"]


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


def _jax_arg(reduce_name: str) -> Any:
    def make(original: Any) -> Any:
        def arg(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
            import jax
            import jax.numpy as jnp

            x = jnp.asarray(x)
            if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim == 0:
                return original(x, axis=axis, keepdims=keepdims)
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            negative_zero = (x == 0) & (jnp.reciprocal(x) < 0)
            x = jnp.where(negative_zero, -jnp.finfo(x.dtype).tiny, x)
            flat = x.reshape(-1) if axis is None else x
            ax = 0 if axis is None else axis % x.ndim
            best = (jnp.max if reduce_name == "argmax" else jnp.min)(flat, axis=ax, keepdims=True)
            hit = (flat == best) | jnp.isnan(flat)  # the first NaN, as jnp's
            where = jax.lax.broadcasted_iota(jnp.int32, flat.shape, ax)
            out = jnp.min(jnp.where(hit, where, jnp.iinfo(jnp.int32).max), axis=ax,
                          keepdims=keepdims and axis is not None)
            return out.reshape((1,) * x.ndim) if keepdims and axis is None else out

        return arg

    return make


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Within the context, Keras's ``signbit`` (TensorFlow) and ``argmax``/``argmin``
    (JAX) use comparison ops only."""
    with contextlib.ExitStack() as stack:
        tf_numpy = sys.modules.get("keras.src.backend.tensorflow.numpy")
        if tf_numpy is not None:
            stack.enter_context(scoped_patch(tf_numpy, "signbit", _signbit))
        jax_numpy = sys.modules.get("keras.src.backend.jax.numpy")
        if jax_numpy is not None:
            for name in ("argmax", "argmin"):
                stack.enter_context(scoped_patch(jax_numpy, name, _jax_arg(name)))
        yield


#: The largest ``k`` written as ``k`` max-reductions; a larger one keeps JAX's ``top_k``.
_UNROLLED_K = 32


def _top_k(original: Any) -> Any:
    def top_k(x: Any, k: int, sorted: bool = True) -> Any:
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(x)
        if not isinstance(k, int) or k > _UNROLLED_K or x.ndim == 0:
            return original(x, k, sorted)
        low = (-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating)
               else jnp.iinfo(x.dtype).min)
        where = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
        taken = jnp.zeros(x.shape, bool)
        values, indices = [], []
        for _ in range(k):  # the row's max not taken yet, at its lowest index
            left = jnp.where(taken, low, x)
            best = jnp.max(left, axis=-1, keepdims=True)
            hit = (left == best) & ~taken
            index = jnp.min(jnp.where(hit, where, jnp.iinfo(jnp.int32).max), axis=-1,
                            keepdims=True)
            taken = taken | (where == index)
            values.append(best)
            indices.append(index)
        return jnp.concatenate(values, axis=-1), jnp.concatenate(indices, axis=-1)

    return top_k


@contextlib.contextmanager
def sorted_top_k() -> Iterator[None]:
    """Within the context, Keras's JAX ``top_k`` is a sort (see the module's text)."""
    jax_math = sys.modules.get("keras.src.backend.jax.math")
    if jax_math is None:
        yield
        return
    with scoped_patch(jax_math, "top_k", _top_k):
        yield

"""Peer workaround (TensorFlow lookup tables, LiteRT): lookups traced with their rank.

TFLite's converter gives ``HASHTABLE_FIND``'s result no shape (``tensor<*xi64>``).
An op after it that broadcasts, such as the ``SELECT_V2`` with which Keras's
``StringLookup(mask_token=...)`` puts the mask index in, then returns a scalar
in ai-edge-litert 2.3 for a batch of one (measured: ``{'y': 2}`` for
``[["red"]]``, where Keras gives ``[[2]]``). While kexport traces an endpoint for
LiteRT, a table lookup of a dense tensor is reshaped to its keys' shape (what it
is anyway), so the converter keeps the rank and every op after it is sized.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["ranked_lookups"]


def _ranked(original: Callable[..., Any]) -> Callable[..., Any]:
    def lookup(self: Any, keys: Any, name: Any = None) -> Any:
        import tensorflow as tf

        values = original(self, keys, name)
        if isinstance(keys, tf.Tensor) and isinstance(values, tf.Tensor):
            return tf.reshape(values, tf.shape(keys))
        return values  # ragged or sparse keys: as TensorFlow returns them

    return lookup


@contextlib.contextmanager
def ranked_lookups() -> Iterator[None]:
    """Within the context, ``lookup`` of TensorFlow's initializable tables (``StaticHashTable``:
    the tables of Keras's lookup layers) keeps its keys' shape."""
    from tensorflow.python.ops import lookup_ops

    with scoped_patch(lookup_ops.InitializableLookupTableBase, "lookup", _ranked):
        yield

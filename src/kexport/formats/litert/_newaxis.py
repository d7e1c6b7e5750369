"""Peer workaround (TensorFlow indexing, LiteRT): new axes as ``expand_dims``.

``x[:, None, :, :]`` on a TensorFlow tensor is one ``StridedSlice`` with a
``new_axis_mask``. The TFLite converter lowers that to a builtin only when the
input's shape is static; with a dynamic batch or length it needs the Flex
delegate ("'tf.StridedSlice' op is neither a custom op nor a flex op",
measured on keras_hub's Llama attention mask, ``tensor<?x?x?xi32>``, ai-edge-litert
2.x / TensorFlow 2.x). While kexport traces an endpoint for LiteRT, an index
made only of slices, integers and ``None`` is taken without the ``None`` and the
new axes are added with ``tf.expand_dims``: the same tensor, in builtin ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["new_axes_expanded"]


def _expanded(original: Callable[..., Any]) -> Callable[..., Any]:
    def getitem(self: Any, key: Any) -> Any:
        import tensorflow as tf

        keys = key if isinstance(key, tuple) else (key,)
        if not any(k is None for k in keys) or not all(
                k is None or (isinstance(k, (slice, int)) and not isinstance(k, bool))
                for k in keys):
            return original(self, key)  # no new axis, or an ellipsis, a tensor, a mask ...
        rest = tuple(k for k in keys if k is not None)
        out = original(self, rest) if rest else self
        axis = 0
        for k in keys:  # an integer drops its axis; a slice and a new axis keep one
            if k is None:
                out = tf.expand_dims(out, axis)
            if not isinstance(k, int):
                axis += 1
        return out

    return getitem


@contextlib.contextmanager
def new_axes_expanded() -> Iterator[None]:
    """Within the context, indexing a TensorFlow tensor with ``None`` adds the new axes
    with ``expand_dims`` instead of a ``StridedSlice`` ``new_axis_mask``."""
    from tensorflow.python.framework import tensor

    with scoped_patch(tensor.Tensor, "__getitem__", _expanded):
        yield

"""A workaround in Keras's TensorFlow backend, for tf2onnx (entered by
:func:`kexport.formats.onnx.compat.tf2onnx.tf2onnx_patches`).

**XLA-compiled convolutions**: Keras's TensorFlow backend runs grouped
convolutions (ConvNeXt's depthwise blocks, any ``Conv2D(groups>1)``) inside
a nested ``tf.function(jit_compile=True)``. TensorFlow's function inliner
never inlines a function marked for XLA, so tf2onnx leaves a
``StatefulPartitionedCall`` node that no ONNX runtime knows (the checker
rejects the graph). While kexport traces for tf2onnx, that module of the
Keras backend sees a ``tf`` whose ``function`` drops ``jit_compile``, so the
convolution is an ordinary nested function that is inlined and converted
(tf2onnx writes a grouped ``Conv``). Elsewhere (and in other threads'
eager calls, which do not trace a ``tf.function``) Keras is unchanged.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["keras_convolutions_inlinable"]


class _TensorFlowWithoutXla(types.ModuleType):
    """``tensorflow`` as seen by Keras's TensorFlow ``nn`` module while kexport
    traces for tf2onnx: every attribute, but ``function`` ignores ``jit_compile``."""

    def __init__(self, tf: Any) -> None:
        super().__init__("tensorflow")
        self._tf = tf

    def __getattr__(self, name: str) -> Any:
        if name != "function":
            return getattr(self._tf, name)
        function = self._tf.function

        def without_xla(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("jit_compile", None)
            return function(*args, **kwargs)

        return without_xla


def keras_convolutions_inlinable() -> contextlib.AbstractContextManager[None]:
    """Keras's grouped convolutions traced as ordinary (inlinable) nested functions."""
    try:
        from keras.src.backend.tensorflow import nn
    except ImportError:  # Keras moved it: its own behaviour applies
        return contextlib.nullcontext()
    return scoped_patch(nn, "tf", _TensorFlowWithoutXla)

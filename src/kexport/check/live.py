"""The live model's side of a check: its outputs as flat NumPy arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kexport._inference import infer
from kexport.errors import SignatureError
from kexport.signature import flat_names, flatten, infer_model_signature, pack_as

__all__ = ["flat_numpy", "live_reference"]


def flat_numpy(outputs: Any) -> list[Any]:
    """A live model's outputs (any nesting, any backend's tensors) as a flat list of
    NumPy arrays, in kexport's canonical flat order (:func:`kexport.signature.flatten`);
    bfloat16 outputs as float32."""
    import keras
    import numpy as np

    arrays = [np.asarray(keras.ops.convert_to_numpy(o)) for o in flatten(outputs)]
    # bfloat16 (a mixed-precision model) is no NumPy float: compared as the float it is
    return [a.astype("float32") if a.dtype.name == "bfloat16" else a for a in arrays]


def live_reference(model: Any, input_names: Sequence[str]
                   ) -> Callable[[dict[str, Any]], list[Any]]:
    """A function: NumPy inputs by name -> flat NumPy outputs of the live ``model``.

    A Keras layer or model is called with ``training=False``, its inputs
    packed as its own signature nests them (matched by name when the names
    agree, else in order); any other callable gets the inputs positionally.
    """
    import keras

    names = list(input_names)
    if isinstance(model, keras.layers.Layer):
        try:
            structure: list[Any] | None = infer_model_signature(model)
        except SignatureError:
            structure = None
        if structure is not None and len(flatten(structure)) == len(names):
            own = flat_names(structure)
            order = own if sorted(own) == sorted(names) else names

            def call(feeds: dict[str, Any]) -> list[Any]:
                args = pack_as(structure, [feeds[n] for n in order])
                return flat_numpy(infer(model, *args))
        else:
            def call(feeds: dict[str, Any]) -> list[Any]:
                return flat_numpy(infer(model, *[feeds[n] for n in names]))
        return call

    def call_plain(feeds: dict[str, Any]) -> list[Any]:
        return flat_numpy(model(*[feeds[n] for n in names]))

    return call_plain

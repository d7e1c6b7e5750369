"""Workarounds of tf2onnx 1.17, during one conversion (:func:`tf2onnx_patches`,
:data:`TF2ONNX_HANDLERS`, :func:`captured_inputs_to_initializers`).

- **NumPy 2** removed ``np.product``; tf2onnx's large-model path
  (``large_model=True``, needed for graphs over 2 GiB) still calls it in
  ``tf2onnx.graph``. During the call that module sees a NumPy proxy that adds
  the alias back (NumPy itself is not touched).
- **Export time**: tf2onnx's Einsum optimizer ranks every letter permutation
  of each equation with a cost model written in NumPy (about 2 s per Einsum,
  10 s for one attention layer). During the call it decomposes each equation
  as written instead; the graph still loses its Einsum nodes.
- **Erfc**: TensorFlow's exact GELU (``keras.activations.gelu``) uses
  ``Erfc``, which has no ONNX operator and no tf2onnx handler, so tf2onnx
  writes an invalid graph (Keras's own exporter does). A handler rewrites it
  as ``1 - Erf(x)``.
- **XLA-compiled convolutions**: see :mod:`.keras_backend` (entered with the
  two patches above).
- **Captured constants**: tensors a ``tf.function`` captures by value (e.g.
  the adapted mean/variance of ``keras.layers.Normalization``) are left as
  extra graph *inputs* by tf2onnx. :func:`captured_inputs_to_initializers`
  turns them into initializers with their captured values.

Every patch goes through :func:`kexport._patch.scoped_patch`: two conversions
in two threads share one installed patch, and the shipped attribute is back
when the last of them leaves.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kexport._patch import scoped_patch
from kexport.formats.onnx.compat.keras_backend import keras_convolutions_inlinable

if TYPE_CHECKING:
    import onnx

__all__ = ["TF2ONNX_HANDLERS", "captured_inputs_to_initializers", "einsum_as_written",
           "numpy2_product", "tf2onnx_patches"]


class _NumpyWithProduct(types.ModuleType):
    """``numpy`` as seen by tf2onnx: every attribute, plus ``product``."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        import numpy as np

        if name == "product":
            return np.prod
        return getattr(np, name)


def numpy2_product() -> contextlib.AbstractContextManager[None]:
    """``tf2onnx.graph`` sees ``np.product`` under NumPy 2, while inside."""
    import numpy as np
    import tf2onnx.graph

    if hasattr(np, "product"):  # NumPy 1: nothing to do
        return contextlib.nullcontext()
    return scoped_patch(tf2onnx.graph, "np", lambda shipped: _NumpyWithProduct())


def einsum_as_written() -> contextlib.AbstractContextManager[None]:
    """tf2onnx's Einsum optimizer decomposes each equation as written, while inside."""
    try:
        from tf2onnx.optimizer import einsum_optimizer
    except ImportError:  # tf2onnx moved it: its own behaviour applies
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        def as_written(equation: str, dtype: Any, optimize: bool = True, **kwargs: Any) -> Any:
            return shipped(equation, dtype, optimize=False, **kwargs)

        return as_written

    return scoped_patch(einsum_optimizer, "optimize_einsum", make)


@contextlib.contextmanager
def tf2onnx_patches() -> Iterator[None]:
    """The NumPy 2 alias, the as-written Einsum decomposition and inlinable Keras
    convolutions, for one conversion (which traces the function)."""
    # entered in this order, left in the reverse one (each scoped and shared
    # by concurrent conversions: kexport._patch.scoped_patch)
    with numpy2_product(), einsum_as_written(), keras_convolutions_inlinable():
        yield


def _erfc_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """tf2onnx handler: ``Erfc(x)`` becomes ``Sub(1, Erf(x))``."""
    import numpy as np
    from tf2onnx import utils

    np_dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=np_dtype))
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    node.type = "Sub"


#: ``custom_op_handlers`` for ``tf2onnx.convert``: TensorFlow ops tf2onnx has no handler for.
TF2ONNX_HANDLERS = {"Erfc": (_erfc_handler, [])}


def captured_inputs_to_initializers(model: onnx.ModelProto, function: Any) -> None:
    """Replace graph inputs that are by-value captures of ``function`` with initializers."""
    from onnx import numpy_helper

    wanted = {spec.name for spec in function.input_signature}
    extra = [v for v in model.graph.input if v.name not in wanted]
    if not extra:
        return
    concrete = function.get_concrete_function()
    values = {}
    for external, internal in concrete.graph.captures:
        if getattr(external, "dtype", None) is not None and external.dtype.name != "resource":
            values[internal.name] = external
    for value in extra:
        if value.name not in values:
            continue
        tensor = numpy_helper.from_array(values[value.name].numpy(), value.name)
        model.graph.initializer.append(tensor)
        model.graph.input.remove(value)

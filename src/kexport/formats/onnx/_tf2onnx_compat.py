"""The one place kexport talks to ``tf2onnx`` (and works around its age).

tf2onnx 1.17 predates NumPy 2. Everything kexport needs from it goes through
:func:`convert_function`; every workaround lives here, scoped to the call,
each with the reason it exists:

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
- **Captured constants**: tensors a ``tf.function`` captures by value (e.g.
  the adapted mean/variance of ``keras.layers.Normalization``) are left as
  extra graph *inputs* by tf2onnx. They are turned into initializers with
  their captured values.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = ["convert_function", "numpy2_patch"]


class _NumpyWithProduct(types.ModuleType):
    """``numpy`` as seen by tf2onnx: every attribute, plus ``product``."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        import numpy as np

        if name == "product":
            return np.prod
        return getattr(np, name)


@contextlib.contextmanager
def numpy2_patch() -> Iterator[None]:
    """Let ``tf2onnx.graph`` call ``np.product`` under NumPy 2, for one call."""
    import numpy as np
    import tf2onnx.graph

    if hasattr(np, "product"):  # NumPy 1: nothing to do
        yield
        return
    original = tf2onnx.graph.np
    tf2onnx.graph.np = _NumpyWithProduct()
    try:
        yield
    finally:
        tf2onnx.graph.np = original


@contextlib.contextmanager
def _einsum_as_written() -> Iterator[None]:
    from tf2onnx.optimizer import einsum_optimizer

    original = einsum_optimizer.optimize_einsum

    def as_written(equation: str, dtype: Any, optimize: bool = True, **kwargs: Any) -> Any:
        return original(equation, dtype, optimize=False, **kwargs)

    einsum_optimizer.optimize_einsum = as_written
    try:
        yield
    finally:
        einsum_optimizer.optimize_einsum = original


def _erfc_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """tf2onnx handler: ``Erfc(x)`` becomes ``Sub(1, Erf(x))``."""
    import numpy as np
    from tf2onnx import utils

    np_dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=np_dtype))
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    node.type = "Sub"


def _inline_external(model: onnx.ModelProto, storage: Any) -> None:
    """Put tensors tf2onnx kept aside (large-model mode) back into ``model``."""
    import onnx

    from kexport.formats.onnx._io import iter_initializers

    data = storage.name_to_tensor_data
    for tensor in iter_initializers(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next(e.value for e in tensor.external_data if e.key == "location")
        tensor.raw_data = data.pop(location)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _captured_inputs_to_initializers(model: onnx.ModelProto, function: Any) -> None:
    """Replace graph inputs that are by-value captures with initializers."""
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


def convert_function(function: Any, opset: int, large_model: bool = False) -> onnx.ModelProto:
    """Convert a ``tf.function`` with a flat, named input signature to ONNX.

    Args:
        function: a ``tf.function`` whose ``input_signature`` is a flat list
            of named ``tf.TensorSpec``.
        opset: the ONNX opset to emit.
        large_model: use tf2onnx's large-model mode (weights kept outside the
            protobuf while converting; needed above 2 GiB). The tensors are
            put back into the returned model, which kexport then writes with
            external data itself.

    Returns:
        The converted model; graph input names are the spec names.
    """
    import tf2onnx

    with numpy2_patch(), _einsum_as_written():
        model, storage = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset,
            large_model=large_model, custom_op_handlers={"Erfc": (_erfc_handler, [])})
    _captured_inputs_to_initializers(model, function)
    if large_model and storage is not None:
        _inline_external(model, storage)
    return model

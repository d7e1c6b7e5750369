"""The TensorFlow route to ONNX: a traced ``tf.function`` converted by ``tf2onnx``.

:class:`TensorFlowGraph` is the TensorFlow backend's one strategy (and the
re-host child's); :func:`tf_endpoint_to_onnx` also converts each endpoint of
an ``ExportArchive``. Every call into tf2onnx goes through
:func:`convert_function`, inside the workarounds of
:mod:`kexport.formats.onnx.compat`.

Large weights are *lifted*: tf2onnx freezes every variable into a constant of
its GraphDef and copies those several times, so variables of at least
``_LIFT_MIN_BYTES`` reach it as graph inputs instead and become initializers
afterwards (:func:`_liftable_variables`, :func:`_convert_lifted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kexport.capture.tensorflow import TensorFlowCapture
from kexport.context import ExportContext, step_label
from kexport.errors import CaptureError
from kexport.formats.onnx import compat
from kexport.formats.onnx._graph import (
    RawGraph,
    Source,
    Strategy,
    _guess_layer,
    _step_error,
)
from kexport.formats.onnx._io import iter_initializers
from kexport.signature import flatten, pack_as

if TYPE_CHECKING:
    import onnx

    from kexport.capture._base import TracedEndpoint

__all__ = ["TensorFlowGraph", "_liftable_variables", "_weight_bytes", "convert_function",
           "tf_endpoint_to_onnx"]

_LARGE_TF_GRAPH = 2**30  # above this, tf2onnx keeps weights outside its GraphDef


def _flat_tf_function(endpoint: TracedEndpoint) -> Any:
    """A ``tf.function`` over the endpoint's flat, named inputs, returning a flat list."""
    import tensorflow as tf

    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flatten(endpoint.signature), endpoint.input_names, strict=False)]
    structure = endpoint.signature
    # The endpoint's Python function, traced anew inside ``flat`` while tf2onnx
    # converts (within compat.tf2onnx_patches), not the graph traced at capture.
    function = getattr(endpoint.function, "python_function", endpoint.function)

    @tf.function(input_signature=specs, autograph=False)
    def flat(*flat_inputs: Any) -> list[Any]:
        args = pack_as(list(structure), list(flat_inputs))
        return list(tf.nest.flatten(function(*args)))

    return flat


def _weight_bytes(variables: Sequence[Any]) -> int:
    import numpy as np

    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
               for v in variables)


def tf_endpoint_to_onnx(endpoint: TracedEndpoint, opset: int, route: str,
                        model: Any | None = None, weight_bytes: int = 0) -> RawGraph:
    """Convert one traced TensorFlow endpoint with ``tf2onnx`` (step 2)."""
    function = _flat_tf_function(endpoint)
    try:
        proto = convert_function(function, opset, large_model=weight_bytes > _LARGE_TF_GRAPH)
    except Exception as e:
        text = str(e)
        hint = ("re-export on the TensorFlow backend; on JAX, export the model "
                "(export_onnx re-hosts it) rather than an ExportArchive endpoint"
                if "XlaCallModule" in text else
                "check that every op the endpoint uses has an ONNX equivalent; "
                "try another opset_version, or export format='tf_saved_model'")
        raise _step_error(CaptureError, step_label("convert", "tf2onnx conversion"), route, e,
                          _guess_layer(model, e) if model is not None else None,
                          hint) from e
    return RawGraph(proto, list(endpoint.input_names), list(endpoint.output_names),
                    list(endpoint.output_specs), route)


class TensorFlowGraph(Strategy):
    """The TensorFlow strategy: trace ``model(..., training=False)`` and convert it."""

    description = "the tf2onnx graph"
    route = "tensorflow: tf.function -> tf2onnx"
    naming = "layer_names"  # tf2onnx keeps the Keras name scopes in node names

    def capture(self, source: Source, opset: int, context: ExportContext) -> RawGraph:
        """Trace and convert, with large weights lifted when that conversion succeeds
        (an endpoint already traced, an ``ExportArchive``'s, is converted as it is)."""
        route = self.route_for(source)
        model = source.model
        if source.traced is not None:
            return tf_endpoint_to_onnx(source.traced, opset, route, model,
                                       source.weight_bytes or 0)
        capture = TensorFlowCapture()
        capture.track(model)
        try:
            endpoint = capture.trace(source.name, source.call, source.signature)
        except CaptureError as e:
            raise _step_error(CaptureError, step_label("capture", "tf.function trace"), route, e,
                              _guess_layer(model, e),
                              "make sure the model runs on these input shapes with "
                              "training=False") from e
        lifted = _liftable_variables(model)
        if lifted:
            try:
                return _convert_lifted(source, endpoint, lifted, opset, route)
            except Exception:  # the plain conversion below reports real failures
                pass
        return tf_endpoint_to_onnx(endpoint, opset, route, model,
                                   _weight_bytes(model.variables))


_LIFT_MIN_BYTES = 64 * 1024
"""Variables at least this large reach tf2onnx as graph inputs, not constants."""


def _liftable_variables(model: Any) -> list[Any]:
    """Large variables of ``model`` outside recurrent layers, each once.

    tf2onnx freezes every variable into a constant of its GraphDef and copies
    those several times (a 128 MiB MLP took 30 s and 9 GiB). Large weights are
    fed to the converter as inputs instead and become initializers afterwards.
    Recurrent layers keep constant weights: tf2onnx only rewrites a Keras RNN
    loop into an ONNX LSTM/GRU op when they are constants.
    """
    import keras
    import numpy as np

    recurrent = {id(v) for layer in model._flatten_layers(include_self=False)
                 if isinstance(layer, keras.layers.RNN) for v in layer.variables}
    out, seen = [], set()
    for v in model.variables:
        size = int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        if size >= _LIFT_MIN_BYTES and id(v) not in recurrent and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _convert_lifted(source: Source, endpoint: TracedEndpoint, lifted: list[Any], opset: int,
                    route: str) -> RawGraph:
    """Convert the endpoint ``source`` with ``lifted`` variables as graph inputs.

    The function runs the model in a ``keras.StatelessScope`` mapping each lifted
    variable to an input; the converted graph's weight inputs are then turned
    into initializers holding the variables' values (one copy), named by the
    variables' paths.
    """
    import keras
    import tensorflow as tf
    from onnx import numpy_helper

    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flatten(endpoint.signature), endpoint.input_names, strict=False)]
    placeholders = [f"kexport_lifted_{i}" for i in range(len(lifted))]
    weights = [tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=n)
               for v, n in zip(lifted, placeholders, strict=True)]
    structure, count = endpoint.signature, len(specs)

    @tf.function(input_signature=specs + weights, autograph=False)
    def flat(*args: Any) -> list[Any]:
        with keras.StatelessScope(state_mapping=list(zip(lifted, args[count:], strict=True))):
            out = source.call(*pack_as(list(structure), list(args[:count])))
        return list(tf.nest.flatten(out))

    proto = convert_function(flat, opset)
    by_name = dict(zip(placeholders, lifted, strict=True))
    taken = {o for node in proto.graph.node for o in node.output} | set(endpoint.input_names)
    rename: dict[str, str] = {}
    for value in list(proto.graph.input):
        variable = by_name.get(value.name.split(":")[0])
        if variable is None:
            continue
        name = str(variable.path)
        if name in taken or name in rename.values():
            name = value.name
        rename[value.name] = name
        proto.graph.input.remove(value)
        array = keras.ops.convert_to_numpy(variable.value)
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
        del array
    if len(rename) != len(lifted):
        raise CaptureError("lifted weights did not all reach the graph")
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return RawGraph(proto, list(endpoint.input_names), list(endpoint.output_names),
                    list(endpoint.output_specs), route)


def _inline_external(model: onnx.ModelProto, storage: Any) -> None:
    """Put tensors tf2onnx kept aside (large-model mode) back into ``model``."""
    import onnx

    data = storage.name_to_tensor_data
    for tensor in iter_initializers(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next(e.value for e in tensor.external_data if e.key == "location")
        tensor.raw_data = data.pop(location)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


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

    with compat.tf2onnx_patches():
        model, storage = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset,
            large_model=large_model, custom_op_handlers=compat.TF2ONNX_HANDLERS)
    compat.captured_inputs_to_initializers(model, function)
    if large_model and storage is not None:
        _inline_external(model, storage)
    return model

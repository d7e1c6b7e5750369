"""The string prefix of a Functional model: the lowered layers on its raw inputs.

:func:`find_prefix` splits a Functional model where the preprocessing ends:
each lowered layer (:data:`._layers.LOWERED`) that reads a model input
directly is the prefix, the rest of the model (from those layers' outputs
on) is converted by the normal ONNX strategy, and :func:`prefix_model` is the
ONNX graph of the prefix alone, merged in front of it by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kexport.context import step_label
from kexport.errors import UnsupportedRouteError
from kexport.formats.onnx.strings._layers import LOWERED, lower, refusal
from kexport.formats.onnx.strings._ops import Builder
from kexport.formats.onnx.strings._types import onnx_type
from kexport.signature import Spec

__all__ = ["Prefix", "find_prefix", "prefix_model", "string_layers"]

_TABLE_LAYERS = (*LOWERED, "Hashing")


_LOWERING = "route: kexport's string lowering"


def string_layers(model: Any) -> list[Any]:
    """The layers of ``model`` that hold a lookup table or read strings."""
    try:
        layers = [model, *model._flatten_layers(include_self=False)]
    except Exception:
        return []
    return [layer for layer in layers if type(layer).__name__ in _TABLE_LAYERS]


@dataclass
class Prefix:
    """Where the preprocessing of a Functional model ends.

    Attributes:
        layers: per flat model input, the lowered layer that reads it (or ``None``).
        outputs: per flat model input, the tensor the rest of the model reads
            (the layer's output, or the input itself).
    """

    layers: list[Any]
    outputs: list[Any]


def _route_error(layer: Any, why: str) -> UnsupportedRouteError:
    return UnsupportedRouteError(
        f"{step_label('plan', _LOWERING)}: Keras layer "
        f"'{layer.name}' ({type(layer).__name__}) cannot be exported to ONNX: it {why}. "
        "Next steps: format='tf_saved_model' holds it; or export the model from the "
        "layer's output on.")


def find_prefix(model: Any, n_inputs: int) -> Prefix:
    """The lowered layers on ``model``'s inputs; a typed refusal when a table
    layer sits elsewhere, or when its input feeds other layers too."""
    inputs = getattr(model, "inputs", None)
    if not getattr(model, "operations", None) or inputs is None or len(inputs) != n_inputs:
        layer = string_layers(model)[0]
        raise _route_error(layer, "sits inside a model that is not Functional, where "
                           "kexport cannot split the preprocessing from the rest")
    layers: list[Any] = [None] * n_inputs
    outputs: list[Any] = list(inputs)
    placed = set()
    for op in model.operations:
        for node in getattr(op, "_inbound_nodes", []):
            for j, t in enumerate(inputs):
                if type(op).__name__ in LOWERED and any(x is t for x in node.input_tensors):
                    if layers[j] is not None and layers[j] is not op:
                        raise _route_error(op, "reads an input another lookup reads too")
                    layers[j] = op
                    outputs[j] = node.output_tensors[0]
                    placed.update(id(x) for x in op._flatten_layers(include_self=True))
    for layer in string_layers(model):
        if id(layer) not in placed:
            problem = refusal(layer)
            raise problem if problem is not None else _route_error(
                layer, "does not read a model input directly (kexport lowers only a prefix)")
    for j, layer in enumerate(layers):
        if layer is None:
            continue
        problem = refusal(layer)
        if problem is not None:
            raise problem
        users = [op for op in model.operations if op is not layer and any(
            any(x is inputs[j] for x in node.input_tensors) for node in op._inbound_nodes)]
        if users:
            raise _route_error(layer, f"reads an input '{users[0].name}' reads too")
    return Prefix(layers, outputs)


def prefix_model(prefix: Prefix, names: Sequence[str], specs: Sequence[Spec],
                 out_names: Sequence[str], opset: int) -> Any:
    """The ONNX model of the prefix: raw inputs ``names`` -> ``out_names``."""
    from onnx import helper

    b = Builder("kexport_strings")
    graph_inputs, graph_outputs = [], []
    for layer, name, spec, out, tensor in zip(prefix.layers, names, specs, out_names,
                                              prefix.outputs, strict=True):
        shape = [d if d is not None else None for d in spec.shape]
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_type(spec.dtype), shape))
        if layer is None:
            b.nodes.append(helper.make_node("Identity", [name], [out]))
            graph_outputs.append(helper.make_tensor_value_info(out, onnx_type(spec.dtype),
                                                               shape))
            continue
        result = lower(b, layer, name, tuple(spec.shape))
        # the dtype Keras gives (TextVectorization's counts are int64, StringLookup's float32)
        b.nodes.append(helper.make_node("Cast", [result], [out],
                                        to=onnx_type(str(tensor.dtype))))
        graph_outputs.append(helper.make_tensor_value_info(out, onnx_type(str(tensor.dtype)),
                                                           list(tensor.shape)))
    graph = helper.make_graph(b.nodes, "kexport_strings", graph_inputs, graph_outputs,
                              initializer=b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("ai.onnx.ml", 4)])

"""Step 3 of the ONNX writer: finish a raw graph into what is written.

Inputs/outputs renamed to the Keras names, debug metadata and doc strings
(which can hold local source paths) cleared, the graph optimised (constant
folding, dead-node and duplicate removal), the opset converted where the
converter wrote another, dynamic axes named ``batch``/``d<axis>``, and
kexport's metadata set.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kexport._version import __version__
from kexport.check import samples
from kexport.errors import CaptureError, KexportError, WriteError
from kexport.formats.onnx import compat
from kexport.formats.onnx._graph import RawGraph, _spec_json, _step_error
from kexport.signature import Spec

if TYPE_CHECKING:
    import onnx

__all__ = ["finish"]


def _rename_io(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Give graph inputs/outputs the Keras names (an ``onnx_ir`` model, in place)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveInitializersFromInputsPass

    # captured constants (e.g. Normalization's mean) can arrive as inputs with
    # an initializer; they are weights, not model inputs
    RemoveInitializersFromInputsPass()(model)
    graph = model.graph
    if len(graph.inputs) != len(input_names) or len(graph.outputs) != len(output_names):
        raise CaptureError(
            f"Step 3/4 (finish): expected {len(input_names)} graph inputs and "
            f"{len(output_names)} outputs. Received {len(graph.inputs)} and "
            f"{len(graph.outputs)} from the converter."
        )
    wanted = set(input_names) | set(output_names)
    for node in graph:
        for v in node.outputs:
            if v.name in wanted and v not in graph.outputs:
                v.name = f"{v.name}__inner"
    for v, name in zip(graph.inputs, input_names, strict=False):
        v.name = name
    seen: set[int] = set()
    for i, (v, name) in enumerate(zip(list(graph.outputs), output_names, strict=False)):
        if v.is_graph_input() or id(v) in seen or (v.name != name and v.name in wanted):
            node = ir.node("Identity", inputs=[v])
            graph.append(node)
            v = node.outputs[0]
            graph.outputs[i] = v
        seen.add(id(v))
        v.name = name


def _clear_debug_info(model: Any) -> None:
    """Drop doc strings and node metadata (they can hold local source paths)."""
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass

    ClearMetadataAndDocStringPass()(model)
    model.doc_string = None
    model.graph.doc_string = None
    model.metadata_props.clear()
    model.graph.metadata_props.clear()


_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze"}  # same bytes out as in


def _fold_weight_layout(node: Any) -> bool | None:
    """Fold layout ops on weights whatever their size (a kernel's HWIO -> OIHW
    transpose would otherwise run at every inference; onnxscript's default
    limits skip tensors over 8192 elements)."""
    if node.op_type in _LAYOUT_OPS and node.domain in ("", "ai.onnx") and all(
            v is None or v.const_value is not None for v in node.inputs):
        return True
    return None


def _optimize(model: Any) -> None:
    """Constant folding, dead-node, identity and duplicate removal."""
    import onnxscript.optimizer
    from onnx_ir.passes.common import (
        CommonSubexpressionEliminationPass,
        DeduplicateInitializersPass,
        RemoveUnusedFunctionsPass,
        RemoveUnusedNodesPass,
        RemoveUnusedOpsetsPass,
    )

    # one pass: a second found nothing more on the zoo and cost up to 5x the first
    with compat.one_optimizer_at_a_time():  # its rewrite rules are not thread-safe
        onnxscript.optimizer.optimize_ir(model, num_iterations=1,
                                         should_fold=_fold_weight_layout)
    for p in (DeduplicateInitializersPass(), CommonSubexpressionEliminationPass(),
              RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
        p(model)


def finish(raw: RawGraph, *, opset: int, backend: str, endpoint: str,
           input_specs: Sequence[Spec], optimize: bool = True) -> onnx.ModelProto:
    """Step 3: names, optimisation, opset and metadata, as an ``onnx.ModelProto``."""
    import keras
    import onnx
    import onnx_ir as ir

    try:
        # jax2onnx hands over an onnx_ir model; the others a ModelProto
        if not isinstance(raw.model, ir.Model):
            compat.scoped_node_names(raw.model)  # before the node metadata is cleared
        model = raw.model if isinstance(raw.model, ir.Model) else \
            ir.serde.deserialize_model(raw.model)
        _rename_io(model, raw.input_names, raw.output_names)
        _clear_debug_info(model)
        if optimize:
            _optimize(model)
        proto = ir.serde.serialize_model(model)
    except KexportError:
        raise
    except Exception as e:
        raise _step_error(WriteError, "Step 3/4 (finish: rename + optimise)", raw.route, e,
                          None, "retry with another opset_version; report the model "
                          "to kexport") from e
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current != opset:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as e:
            raise _step_error(WriteError, f"Step 3/4 (finish: opset {current} -> {opset})",
                              raw.route, e, None,
                              f"use opset_version={current} or newer") from e
    _name_dynamic_dims(proto, input_specs)
    output_specs = _graph_output_specs(proto, raw.output_specs)
    proto.producer_name = "kexport"
    proto.producer_version = __version__
    proto.doc_string = ""
    del proto.metadata_props[:]
    meta = {
        "kexport.backend": backend,
        "kexport.keras_version": keras.__version__,
        "kexport.endpoint": endpoint,
        "kexport.route": raw.route,
        "kexport.inputs": _spec_json(input_specs, raw.input_names),
        "kexport.outputs": _spec_json(output_specs, raw.output_names),
        **{f"kexport.{k}": json.dumps(v) for k, v in samples.recorded().items()},
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto


def _graph_output_specs(proto: onnx.ModelProto, specs: Sequence[Spec]) -> list[Spec]:
    """The output specs as the finished graph has them.

    Converters that run the model on samples (torch.export, jax2onnx) only know
    the sample's output sizes; the graph knows which output dims are symbolic.
    An axis the graph names (``dim_param``) or leaves unknown is dynamic; a
    graph output without shape information keeps the converter's spec.
    """
    out = []
    for spec, value in zip(specs, proto.graph.output, strict=False):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or len(tensor.shape.dim) != len(spec.shape):
            out.append(spec)
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else None
                      for d in tensor.shape.dim)
        out.append(Spec(shape, spec.dtype, spec.name))
    return out + list(specs[len(out):])


def _name_dynamic_dims(proto: onnx.ModelProto, input_specs: Sequence[Spec]) -> None:
    """Name dynamic input axes by the signature's symbols, graph-wide.

    Converters invent names (``unk__6``, ``s0``); every input axis gets its
    symbol from the dimension plan (:mod:`kexport._dims`: ``batch`` on axis 0,
    one symbol per group of axes the model forces equal), and the invented
    name is replaced in outputs and value infos too, so output dims that
    follow an input dim say so.
    """
    rename: dict[str, str] = {}
    for spec, value in zip(input_specs, proto.graph.input, strict=False):
        dims = value.type.tensor_type.shape.dim
        for axis in spec.dynamic_axes:
            if axis >= len(dims):
                continue
            new = spec.symbol(axis)
            old = dims[axis].dim_param if dims[axis].HasField("dim_param") else None
            if old and old not in rename:
                rename[old] = new
            dims[axis].dim_param = new  # the plan's symbol, even where a converter unified
    for value in [*proto.graph.output, *proto.graph.value_info]:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]

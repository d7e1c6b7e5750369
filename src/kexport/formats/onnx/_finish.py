"""Step 3 of the ONNX writer: finish a raw graph into what is written, as onnx-ir passes.

Each step is a pass (:class:`FinishPass`, an ``onnx_ir.passes.InPlacePass``)
that states what it needs (``requires``) and what it leaves (``ensures``); the
passes run in order under ``onnx_ir.passes.Sequential``
(:func:`kexport.formats.onnx._passes.run_passes`), so a failure says which
pass failed after which (:class:`FinishPassError`, a
:class:`~kexport.errors.WriteError`). In order:

1. :class:`NamedIO` — graph inputs/outputs get the Keras names;
2. :class:`ClearedDebugInfo` — doc strings and metadata (which can hold local
   source paths) cleared;
3. :class:`Optimized` — constant folding, dead-node and duplicate removal;
4. :class:`AtOpset` — the opset converted where the converter wrote another;
5. :class:`NamedDynamicDims` — dynamic axes named by the dimension plan;
6. :class:`KexportMetadata` — producer and kexport's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kexport._version import __version__
from kexport.context import step_label
from kexport.errors import CaptureError, WriteError
from kexport.formats.onnx import compat
from kexport.formats.onnx._graph import RawGraph, _spec_json
from kexport.formats.onnx._passes import FinishPass, FinishPassError, run_passes
from kexport.signature import Spec

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

__all__ = ["AtOpset", "ClearedDebugInfo", "FinishPass", "FinishPassError", "KexportMetadata",
           "NamedDynamicDims", "NamedIO", "Optimized", "finish", "finishing_passes",
           "run_passes"]


class NamedIO(FinishPass):
    """Graph inputs/outputs named as the Keras model names them."""

    name = "named_io"

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        self.input_names, self.output_names = list(input_names), list(output_names)

    def requires(self, model: ir.Model) -> None:
        from onnx_ir.passes.common import RemoveInitializersFromInputsPass

        # captured constants (e.g. Normalization's mean) can arrive as inputs with
        # an initializer; they are weights, not model inputs
        RemoveInitializersFromInputsPass()(model)
        graph = model.graph
        if len(graph.inputs) != len(self.input_names) or \
                len(graph.outputs) != len(self.output_names):
            raise CaptureError(
                f"{step_label('finish', f'pass {self.name!r}')}: expected {len(self.input_names)} "
                f"graph inputs and {len(self.output_names)} outputs. Received "
                f"{len(graph.inputs)} and {len(graph.outputs)} from the converter."
            )

    def ensures(self, model: ir.Model) -> None:
        got = ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
        if got != (self.input_names, self.output_names):
            raise ValueError(f"graph inputs/outputs are {got}")

    def apply(self, model: ir.Model) -> bool:
        import onnx_ir as ir

        graph = model.graph
        wanted = set(self.input_names) | set(self.output_names)
        for node in graph:
            for v in node.outputs:
                if v.name in wanted and v not in graph.outputs:
                    v.name = f"{v.name}__inner"
        for v, name in zip(graph.inputs, self.input_names, strict=False):
            v.name = name
        seen: set[int] = set()
        for i, (v, name) in enumerate(zip(list(graph.outputs), self.output_names, strict=False)):
            if v.is_graph_input() or id(v) in seen or (v.name != name and v.name in wanted):
                node = ir.node("Identity", inputs=[v])
                graph.append(node)
                v = node.outputs[0]
                graph.outputs[i] = v
            seen.add(id(v))
            v.name = name
        return True


class ClearedDebugInfo(FinishPass):
    """No doc strings or metadata left (they can hold local source paths)."""

    name = "cleared_debug_info"

    def ensures(self, model: ir.Model) -> None:
        if model.doc_string or model.graph.doc_string or model.metadata_props:
            raise ValueError("doc strings or metadata are left")

    def apply(self, model: ir.Model) -> bool:
        from onnx_ir.passes.common import ClearMetadataAndDocStringPass

        ClearMetadataAndDocStringPass()(model)
        model.doc_string = None
        model.graph.doc_string = None
        model.metadata_props.clear()
        model.graph.metadata_props.clear()
        return True


_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze"}  # same bytes out as in


def _fold_weight_layout(node: Any) -> bool | None:
    """Fold layout ops on weights whatever their size (a kernel's HWIO -> OIHW
    transpose would otherwise run at every inference; onnxscript's default
    limits skip tensors over 8192 elements)."""
    if node.op_type in _LAYOUT_OPS and node.domain in ("", "ai.onnx") and all(
            v is None or v.const_value is not None for v in node.inputs):
        return True
    return None


class Optimized(FinishPass):
    """Constant folding, dead-node, identity and duplicate removal."""

    name = "optimized"

    def apply(self, model: ir.Model) -> bool:
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
        return True


def _default_opset(model: ir.Model) -> int | None:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


class AtOpset(FinishPass):
    """The graph at the opset asked for (ONNX's version converter, where it differs)."""

    name = "at_opset"

    def __init__(self, opset: int) -> None:
        self.opset = opset

    def ensures(self, model: ir.Model) -> None:
        if _default_opset(model) != self.opset:
            raise ValueError(f"the graph is at opset {_default_opset(model)}")

    def apply(self, model: ir.Model) -> bool:
        import onnx
        import onnx_ir as ir

        current = _default_opset(model)
        if current == self.opset:
            return False
        try:
            converted = ir.serde.deserialize_model(onnx.version_converter.convert_version(
                ir.serde.serialize_model(model), self.opset))
        except Exception as e:
            raise WriteError(
                f"{step_label('finish', f'pass {self.name!r}, opset {current} -> {self.opset}')} failed: "
                f"{type(e).__name__}: {str(e).strip()[:1500]}\nNext steps: use "
                f"opset_version={current} or newer") from e
        model.graph = converted.graph  # its opset imports come with it
        model.ir_version = converted.ir_version
        return True


class NamedDynamicDims(FinishPass):
    """Dynamic input axes named by the signature's symbols, graph-wide.

    Converters invent names (``unk__6``, ``s0``); every input axis gets its
    symbol from the dimension plan (:mod:`kexport._dims`: ``batch`` on axis 0,
    one symbol per group of axes the model forces equal), and the invented
    name is replaced in outputs and inner values too, so output dims that
    follow an input dim say so.
    """

    name = "named_dynamic_dims"

    def __init__(self, input_specs: Sequence[Spec]) -> None:
        self.input_specs = list(input_specs)

    def apply(self, model: ir.Model) -> bool:
        import onnx_ir as ir

        graph = model.graph
        rename: dict[str, str] = {}
        for spec, value in zip(self.input_specs, graph.inputs, strict=False):
            if value.shape is None:
                continue
            dims = list(value.shape.dims)
            for axis in spec.dynamic_axes:
                if axis >= len(dims):
                    continue
                new, old = spec.symbol(axis), dims[axis]
                if isinstance(old, ir.SymbolicDim) and old.value and old.value not in rename:
                    rename[old.value] = new
                dims[axis] = ir.SymbolicDim(new)  # the plan's symbol, even where unified
            value.shape = ir.Shape(dims)
        if not rename:
            return True
        inputs = set(map(id, graph.inputs))
        values = [*graph.outputs, *(v for node in graph for v in node.outputs)]
        for value in values:
            if id(value) in inputs or value.shape is None:
                continue
            dims = list(value.shape.dims)
            if any(isinstance(d, ir.SymbolicDim) and d.value in rename for d in dims):
                value.shape = ir.Shape([ir.SymbolicDim(rename[d.value])
                                        if isinstance(d, ir.SymbolicDim) and d.value in rename
                                        else d for d in dims])
        return True


class KexportMetadata(FinishPass):
    """kexport's producer and metadata: backend, Keras version, endpoint, route,
    inputs/outputs (the graph's own output shapes), sample policy."""

    name = "kexport_metadata"

    def __init__(self, raw: RawGraph, backend: str, endpoint: str,
                 input_specs: Sequence[Spec], recorded: Mapping[str, Any]) -> None:
        self.raw, self.backend, self.endpoint = raw, backend, endpoint
        self.input_specs = list(input_specs)
        self.recorded = dict(recorded)

    def ensures(self, model: ir.Model) -> None:
        if "kexport.route" not in model.metadata_props:
            raise ValueError("no kexport.route")

    def apply(self, model: ir.Model) -> bool:
        import keras

        raw = self.raw
        model.producer_name = "kexport"
        model.producer_version = __version__
        model.doc_string = None
        model.metadata_props.clear()
        model.metadata_props.update({
            "kexport.backend": self.backend,
            "kexport.keras_version": keras.__version__,
            "kexport.endpoint": self.endpoint,
            "kexport.route": raw.route,
            "kexport.inputs": _spec_json(self.input_specs, raw.input_names),
            "kexport.outputs": _spec_json(_graph_output_specs(model, raw.output_specs),
                                          raw.output_names),
            **{f"kexport.{k}": json.dumps(v) for k, v in self.recorded.items()},
        })
        return True


def _graph_output_specs(model: ir.Model, specs: Sequence[Spec]) -> list[Spec]:
    """The output specs as the finished graph has them.

    Converters that run the model on samples (torch.export, jax2onnx) only know
    the sample's output sizes; the graph knows which output dims are symbolic.
    An axis the graph names or leaves unknown is dynamic; a graph output
    without shape information keeps the converter's spec.
    """
    out = []
    for spec, value in zip(specs, model.graph.outputs, strict=False):
        if value.shape is None or len(value.shape) != len(spec.shape):
            out.append(spec)
            continue
        shape = tuple(d if isinstance(d, int) else None for d in value.shape.dims)
        out.append(Spec(shape, spec.dtype, spec.name))
    return out + list(specs[len(out):])


def finishing_passes(raw: RawGraph, *, opset: int, backend: str, endpoint: str,
                     input_specs: Sequence[Spec], optimize: bool = True,
                     recorded: Mapping[str, Any] | None = None) -> list[FinishPass]:
    """The finishing passes of ``raw``, in the order they run (``recorded``: the
    export's sample policy as manifest extras, :meth:`ExportContext.recorded`)."""
    return [NamedIO(raw.input_names, raw.output_names), ClearedDebugInfo(),
            *([Optimized()] if optimize else []), AtOpset(opset),
            NamedDynamicDims(input_specs), KexportMetadata(raw, backend, endpoint, input_specs,
                                                          dict(recorded or {}))]


def finish(raw: RawGraph, *, opset: int, backend: str, endpoint: str,
           input_specs: Sequence[Spec], optimize: bool = True,
           recorded: Mapping[str, Any] | None = None) -> onnx.ModelProto:
    """Step 3: the finishing passes on ``raw``'s graph, as an ``onnx.ModelProto``."""
    import onnx_ir as ir

    # jax2onnx hands over an onnx_ir model; the others a ModelProto
    if not isinstance(raw.model, ir.Model):
        compat.scoped_node_names(raw.model)  # before the node metadata is cleared
        raw.model = ir.serde.deserialize_model(raw.model)
    run_passes(raw.model, finishing_passes(raw, opset=opset, backend=backend,
                                           endpoint=endpoint, input_specs=input_specs,
                                           optimize=optimize, recorded=recorded), raw.route)
    return ir.serde.serialize_model(raw.model)

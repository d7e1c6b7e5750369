"""The PyTorch strategies: the fast traced ``torch.onnx`` graph, else ``torch.export``.

* :class:`TracedTorch` — tried first on the PyTorch backend.
  ``torch.onnx.export(dynamo=False)`` records the model by running it once
  (TorchScript tracing, ~0.1-1 s where ``torch.export`` + decomposition takes
  2-7 s). Tracing can silently fix a dynamic dimension or a branch, so the
  graph is only used when (a) no ``TracerWarning`` (a tensor turned into a
  Python value) came from outside Keras's own ops or from Keras's control
  flow (``cond``, loops), and (b) ONNX Runtime reproduces the live model at
  two *other* sizes of every dynamic axis (batch 1 and 3, other axes too).
  Any doubt refuses the model (:class:`NotTraceable`; the check (b) runs on
  the finished graph, through ``RawGraph.accept``) and the next strategy runs.
* :class:`TorchExport` — ``torch.export`` with a ``torch.export.Dim`` per
  symbol of the dimension plan (:mod:`kexport._dims`), translated by ``torch.onnx``; it refuses a model whose
  dynamic axis it fixed anyway (the export then re-hosts).

The ``torch.onnx`` workarounds both use are in :mod:`kexport.formats.onnx.compat`.
"""

from __future__ import annotations

import io
import os
import traceback
from typing import Any

from kexport.capture._base import _to_plain, output_names
from kexport.capture.torch_export import symbolic_sizes
from kexport.context import ExportContext, step_label
from kexport.errors import CaptureError, UnsupportedRouteError
from kexport.formats.onnx._accept import Acceptance, NotTraceable, samples
from kexport.formats.onnx._graph import (
    TORCH_ENDPOINT_ATTRIBUTE,
    RawGraph,
    Source,
    Strategy,
    _guess_layer,
    _step_error,
)
from kexport.formats.onnx.compat import (
    cached_torchlib_registry,
    quiet_torchscript_log,
    tracer_warnings_to,
)
from kexport.formats.torch_program import dynamic_shapes_for, export_refined, sample_sizes
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["TorchExport", "TracedTorch", "endpoint_module"]

_TRACE_SAMPLE_BATCH = 2


def endpoint_module(source: Source) -> Any:
    """A ``torch.nn.Module`` taking the flat inputs and returning the flat outputs
    of the endpoint, in eval mode (what both exporters trace); the model is its
    submodule ``TORCH_ENDPOINT_ATTRIBUTE`` (the first segment of node paths)."""
    import torch

    signature, call = source.signature, source.call

    class _Endpoint(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            setattr(self, TORCH_ENDPOINT_ATTRIBUTE, source.model)

        def forward(self, *flat_inputs: Any) -> Any:
            args = pack_as(list(signature), list(flat_inputs))
            return tuple(flatten(call(*args)))

    return _Endpoint().eval()


class TracedTorch(Strategy):
    """The fast PyTorch strategy: the traced ``torch.onnx`` graph, kept only when checked."""

    description = "the traced torch.onnx graph"
    route = "torch: torch.onnx (traced, verified)"
    naming = "module_paths"

    def capture(self, source: Source, opset: int, context: ExportContext) -> RawGraph:
        """Trace the model once; refuses it on a doubtful ``TracerWarning``."""
        import numpy as np
        import onnx
        import torch

        route = self.route_for(source)
        model, signature, call = source.model, source.signature, source.call
        specs = flatten(signature)
        names = flat_names(signature)
        if any(s.dtype == "string" for s in specs) or not hasattr(torch.onnx, "export"):
            raise NotTraceable("string inputs")
        structure = signature

        def live(flat: list[Any]) -> list[Any]:
            with torch.no_grad():
                out = call(*pack_as(list(structure), [torch.as_tensor(a) for a in flat]))
            return [np.asarray(t.detach().cpu().numpy()) for t in flatten(_to_plain(out))]

        sample = samples(specs, _TRACE_SAMPLE_BATCH, 0, context.samples, data=False)
        with torch.no_grad():
            first = call(*pack_as(list(structure), [torch.as_tensor(a) for a in sample]))
        outs = output_names(_to_plain(first), model)
        flat_first = flatten(_to_plain(first))
        out_specs = [Spec((None, *tuple(t.shape)[1:]) if t.ndim else (),
                          str(t.dtype).removeprefix("torch."), n)
                     for t, n in zip(flat_first, outs, strict=False)]
        dynamic_axes: dict[str, dict[int, str]] = {}
        for spec, name in zip(specs, names, strict=False):
            axes = {a: spec.symbol(a) for a in spec.dynamic_axes}
            if axes:
                dynamic_axes[name] = axes
        if any(0 in axes for axes in dynamic_axes.values()):
            for name, t in zip(outs, flat_first, strict=False):
                if t.ndim:
                    dynamic_axes[name] = {0: "batch"}
        buffer = io.BytesIO()
        wrapper = endpoint_module(source)
        doubts: list[str] = []

        def note(message: Any, category: type) -> None:
            if issubclass(category, torch.jit.TracerWarning) and not _benign_trace_site():
                doubts.append(str(message))

        try:
            with tracer_warnings_to(note), torch.no_grad(), quiet_torchscript_log():
                torch.onnx.export(wrapper, tuple(torch.as_tensor(a) for a in sample), buffer,
                                  dynamo=False, input_names=names, output_names=outs,
                                  dynamic_axes=dynamic_axes, opset_version=opset,
                                  do_constant_folding=True, verbose=False)
        except Exception as e:  # the torch.export strategy reports real failures
            raise NotTraceable(f"{type(e).__name__}: {e}") from e
        if doubts:
            raise NotTraceable(f"tracer warning: {doubts[0]}")
        graph = onnx.ModelProto()
        with buffer.getbuffer() as view:  # parsed in place: no copy of the weights' bytes
            graph.ParseFromString(view)
        del buffer
        return RawGraph(graph, names, outs, out_specs, route,
                        accept=Acceptance(names, specs, live, context))


# Keras's own ops read static sizes as Python values (input checks, softmax
# over a size-1 axis) and turn Python constants into tensors; kexport's tests
# run those at varied sizes. Python control flow on tensor values is another
# matter: Keras's ``cond``/loops and anything in user code stay doubts.
_CONTROL_FLOW = {"cond", "switch", "while_loop", "fori_loop", "scan", "associative_scan",
                 "map", "vectorized_map"}


def _benign_trace_site() -> bool:
    """Whether the TracerWarning being raised comes from Keras's own ops."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" in path or path.endswith(("/warnings.py", "/formats/onnx/_torch.py",
                                                         "/compat/torch_onnx.py")):
            continue
        return "/keras/src/" in path and frame.name not in _CONTROL_FLOW
    return False


# >= 2 (torch.export fixes size-1 dims), distinct per symbol so that
# unrelated dynamic axes are not unified by equal sample sizes.
_SAMPLE_SIZES = (2, 3, 4, 5, 6, 7, 8)


class _Specialised(NotTraceable):
    """``torch.export`` fixed a dynamic axis anyway: re-host instead."""


class TorchExport(Strategy):
    """``torch.export`` with a ``Dim`` per dynamic axis, then ``torch.onnx``."""

    description = "the torch.export graph"
    route = "torch: torch.export -> torch.onnx"
    naming = "module_paths"  # from the nodes' name-scope metadata (compat.scoped_node_names)

    def capture(self, source: Source, opset: int, context: ExportContext) -> RawGraph:
        """Export and translate; refuses a model whose dynamic axis was fixed anyway."""
        import numpy as np
        import torch

        route = self.route_for(source)
        model, signature, call = source.model, source.signature, source.call
        flat_specs = flatten(signature)
        names = flat_names(signature)
        for spec, name in zip(flat_specs, names, strict=False):
            if spec.dtype == "string":
                raise UnsupportedRouteError(
                    f"{step_label('plan', f'route: {route}')}: input '{name}' is a string "
                    "tensor, which PyTorch cannot hold. Next step: export on the "
                    "TensorFlow backend."
                )
        sizes = sample_sizes(flat_specs, _SAMPLE_SIZES)
        tensors = []
        for spec in flat_specs:
            shape = [sizes[spec.symbol(a)] if d is None else d for a, d in enumerate(spec.shape)]
            if np.dtype(spec.dtype).kind in "iub":
                sample = torch.zeros(shape, dtype=getattr(torch, spec.dtype))
            else:
                sample = torch.rand(shape, dtype=getattr(torch, spec.dtype))
            tensors.append(sample)
        dynamic = dynamic_shapes_for(flat_specs, min=1, max=2**20)
        structure = signature
        with torch.no_grad():
            live = call(*pack_as(list(structure), tensors))
        outs = output_names(_to_plain(live), model)
        out_specs = [Spec((None, *tuple(t.shape)[1:]) if t.ndim else (),
                          str(t.dtype).removeprefix("torch."), n)
                     for t, n in zip(flatten(_to_plain(live)), outs, strict=False)]
        wrapper = endpoint_module(source)

        def export(dynamic_shapes: Any) -> Any:
            with cached_torchlib_registry(), symbolic_sizes():
                # no output_names: torch.onnx gives a graph output the name
                # asked for even when a node's value already has it (a Keras
                # output layer named "layer_norm" after aten.layer_norm), writing
                # a graph no ONNX tool reads; the finishing step names outputs
                # and moves clashing inner values aside (_finish.NamedIO)
                return torch.onnx.export(
                    wrapper, tuple(tensors), dynamo=True, dynamic_shapes=dynamic_shapes,
                    input_names=names, opset_version=max(opset, 18),
                    optimize=False, verbose=False, report=False)

        try:
            program = export_refined(export, (tuple(dynamic),))
        except Exception as e:
            raise _step_error(CaptureError, step_label("convert", "torch.export + torch.onnx"),
                              route, e, _guess_layer(model, e),
                              "export on the TensorFlow backend (re-hosting), or report the "
                              "layer to kexport") from e
        proto = program.model_proto
        for spec, value in zip(flat_specs, proto.graph.input, strict=False):
            got = value.type.tensor_type.shape.dim
            if any(got[ax].HasField("dim_value") for ax in spec.dynamic_axes):
                raise _Specialised(f"it fixed a dynamic axis of input '{value.name}'")
        return RawGraph(proto, names, outs, out_specs, route)

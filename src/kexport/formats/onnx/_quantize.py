"""The quantization step of the ONNX writer: after finish (step 3), before the checked write.

Built on ONNX Runtime's own toolchain, on a private temporary copy of the
finished float graph (with external data when it is large):

- ``"dynamic_int8"``: the standard pre-processing (``quant_pre_process``), then
  ``quantize_dynamic`` with per-channel unsigned int8 weights (``MatMulInteger``
  / ``ConvInteger`` fed by ``DynamicQuantizeLinear``), recurrent nodes in a
  second pass with signed 7-bit weights (:func:`_dynamic` says why);
- ``"int8"``: pre-processing, then ``quantize_static`` in QDQ format
  (``QuantizeLinear``/``DequantizeLinear`` pairs), per-channel signed int8
  weights in the reduced 7-bit range, unsigned int8 activations (U8S8)
  calibrated (min/max) on the user's ``calibration_data`` through a
  ``CalibrationDataReader``. U8S8 is the pair ONNX Runtime's CPU provider fuses
  into its int8 kernels (``QLinearConv``, ``QLinearMatMul``, ``QLinearAdd``):
  with int8 activations (S8S8) most convolutions of a ResNet stayed
  ``DequantizeLinear -> Conv (float) -> QuantizeLinear`` and the artifact was
  slower than float (0.6x at batch 32; U8S8 2.2x, measured in
  ``benchmarks/quantization.py``). The reduced weight range keeps U8S8 exact
  on CPUs without VNNI, whose ``VPMADDUBSW`` saturates a pair of full-range
  products: the artifact must compute the same on whatever CPU runs it;
- ``"float16"``: ``onnxruntime.transformers.float16.convert_float_to_float16``
  with ``keep_io_types=True``: float16 weights and compute, float32 graph
  inputs and outputs.

``quantization_exclude`` (:class:`Exclude`): the nodes that came from the
named Keras layers (:func:`kexport.artifact.exclusion.excluded_nodes`, on
each node's scope, :func:`node_scopes`) stay float: ``nodes_to_exclude`` of
``quantize_dynamic`` / ``quantize_static`` (found again on the pre-processed
graph, whose fused nodes keep their scope), ``node_block_list`` of the
float16 conversion. A layer that matches no node, or a route whose graph
keeps no layer names, is a :class:`~kexport.errors.LayerMappingError`.

The quantized graph keeps kexport's metadata and records the mode, the
number of calibration rows and the toolchain versions
(``metadata_props["kexport.quantization"]``, see
:func:`kexport.artifact.quantization.record`). Workarounds of the toolchain
live in :mod:`kexport.formats.onnx.compat`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kexport.artifact.exclusion import ExcludedLayer, excluded_nodes
from kexport.artifact.quantization import METADATA_KEY, record
from kexport.check.calibration import calibration_rows
from kexport.context import step_label
from kexport.errors import KexportError, WriteError
from kexport.formats.onnx import compat
from kexport.formats.onnx._graph import INLINE_LIMIT, TORCH_ENDPOINT_ATTRIBUTE, _step_error
from kexport.formats.onnx._io import initializer_bytes

if TYPE_CHECKING:
    import onnx

__all__ = ["Exclude", "node_scopes", "quantize_graph", "toolchain"]


@dataclass(frozen=True)
class Exclude:
    """``quantization_exclude`` for one graph.

    Attributes:
        model: the model (or an archive's tracked models) the layers are in.
        layers: from :func:`kexport.artifact.exclusion.resolve_layers`.
        naming: how the graph's node names carry layers (the strategy's
            ``naming``; ``None``: they do not).
    """

    model: Any
    layers: tuple[ExcludedLayer, ...]
    naming: str | None
    #: every layer must have nodes in each graph (``False`` for an archive's
    #: graphs, each holding some of the layers)
    required: bool = True

    def nodes(self, proto: onnx.ModelProto, route: str) -> list[str]:
        """The nodes of ``proto`` to keep in float."""
        return excluded_nodes(self.model, self.layers, node_scopes(proto, self.naming),
                              self.naming, route, self.required)


def node_scopes(proto: onnx.ModelProto, naming: str | None) -> dict[str, tuple[str, ...]]:
    """Each named node's scope: the segments of its name before the operator's
    own (``net_1/dense_1/MatMul`` -> ``("net_1", "dense_1")``); for PyTorch's
    module paths, below the endpoint module's attribute holding the model."""
    scopes = {}
    for node in compat.all_nodes(proto.graph):
        if not node.name:
            continue
        segments = tuple(s for s in node.name.split("/") if s)[:-1]
        if naming == "module_paths" and segments[:1] == (TORCH_ENDPOINT_ATTRIBUTE,):
            segments = segments[1:]
        scopes[node.name] = segments
    return scopes


def toolchain() -> dict[str, str]:
    """The versions of the packages that quantize ONNX graphs."""
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _reader(batches: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Any:
    """A ``CalibrationDataReader`` over ``batches`` (flat, in graph-input order)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([dict(zip(names, batch.values(), strict=True))
                                for batch in batches])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    return _Batches()


def _save(proto: onnx.ModelProto, path: str, large: bool) -> None:
    import onnx

    onnx.save_model(proto, path, save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{os.path.basename(path)}.data", size_threshold=1024)


def quantize_graph(proto: onnx.ModelProto, mode: str,
                   calibration: Sequence[Mapping[str, Any]] | None, route: str,
                   accept: Callable[[bytes | str], None] | None = None,
                   exclude: Exclude | None = None) -> onnx.ModelProto:
    """``proto`` (a finished float graph) quantized in ``mode``.

    Args:
        proto: the finished graph; it is not changed.
        mode: ``"dynamic_int8"``, ``"int8"`` or ``"float16"``.
        calibration: for ``"int8"``: the batches (``{input name: array}`` in
            graph-input order, see :func:`kexport.check.calibration.calibration_batches`).
        route: the route, for messages.
        accept: a fast strategy's check of the *float* graph (it compares with
            the live model at float32 tolerances), run on the temporary copy
            before quantizing.
        exclude: the layers to keep in float (``quantization_exclude``).

    Raises:
        NotTraceable: from ``accept``.
        LayerMappingError: ``exclude``'s layers cannot be found in the graph.
        WriteError: when the toolchain fails (the message names the step).
    """
    import onnx

    large = initializer_bytes([proto]) > INLINE_LIMIT
    blocked: list[str] = []
    if exclude is not None and exclude.layers:
        blocked = exclude.nodes(proto, route)  # before any work: every layer has nodes
    with tempfile.TemporaryDirectory(prefix="kexport-onnx-quantize-") as tmp:
        source = os.path.join(tmp, "float.onnx")
        _save(proto, source, large)
        if accept is not None:
            accept(source)
        try:
            if mode == "float16":
                out = compat.float16_graph(onnx.load_model(source), large, blocked)
            else:
                out = _int8(source, tmp, mode, calibration, proto, large,
                            exclude if blocked else None, route)
        except KexportError:
            raise
        except Exception as e:
            raise _step_error(WriteError, step_label("finish", f"quantize: {mode}, onnxruntime"), route, e,
                              None, "try another quantization mode, or export without "
                              "quantization") from e
    compat.restore_after_quantization(out, proto)
    rows = calibration_rows(calibration) if mode == "int8" and calibration else None
    entry = out.metadata_props.add()
    excluded = [layer.path for layer in exclude.layers] if blocked and exclude else None
    entry.key, entry.value = METADATA_KEY, json.dumps(record(mode, rows, toolchain(),
                                                             excluded))
    return out


def _int8(source: str, tmp: str, mode: str, calibration: Sequence[Mapping[str, Any]] | None,
          proto: onnx.ModelProto, large: bool, exclude: Exclude | None = None,
          route: str = "?") -> onnx.ModelProto:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    prepared, target = os.path.join(tmp, "prepared.onnx"), os.path.join(tmp, "quantized.onnx")
    compat.pre_process(source, prepared, large)
    # pre-processing fuses nodes (MatMul + Add -> Gemm ".../MatMulAddFusion"), keeping
    # their scope: the excluded nodes are found again in the graph that is quantized
    excluded = (exclude.nodes(onnx.load_model(prepared, load_external_data=False), route)
                if exclude is not None else None)
    if mode == "dynamic_int8":
        _dynamic(prepared, target, large, excluded and compat.excluded_after_gemm_split(excluded))
    else:
        names = [i.name for i in proto.graph.input]
        quantize_static(prepared, target, _reader(calibration or [], names),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=large, nodes_to_exclude=excluded)
    return onnx.load_model(target)


# ``quantize_dynamic`` writes these as fused kernels that quantize their own
# activations at every step (``DynamicQuantizeLSTM``); the rest (MatMul, Gemm,
# Conv, Gather) become ``MatMulInteger`` / ``ConvInteger`` fed by
# ``DynamicQuantizeLinear``.
_RECURRENT = ("LSTM",)


def _dynamic(prepared: str, target: str, large: bool, excluded: list[str] | None) -> None:
    """``quantize_dynamic`` in two passes, so the artifact computes the same on
    every x86 CPU, with VNNI or without.

    Signed full-range weights (U8S8) saturate ``VPMADDUBSW`` on CPUs without
    VNNI: a random 8-16-3 MLP came out at 12 dB SQNR there and 40 dB on VNNI.
    Unsigned weights (U8U8) run through a kernel that does not saturate: 40 dB
    on both, at full range (7-bit weights cost the digits CNN of
    ``benchmarks/quant_matrix.py`` 10 dB). ``DynamicQuantizeLSTM`` always takes
    signed weights; it stays exact only in the reduced range (a 32-unit LSTM:
    14 dB at full range, 40 dB reduced), so recurrent nodes are quantized in a
    second pass with ``reduce_range``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    graph = onnx.load_model(prepared, load_external_data=False).graph
    recurrent = any(n.op_type in _RECURRENT for n in graph.node)
    first = os.path.join(os.path.dirname(target), "dynamic-1.onnx") if recurrent else target
    others = [op for op in IntegerOpsRegistry if op not in _RECURRENT]
    quantize_dynamic(prepared, first, per_channel=True, weight_type=QuantType.QUInt8,
                     op_types_to_quantize=others, use_external_data_format=large,
                     nodes_to_exclude=excluded)
    if recurrent:  # a second pass reads and writes every weight again: only when needed
        quantize_dynamic(first, target, per_channel=True, weight_type=QuantType.QInt8,
                         reduce_range=True, op_types_to_quantize=list(_RECURRENT),
                         use_external_data_format=large, nodes_to_exclude=excluded)

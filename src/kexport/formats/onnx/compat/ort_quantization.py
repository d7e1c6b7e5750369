"""Workarounds of ``onnxruntime.quantization`` (1.2x), used by the quantization
step (:mod:`kexport.formats.onnx._quantize`).

- :func:`pre_process`: ``quant_pre_process`` runs ONNX Runtime's symbolic
  shape inference first, which raises on some shapes it cannot reason about
  (symbols it cannot merge); the step is then retried without it (ONNX's
  own shape inference and the graph optimisation still run). Before raising,
  the symbolic shape inference dumps its partial graph as
  ``sym_shape_infer_temp.onnx`` (with uuid-named external data files) into
  the *current working directory*; during the step that module sees an
  ``onnx`` whose ``save_model`` puts a relative path into the step's own
  temporary folder instead, so nothing lands outside it.
- :func:`float16_graph`: ``convert_float_to_float16(keep_io_types=True)``
  appends the ``Cast`` nodes that keep inputs float32 at the *end* of the
  node list, after the nodes that read them, so ``onnx.checker`` refuses the
  graph ("Nodes in a graph must be topologically sorted"). The converted
  graph is sorted topologically (``onnx_ir``'s ``TopologicalSortPass``).
- :func:`restore_after_quantization`: the quantizer rewrites the producer
  (``onnx.quantize``), adds its own metadata entries (``onnx.infer``,
  ``onnx.quant.pre_process``) and imports every domain the pre-processing
  session knows (``com.microsoft.nchwc``, ``ai.onnx.training``, ...) whether
  a node uses it or not; the float16 converter renames the dynamic axes of
  the outputs it casts (``unk__66`` for ``batch``). The graph gets kexport's
  producer, metadata and input/output shapes back and keeps only the domains
  its nodes use.
- :func:`excluded_after_gemm_split`: the names ``quantize_dynamic`` gives the
  parts of an excluded ``Gemm``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kexport._patch import scoped_patch
from kexport.formats.onnx.compat._nodes import all_nodes

if TYPE_CHECKING:
    import onnx

__all__ = ["excluded_after_gemm_split", "float16_graph", "pre_process",
           "restore_after_quantization"]


_dump_folder = threading.local()  # where this thread's pre-processing keeps its dumps


class _OnnxSavingRelativeInto(types.ModuleType):
    """``onnx`` as seen by ``onnxruntime.tools.symbolic_shape_infer``: every
    attribute, with ``save_model`` of a relative path put into the calling
    :func:`pre_process`'s own folder (elsewhere, e.g. another thread's call
    of the library, unchanged)."""

    def __init__(self, original: Any) -> None:
        super().__init__("onnx")
        self._original = original

    def __getattr__(self, name: str) -> Any:
        if name == "save_model":
            return self._save_model
        return getattr(self._original, name)

    def _save_model(self, proto: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        folder = getattr(_dump_folder, "path", None)
        if folder is not None and isinstance(f, (str, os.PathLike)) and not os.path.isabs(f):
            f = os.path.join(folder, f)
        return self._original.save_model(proto, f, *args, **kwargs)


@contextlib.contextmanager
def _dumps_into(folder: str) -> Iterator[None]:
    """Within the context the symbolic shape inference dumps into ``folder``
    (see the module doc), not into the current working directory."""
    try:
        from onnxruntime.tools import symbolic_shape_infer
    except ImportError:  # no sympy: quant_pre_process says so itself
        yield
        return
    previous = getattr(_dump_folder, "path", None)
    _dump_folder.path = folder
    try:
        with scoped_patch(symbolic_shape_infer, "onnx", _OnnxSavingRelativeInto):
            yield
    finally:
        _dump_folder.path = previous


def pre_process(source: str, target: str, large: bool) -> None:
    """``quant_pre_process`` (the standard step before quantizing), without the
    symbolic shape inference when that raises; whatever the step writes stays
    in ``target``'s folder (see the module doc)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dumps = os.path.join(os.path.dirname(os.path.abspath(target)), "shape-inference")
    os.makedirs(dumps, exist_ok=True)
    with _dumps_into(dumps):
        try:
            quant_pre_process(source, target, save_as_external_data=large,
                              all_tensors_to_one_file=True)
        except Exception:
            quant_pre_process(source, target, skip_symbolic_shape=True,
                              save_as_external_data=large, all_tensors_to_one_file=True)


def excluded_after_gemm_split(names: list[str]) -> list[str]:
    """``names`` and the names ``quantize_dynamic`` gives their parts.

    Workaround: ``quantize_dynamic`` first replaces each ``Gemm`` (which
    ``quant_pre_process`` fuses from ``MatMul`` + ``Add``) by ``<name>_MatMul``
    and ``<name>_Add`` and only then reads ``nodes_to_exclude``, so an excluded
    ``Gemm`` must be listed under those names too.
    """
    return [*names, *(f"{n}{part}" for n in names for part in ("_MatMul", "_Add"))]


def float16_graph(model: onnx.ModelProto, large: bool,
                  node_block_list: list[str] | None = None) -> onnx.ModelProto:
    """``model`` in float16 with float32 inputs and outputs, topologically
    sorted; the nodes of ``node_block_list`` stay float32."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=large,
                                         node_block_list=node_block_list or None)
    if node_block_list:
        # Workaround: with node_block_list the converter leaves value_info of
        # blocked nodes' tensors in float16 where they stay float32 (the checker:
        # "Inferred elem type differs"); the shapes are inferred again on load.
        del converted.graph.value_info[:]
    graph = ir.serde.deserialize_model(converted)
    TopologicalSortPass()(graph)
    return ir.serde.serialize_model(graph)


def restore_after_quantization(quantized: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give ``quantized`` ``original``'s producer and metadata, and only the
    opset imports its nodes use (see the module doc)."""
    shapes = {v.name: v.type.tensor_type.shape
              for v in [*original.graph.input, *original.graph.output]}
    for value in [*quantized.graph.input, *quantized.graph.output]:
        if value.name in shapes and value.type.HasField("tensor_type"):
            value.type.tensor_type.shape.CopyFrom(shapes[value.name])
    quantized.producer_name = original.producer_name
    quantized.producer_version = original.producer_version
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)
    used = {n.domain or "" for n in all_nodes(quantized.graph)}
    kept = [o for o in quantized.opset_import if (o.domain or "") in used | {""}]
    del quantized.opset_import[:]
    quantized.opset_import.extend(kept)

"""Every workaround of a peer library's behaviour that the ONNX writer needs, in one place.

Each is scoped to kexport's own call (outside it the library behaves as
shipped), has the reason it exists here and a test (named in docs/onnx.md),
and does nothing when the library changed so that the private hook is gone.

tf2onnx 1.17 (entered through :func:`tf2onnx_patches` and the handlers in
:data:`TF2ONNX_HANDLERS`, during one conversion):

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
- **XLA-compiled convolutions**: Keras's TensorFlow backend runs grouped
  convolutions (ConvNeXt's depthwise blocks, any ``Conv2D(groups>1)``) inside
  a nested ``tf.function(jit_compile=True)``. TensorFlow's function inliner
  never inlines a function marked for XLA, so tf2onnx leaves a
  ``StatefulPartitionedCall`` node that no ONNX runtime knows (the checker
  rejects the graph). While kexport traces for tf2onnx, that module of the
  Keras backend sees a ``tf`` whose ``function`` drops ``jit_compile``, so the
  convolution is an ordinary nested function that is inlined and converted
  (tf2onnx writes a grouped ``Conv``). Elsewhere (and in other threads'
  eager calls, which do not trace a ``tf.function``) Keras is unchanged.
- **Captured constants**: tensors a ``tf.function`` captures by value (e.g.
  the adapted mean/variance of ``keras.layers.Normalization``) are left as
  extra graph *inputs* by tf2onnx. :func:`captured_inputs_to_initializers`
  turns them into initializers with their captured values.

jax2onnx 0.17:

- :func:`linear_output_binding`: jax2onnx checks after every equation that
  its outputs are connected to the graph by scanning every input, initializer
  and node output (quadratic in the model's size: 40% of a 3-block
  Transformer's conversion). Within the context a value produced by a node of
  the graph being built is recognised in O(1); every other case still runs
  jax2onnx's own scan, so the answers are the same.

torch.onnx (torch 2.x):

- :func:`quiet_torchscript_log`: the TorchScript exporter turns its C++ log
  on for good on every export, so a failed traced strategy dumps the whole
  Torch IR graph; kept off inside kexport.
- :func:`cached_torchlib_registry`: the dynamo exporter rebuilds its
  ATen -> ONNX registry on every call (``ONNXRegistry.from_torchlib`` reads the
  source of ~500 onnxscript functions, ~1.8 s each export). Within the
  context the registry is built once per opset and each call gets a copy (so
  a caller's custom ops never leak into later exports).

onnxruntime.quantization (1.2x), used by the quantization step
(:mod:`kexport.formats.onnx._quantize`):

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
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kexport._patch import scoped_patch

if TYPE_CHECKING:
    import onnx

__all__ = ["TF2ONNX_HANDLERS", "all_nodes", "cached_torchlib_registry",
           "captured_inputs_to_initializers", "excluded_after_gemm_split", "float16_graph", "linear_output_binding",
           "pre_process", "quiet_torchscript_log", "restore_after_quantization",
           "scoped_node_names", "tf2onnx_patches"]


# -- tf2onnx ------------------------------------------------------------------------

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
def _numpy2_patch() -> Iterator[None]:
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


class _TensorFlowWithoutXla(types.ModuleType):
    """``tensorflow`` as seen by Keras's TensorFlow ``nn`` module while kexport
    traces for tf2onnx: every attribute, but ``function`` ignores ``jit_compile``."""

    def __init__(self, tf: Any) -> None:
        super().__init__("tensorflow")
        self._tf = tf

    def __getattr__(self, name: str) -> Any:
        if name != "function":
            return getattr(self._tf, name)
        function = self._tf.function

        def without_xla(*args: Any, **kwargs: Any) -> Any:
            kwargs.pop("jit_compile", None)
            return function(*args, **kwargs)

        return without_xla


def _keras_convolutions_inlinable() -> contextlib.AbstractContextManager[None]:
    """Keras's grouped convolutions traced as ordinary (inlinable) nested functions."""
    try:
        from keras.src.backend.tensorflow import nn
    except ImportError:  # Keras moved it: its own behaviour applies
        return contextlib.nullcontext()
    return scoped_patch(nn, "tf", _TensorFlowWithoutXla)


@contextlib.contextmanager
def tf2onnx_patches() -> Iterator[None]:
    """The NumPy 2 alias, the as-written Einsum decomposition and inlinable Keras
    convolutions, for one conversion (which traces the function)."""
    with _numpy2_patch(), _einsum_as_written(), _keras_convolutions_inlinable():
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


# -- jax2onnx -----------------------------------------------------------------------

def linear_output_binding() -> contextlib.AbstractContextManager[None]:
    """Make jax2onnx's per-equation "is this output connected" check O(1) while inside.

    Reference-counted and thread-safe (:func:`kexport._patch.scoped_patch`);
    outside the context jax2onnx behaves as shipped. A no-op when the private
    function is not where jax2onnx 0.17 keeps it.
    """
    try:
        from jax2onnx.converter import output_binding
    except ImportError:
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        def connected(ctx: Any, value: Any) -> bool:
            producer = getattr(value, "producer", None)
            node = producer() if callable(producer) else None
            graph = getattr(getattr(ctx, "builder", None), "nodes", None)
            if node is not None and graph is not None and getattr(node, "graph", None) is graph:
                return True  # jax2onnx's scan would find ``node`` among the graph's nodes
            return shipped(ctx, value)

        return connected

    return scoped_patch(output_binding, "_value_is_graph_connected", make)


# -- torch.onnx ---------------------------------------------------------------------

def quiet_torchscript_log() -> contextlib.AbstractContextManager[None]:
    """Keep ``torch.onnx``'s TorchScript exporter log off while inside.

    Peer-library workaround (torch 2.13): ``setup_onnx_logging`` tests
    ``_C._jit_is_onnx_log_enabled`` without calling it, so every export turns
    the C++ log on and leaves it on for the rest of the process; a traced
    strategy that fails then prints the whole Torch IR graph ("Torch IR graph
    at exception: ...", thousands of lines) although kexport moves on to the
    next strategy. Inside, the log is on only for ``verbose=True`` (kexport
    never asks) and its previous state is restored on exit.
    """
    import torch

    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(torch._C, "_jit_set_onnx_log_enabled"):
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        @contextlib.contextmanager
        def setup_onnx_logging(verbose: bool) -> Iterator[None]:
            before = bool(torch._C._jit_is_onnx_log_enabled())
            torch._C._jit_set_onnx_log_enabled(bool(verbose))
            try:
                yield
            finally:
                torch._C._jit_set_onnx_log_enabled(before)

        return setup_onnx_logging

    return scoped_patch(utils, "setup_onnx_logging", make)


_registry_lock = threading.Lock()
_registry_cache: dict[int, Any] = {}


def cached_torchlib_registry() -> contextlib.AbstractContextManager[None]:
    """Build ``torch.onnx``'s ATen -> ONNX registry once per opset while inside.

    Reference-counted and thread-safe (:func:`kexport._patch.scoped_patch`);
    outside the context ``torch.onnx`` behaves as shipped. A no-op when the
    private hook is not where torch 2.x keeps it.
    """
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return contextlib.nullcontext()
    cls = _registration.ONNXRegistry
    if not hasattr(cls, "from_torchlib") or not hasattr(cls(), "functions"):
        return contextlib.nullcontext()

    def make(original: Any) -> Any:
        def from_torchlib(klass: Any, opset_version: Any = None, **kw: Any) -> Any:
            build = original.__get__(None, klass)
            if kw or klass is not cls:
                return build(opset_version, **kw) if opset_version is not None \
                    else build(**kw)
            key = opset_version
            with _registry_lock:
                base = _registry_cache.get(key)
            if base is None:
                base = build(opset_version) if opset_version is not None else build()
                with _registry_lock:
                    _registry_cache[key] = base
            copy = cls()
            copy.__dict__.update(base.__dict__)
            copy.functions = {k: list(v) for k, v in base.functions.items()}
            return copy

        return classmethod(from_torchlib)

    return scoped_patch(cls, "from_torchlib", make)


# -- onnxruntime.quantization ---------------------------------------------------------

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


def scoped_node_names(model: onnx.ModelProto) -> None:
    """Put each node's PyTorch module path in its name, in place.

    Workaround: ``torch.onnx``'s ``torch.export`` exporter names nodes
    ``node_matmul_1`` and keeps the module they came from only in the node's
    ``metadata_props["pkg.torch.onnx.name_scopes"]`` (``['', 'model',
    'model.block', 'model.block.inner', 'matmul_1']``), which
    the finishing step clears (it can hold local paths); the traced exporter
    writes the path in the name (``/model/block/inner/MatMul``). Nodes with
    that metadata get the traced form (``/model/block/inner/node_matmul_1``),
    so ``quantization_exclude`` finds their layer, before and after
    ``quant_pre_process``.
    """
    import ast

    for node in _all_nodes(model.graph):
        meta = {p.key: p.value for p in node.metadata_props}
        text = meta.get("pkg.torch.onnx.name_scopes")
        if not text or not node.name or node.name.startswith("/"):
            continue
        try:
            scopes = [s for s in ast.literal_eval(text)[:-1] if isinstance(s, str) and s]
        except (ValueError, SyntaxError):
            continue
        if scopes:
            node.name = "/" + "/".join(scopes[-1].split(".")) + "/" + node.name


def all_nodes(graph: Any) -> list[Any]:
    """Every node of ``graph`` and of its subgraphs."""
    return list(_all_nodes(graph))


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
    used = {n.domain or "" for n in _all_nodes(quantized.graph)}
    kept = [o for o in quantized.opset_import if (o.domain or "") in used | {""}]
    del quantized.opset_import[:]
    quantized.opset_import.extend(kept)


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)

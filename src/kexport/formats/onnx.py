"""ONNX writer: one graph per endpoint, named, dynamic, lean, self-describing.

Pipeline (each failure names its step, the route and what to do next):

1. **signature** — the model's inputs with names and dynamic dims
   (:mod:`kexport.signature`);
2. **capture** — one route per backend produces a raw ONNX graph:

   - TensorFlow: the endpoint is traced by :mod:`kexport.capture` into a
     ``tf.function`` and converted by ``tf2onnx`` (see :mod:`._tf2onnx_compat`);
   - PyTorch: ``torch.export`` with a ``torch.export.Dim`` per dynamic axis,
     translated by ``torch.onnx``; models whose recurrent time axis is dynamic
     (``torch.export`` would unroll and fix it) are re-hosted instead;
   - JAX (and the PyTorch fallback): the model is re-hosted on TensorFlow in
     a child process by :mod:`kexport.capture.rehost` (config + variable
     values; a persistent worker per target backend), where the TensorFlow
     route writes the graph, which is checked against the live model before
     it is placed;
3. **finish** — inputs/outputs renamed to the Keras names, graph optimised
   (constant folding, dead-node and duplicate removal), opset checked,
   metadata set, local paths and debug metadata stripped;
4. **write** — atomically; weights above ``external_data_threshold`` go to one
   ``<file>.data`` beside the graph; ``onnx.checker`` (``full_check=True``)
   passes before the call returns.

``ExportArchive.write_out(path, format="onnx")`` writes a folder instead:
``<endpoint>.onnx`` per endpoint, one shared ``weights.data`` and
``manifest.json`` (see :func:`write_archive`).
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target, staging_dir
from kexport.artifact import DEFAULT_ENDPOINT, ONNX_ARCHIVE_MANIFEST, Manifest
from kexport.capture._base import _to_plain
from kexport.errors import (
    CaptureError,
    KexportError,
    SignatureError,
    UnsupportedRouteError,
    WriteError,
)
from kexport.formats._onnx_check import NotTraceable
from kexport.formats._onnx_torch import cached_torchlib_registry, capture_traced, endpoint_module
from kexport.signature import Spec, flat_names, flatten, normalize_for_model, pack_as

if TYPE_CHECKING:
    import onnx

    from kexport.archive import ExportArchive
    from kexport.capture._base import TracedEndpoint

__all__ = [
    "ARCHIVE_WEIGHTS",
    "DEFAULT_EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_OPSET",
    "RawGraph",
    "export_jax",
    "export_rehost",
    "export_tensorflow",
    "export_torch",
    "write_archive",
]

DEFAULT_OPSET = 18
"""Opset used when ``opset_version`` is not given (ONNX Runtime >= 1.14 runs it)."""
#: Above this many bytes of weights a graph cannot be stored inline
#: (protobuf's 2 GiB message limit, with room for the graph itself): external
#: data is then written whatever ``external_data_threshold`` says.
INLINE_LIMIT = 2**31 - (64 << 20)
DEFAULT_EXTERNAL_DATA_THRESHOLD = INLINE_LIMIT
"""Weights above this many bytes go to external data (protobuf's 2 GiB limit, less headroom)."""
ARCHIVE_WEIGHTS = "weights.data"
_MIN_OPSET = 13
_LARGE_TF_GRAPH = 2**30  # above this, tf2onnx keeps weights outside its GraphDef
_LOOKUP_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization", "Hashing")


@dataclass
class RawGraph:
    """What a capture route hands to the finishing steps.

    Attributes:
        model: the converted ONNX model, names not yet final.
        input_names: the Keras name of each flat graph input, in order.
        output_names: the Keras name of each flat graph output, in order.
        output_specs: one :class:`Spec` per flat output.
        route: the route taken, for metadata and error messages.
        accept: for a fast converter's graph, the check the *finished* graph
            (its serialized bytes, or the staged file with external data:
            exactly what will be written) must pass before anything is
            placed; raises
            :class:`~kexport.formats._onnx_check.NotTraceable` to send the
            export to the next strategy.
    """

    model: Any
    input_names: list[str]
    output_names: list[str]
    output_specs: list[Spec] = field(default_factory=list)
    route: str = ""
    accept: Callable[[bytes | str], None] | None = None


def _step_error(cls: type[KexportError], step: str, route: str, cause: BaseException,
                layer: str | None = None, next_steps: str = "") -> KexportError:
    where = f" in Keras layer '{layer}'" if layer else ""
    text = (f"{step} (route: {route}) failed{where}: {type(cause).__name__}: "
            f"{str(cause).strip()[:1500]}")
    if next_steps:
        text += f"\nNext steps: {next_steps}"
    return cls(text)


def _guess_layer(model: Any, cause: BaseException) -> str | None:
    """The name of a layer of ``model`` that the error text mentions, if any."""
    text = str(cause)
    try:
        layers = list(model._flatten_layers(include_self=False))
    except Exception:
        return None
    best = None
    for layer in layers:
        name = getattr(layer, "name", "")
        if name and (f"/{name}/" in text or f"'{name}'" in text or f"{name}_" in text
                     or f" {name}" in text) and (best is None or len(name) > len(best)):
            best = name
    return best


# -- options ------------------------------------------------------------------

def _check_opset(opset_version: Any) -> int:
    if opset_version is None:
        return DEFAULT_OPSET
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) or not (
            _MIN_OPSET <= opset_version <= newest):
        raise SignatureError(
            f"Expected `opset_version` to be an int from {_MIN_OPSET} to {newest} "
            f"(the newest this onnx package knows). Received: opset_version={opset_version!r}"
        )
    return opset_version


def _check_threshold(threshold: Any) -> int:
    if threshold is None:
        return DEFAULT_EXTERNAL_DATA_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise SignatureError(
            "Expected `external_data_threshold` to be a non-negative int (bytes). "
            f"Received: external_data_threshold={threshold!r}"
        )
    return threshold


def _pop_options(kwargs: dict[str, Any], backend: str) -> dict[str, Any]:
    """Split ONNX options from ``kwargs``; refuse what no route understands."""
    opts = {
        "opset": _check_opset(kwargs.pop("opset_version", None)),
        "threshold": _check_threshold(kwargs.pop("external_data_threshold", None)),
    }
    # JAX's SavedModel options have no meaning for an ONNX graph (no jax2tf here).
    kwargs.pop("is_static", None)
    kwargs.pop("jax2tf_kwargs", None)
    if kwargs:
        raise SignatureError(
            f"Unexpected keyword arguments for ONNX export on the {backend} backend: "
            f"{sorted(kwargs)}. Expected only `opset_version` and `external_data_threshold`."
        )
    return opts


def _refuse_lookup_layers(model: Any, route: str) -> None:
    """Lookup layers hold TensorFlow hash tables: refuse them with a clear error."""
    try:
        layers = [model, *model._flatten_layers(include_self=False)]
    except Exception:
        return
    for layer in layers:
        if type(layer).__name__ in _LOOKUP_LAYERS:
            raise UnsupportedRouteError(
                f"Step 1/4 (signature, route: {route}): Keras layer '{layer.name}' "
                f"({type(layer).__name__}) cannot be exported to ONNX: its vocabulary "
                "lives in a TensorFlow hash table that no ONNX converter maps to "
                "ONNX-ML operators ONNX Runtime runs reliably. Next steps: apply "
                "the lookup before the model (export the model from its integer "
                "ids onward), or export format='tf_saved_model', which keeps the table."
            )


# -- step 2: capture routes ------------------------------------------------------

def _flat_tf_function(endpoint: TracedEndpoint) -> Any:
    """A ``tf.function`` over the endpoint's flat, named inputs, returning a flat list."""
    import tensorflow as tf

    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flatten(endpoint.signature), endpoint.input_names, strict=False)]
    structure = endpoint.signature

    @tf.function(input_signature=specs, autograph=False)
    def flat(*flat_inputs: Any) -> list[Any]:
        args = pack_as(list(structure), list(flat_inputs))
        return list(tf.nest.flatten(endpoint.function(*args)))

    return flat


def _weight_bytes(variables: Sequence[Any]) -> int:
    import numpy as np

    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
               for v in variables)


def tf_endpoint_to_onnx(endpoint: TracedEndpoint, opset: int, route: str,
                        model: Any | None = None, weight_bytes: int = 0) -> RawGraph:
    """Convert one traced TensorFlow endpoint with ``tf2onnx`` (step 2)."""
    from kexport.formats import _tf2onnx_compat

    function = _flat_tf_function(endpoint)
    try:
        proto = _tf2onnx_compat.convert_function(function, opset,
                                                 large_model=weight_bytes > _LARGE_TF_GRAPH)
    except Exception as e:
        text = str(e)
        hint = ("re-export on the TensorFlow backend; on JAX, export the model "
                "(export_onnx re-hosts it) rather than an ExportArchive endpoint"
                if "XlaCallModule" in text else
                "check that every op the endpoint uses has an ONNX equivalent; "
                "try another opset_version, or export format='tf_saved_model'")
        raise _step_error(CaptureError, "Step 2/4 (capture: tf2onnx conversion)", route, e,
                          _guess_layer(model, e) if model is not None else None,
                          hint) from e
    return RawGraph(proto, list(endpoint.input_names), list(endpoint.output_names),
                    list(endpoint.output_specs), route)


def capture_tensorflow(model: Any, signature: list[Any], opset: int,
                       route: str = "tensorflow: tf.function -> tf2onnx") -> RawGraph:
    """TensorFlow route: trace ``model(..., training=False)`` and convert it."""
    from kexport.capture.tensorflow import TensorFlowCapture

    capture = TensorFlowCapture()
    capture.track(model)
    try:
        endpoint = capture.trace(DEFAULT_ENDPOINT,
                                 lambda *args: model(*args, training=False), signature)
    except CaptureError as e:
        raise _step_error(CaptureError, "Step 2/4 (capture: tf.function trace)", route, e,
                          _guess_layer(model, e),
                          "make sure the model runs on these input shapes with "
                          "training=False") from e
    lifted = _liftable_variables(model)
    if lifted:
        try:
            return _convert_lifted(model, endpoint, lifted, opset, route)
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


def _convert_lifted(model: Any, endpoint: TracedEndpoint, lifted: list[Any], opset: int,
                    route: str) -> RawGraph:
    """Convert ``model(..., training=False)`` with ``lifted`` variables as graph inputs.

    The function runs the model in a ``keras.StatelessScope`` mapping each lifted
    variable to an input; the converted graph's weight inputs are then turned
    into initializers holding the variables' values (one copy), named by the
    variables' paths.
    """
    import keras
    import tensorflow as tf
    from onnx import numpy_helper

    from kexport.formats import _tf2onnx_compat

    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flatten(endpoint.signature), endpoint.input_names, strict=False)]
    placeholders = [f"kexport_lifted_{i}" for i in range(len(lifted))]
    weights = [tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=n)
               for v, n in zip(lifted, placeholders, strict=True)]
    structure, count = endpoint.signature, len(specs)

    @tf.function(input_signature=specs + weights, autograph=False)
    def flat(*args: Any) -> list[Any]:
        with keras.StatelessScope(state_mapping=list(zip(lifted, args[count:], strict=True))):
            out = model(*pack_as(list(structure), list(args[:count])), training=False)
        return list(tf.nest.flatten(out))

    proto = _tf2onnx_compat.convert_function(flat, opset)
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


def _sample_size(axis: int) -> int:
    # >= 2 (torch.export fixes size-1 dims), distinct per axis so that
    # unrelated dynamic axes are not unified by equal sample sizes.
    return 2 if axis == 0 else axis + 2


def _has_dynamic_recurrence(model: Any, signature: list[Any]) -> str | None:
    """The name of a recurrent layer of ``model``, if it has one.

    Keras on PyTorch runs RNNs as a Python loop: ``torch.export`` unrolls it,
    fixing a dynamic time axis, and even a fixed one gives a huge graph (an
    LSTM over 32 steps took 80 s to export). Such models are re-hosted.
    """
    import keras

    del signature
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.RNN):
            return layer.name
    return None


class _Specialised(NotTraceable):
    """``torch.export`` fixed a dynamic axis anyway: re-host instead."""


def capture_torch(model: Any, signature: list[Any], opset: int,
                  route: str = "torch: torch.export -> torch.onnx") -> RawGraph:
    """PyTorch route: ``torch.export`` with ``Dim`` per dynamic axis, then ``torch.onnx``."""
    import numpy as np
    import torch

    from kexport.capture._base import output_names

    flat_specs = flatten(signature)
    names = flat_names(signature)
    for spec, name in zip(flat_specs, names, strict=False):
        if spec.dtype == "string":
            raise UnsupportedRouteError(
                f"Step 1/4 (signature, route: {route}): input '{name}' is a string "
                "tensor, which PyTorch cannot hold. Next step: export on the "
                "TensorFlow backend."
            )
    dims: dict[int, Any] = {}
    samples, dynamic = [], []
    for spec in flat_specs:
        shape = []
        axes = {}
        for axis, d in enumerate(spec.shape):
            if d is None:
                if axis not in dims:
                    dims[axis] = torch.export.Dim("batch" if axis == 0 else f"d{axis}",
                                                  min=1, max=2**20)
                axes[axis] = dims[axis]
                shape.append(_sample_size(axis))
            else:
                shape.append(d)
        if np.dtype(spec.dtype).kind in "iub":
            sample = torch.zeros(shape, dtype=getattr(torch, spec.dtype))
        else:
            sample = torch.rand(shape, dtype=getattr(torch, spec.dtype))
        samples.append(sample)
        dynamic.append(axes or None)
    structure = signature
    with torch.no_grad():
        live = model(*pack_as(list(structure), samples), training=False)
    outs = output_names(_to_plain(live), model)
    out_specs = [Spec((None, *tuple(t.shape)[1:]) if t.ndim else (), str(t.dtype).removeprefix("torch."), n)
                 for t, n in zip(flatten(_to_plain(live)), outs, strict=False)]
    wrapper = endpoint_module(model, signature)
    try:
        with cached_torchlib_registry():
            program = torch.onnx.export(
                wrapper, tuple(samples), dynamo=True, dynamic_shapes=(tuple(dynamic),),
                input_names=names, output_names=outs, opset_version=max(opset, 18),
                optimize=False, verbose=False, report=False)
    except Exception as e:
        raise _step_error(CaptureError, "Step 2/4 (capture: torch.export + torch.onnx)", route,
                          e, _guess_layer(model, e),
                          "export on the TensorFlow backend (re-hosting), or report the "
                          "layer to kexport") from e
    proto = program.model_proto
    for spec, value in zip(flat_specs, proto.graph.input, strict=False):
        got = value.type.tensor_type.shape.dim
        if any(got[ax].HasField("dim_value") for ax in spec.dynamic_axes):
            raise _Specialised(f"it fixed a dynamic axis of input '{value.name}'")
    return RawGraph(proto, names, outs, out_specs, route)


#: PyTorch strategies in order: the traced graph when ONNX Runtime confirms
#: it, else ``torch.export``.
_TORCH_STRATEGIES = (capture_traced, capture_torch)




# -- step 3: finish -----------------------------------------------------------------

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
    onnxscript.optimizer.optimize_ir(model, num_iterations=1, should_fold=_fold_weight_layout)
    for p in (DeduplicateInitializersPass(), CommonSubexpressionEliminationPass(),
              RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
        p(model)


def _spec_json(specs: Sequence[Spec], names: Sequence[str]) -> str:
    return json.dumps([dict(s.to_json(), name=n) for s, n in zip(specs, names, strict=False)],
                      separators=(",", ":"))


def finish(raw: RawGraph, *, opset: int, backend: str, endpoint: str,
           input_specs: Sequence[Spec], optimize: bool = True) -> onnx.ModelProto:
    """Step 3: names, optimisation, opset and metadata, as an ``onnx.ModelProto``."""
    import keras
    import onnx
    import onnx_ir as ir

    from kexport._version import __version__

    try:
        # jax2onnx hands over an onnx_ir model; the others a ModelProto
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
        "kexport.outputs": _spec_json(raw.output_specs, raw.output_names),
    }
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto


def _name_dynamic_dims(proto: onnx.ModelProto, input_specs: Sequence[Spec]) -> None:
    """Call dynamic input axes ``batch`` (axis 0) and ``d<axis>``, graph-wide.

    Converters invent names (``unk__6``, ``s0``); the same axis position of
    every input gets one readable name, and the invented name is replaced in
    outputs and value infos too, so output dims that follow an input dim say so.
    """
    rename: dict[str, str] = {}
    for spec, value in zip(input_specs, proto.graph.input, strict=False):
        dims = value.type.tensor_type.shape.dim
        for axis in spec.dynamic_axes:
            if axis >= len(dims):
                continue
            new = "batch" if axis == 0 else f"d{axis}"
            old = dims[axis].dim_param if dims[axis].HasField("dim_param") else None
            if old and old not in rename:
                rename[old] = new
            dims[axis].dim_param = rename.get(old, new) if old else new
    for value in [*proto.graph.output, *proto.graph.value_info]:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


# -- step 4: write ------------------------------------------------------------------

def _check(target: str | bytes | onnx.ModelProto, route: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(target, full_check=True)
    except Exception as e:
        raise _step_error(WriteError, "Step 4/4 (write: onnx.checker full_check)", route, e,
                          None, "report this model to kexport; try another opset_version") from e


def write_model(proto: onnx.ModelProto, filepath: str | os.PathLike[str], threshold: int,
                route: str, accept: Callable[[bytes | str], None] | None = None) -> bool:
    """Check and write one graph atomically, with ``<name>.data`` beside it when large.

    What is checked is what is written: ``onnx.checker`` (``full_check``)
    and then ``accept`` (a fast route's check, see :class:`RawGraph`) read
    the serialized graph, or, with external data, the graph and data files
    staged beside the target (their final names, so the data is found as a
    reader will find it), which are then moved into place. ``proto`` is
    consumed: its weights are moved out of it.

    Returns:
        Whether external data was written.

    Raises:
        NotTraceable: from ``accept``; nothing is written.
    """
    from kexport.formats import _onnx_io

    path = Path(os.fspath(filepath))
    data_name = f"{path.name}.data"
    data_path = path.with_name(data_name)
    if _onnx_io.initializer_bytes([proto]) <= min(threshold, INLINE_LIMIT):
        data = proto.SerializeToString()
        del proto.graph.initializer[:]  # consumed: ``data`` holds the weights now
        _check(data, route)
        if accept is not None:
            accept(data)
        return _write_inline(data, path, data_path)
    with staging_dir(path) as stage:
        graph_file, data_file = stage / path.name, stage / data_name
        with open(data_file, "wb") as f:
            _onnx_io.externalize([proto], f, data_name, min_bytes=min(threshold, 1024))
        graph_file.write_bytes(proto.SerializeToString())
        _check(os.fspath(graph_file), route)
        if accept is not None:
            accept(os.fspath(graph_file))
        with atomic_target(data_path, is_dir=False) as tmp_data, \
                atomic_target(path, is_dir=False) as tmp_graph:
            os.replace(data_file, tmp_data)
            os.replace(graph_file, tmp_graph)
    return True


def _write_inline(data: bytes, path: Path, data_path: Path) -> bool:
    with atomic_target(path, is_dir=False) as tmp:
        tmp.write_bytes(data)
    if data_path.is_file():
        data_path.unlink()  # a stale weights file of an earlier large export
    return False


# -- route targets (registered in kexport.registry) ---------------------------------

def _export(model: Any, filepath: str | os.PathLike[str], verbose: bool | None,
            input_signature: Any, kwargs: dict[str, Any], backend: str,
            captures: Sequence[Callable[[Any, list[Any], int], RawGraph]]) -> None:
    """Capture, finish and write with the first strategy in ``captures`` whose
    graph is accepted; :class:`NotTraceable` moves on to the next one (and
    propagates from the last)."""
    from kexport.capture.rehost import rehost_source

    signature = normalize_for_model(model, input_signature)
    opts = _pop_options(kwargs, backend)
    for number, capture in enumerate(captures, start=1):
        accept = None
        try:
            raw = capture(model, signature, opts["opset"])
            accept = raw.accept
            source = rehost_source()
            graph_backend = backend
            if source is not None:  # writing in a re-host child: record where the model lives
                raw.route = f"re-host on {backend} (child process): {raw.route.partition(': ')[2]}"
                graph_backend = source
            proto = finish(raw, opset=opts["opset"], backend=graph_backend,
                           endpoint=DEFAULT_ENDPOINT, input_specs=flatten(signature))
            del raw
            _release_converter_copy(proto)
            summary = _SummaryEndpoint.of(proto, signature)
            write_model(proto, filepath, opts["threshold"], proto_route(proto), accept)
            break
        except NotTraceable as e:
            _say_not_used(verbose, capture, e)
            if number == len(captures):
                raise
        finally:
            if accept is not None and hasattr(accept, "close"):
                accept.close()  # no live reference call outlives its strategy
    if verbose is None or verbose:
        _summary.print_summary("onnx", [summary], filepath)


#: How the verbose output names each strategy a graph can come from.
_STRATEGIES = {"capture_traced": "the traced torch.onnx graph",
               "capture_torch": "the torch.export graph",
               "capture_jax2onnx": "the jax2onnx graph"}
_DIRECTORIES = re.compile(  # an absolute path's folders (not URLs, not relative paths)
    r"(?<![\w.:/\\])(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,]+)+[\\/](?=[^\s\\/'\"():,]+)")


def without_paths(text: str, limit: int = 240) -> str:
    """``text``'s first line, each file path cut to its file name, at most
    ``limit`` characters: peer libraries' messages quote their source files,
    and kexport's output holds no local paths."""
    line = next((part for part in str(text).splitlines() if part.strip()), "")
    line = _DIRECTORIES.sub("", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _say_not_used(verbose: bool | None, capture: Callable[..., Any], why: Exception) -> None:
    """Tell the user why a strategy's graph was not kept (the export goes on)."""
    if verbose is None or verbose:
        what = _STRATEGIES.get(getattr(capture, "__name__", ""), "the converter's graph")
        print(f"kexport: not using {what}: {without_paths(str(why))}")


_COLLECT_ABOVE = 64 << 20


def _release_converter_copy(proto: onnx.ModelProto) -> None:
    """Free the converter's copy of the weights now, not when the collector runs.

    ``onnx_ir`` graphs are reference cycles (nodes, values and their graph),
    so the converter's graph and the weights it holds would outlive
    :func:`finish` until Python's cycle collector happened to run: one more
    copy of the weights at the export's peak (PyTorch: 3.0x -> 2.2x the
    weights, 256 MiB MLP). Collected only for large models, where it matters.
    """
    from kexport.formats import _onnx_io

    if _onnx_io.initializer_bytes([proto]) >= _COLLECT_ABOVE:
        gc.collect()


def proto_route(proto: onnx.ModelProto) -> str:
    """The route recorded in a finished graph's metadata."""
    return next((p.value for p in proto.metadata_props if p.key == "kexport.route"), "?")


@dataclass
class _SummaryEndpoint:
    name: str
    signature: list[Any]
    input_names: list[str]
    output_specs: list[Spec]

    @classmethod
    def of(cls, proto: onnx.ModelProto, signature: list[Any]) -> _SummaryEndpoint:
        meta = {p.key: p.value for p in proto.metadata_props}
        outs = [Spec(tuple(o["shape"]), o["dtype"], o["name"])
                for o in json.loads(meta["kexport.outputs"])]
        return cls(meta["kexport.endpoint"], signature, [i.name for i in proto.graph.input], outs)


def export_tensorflow(model: Any, filepath: str | os.PathLike[str], *,
                      verbose: bool | None = None, input_signature: Any | None = None,
                      **kwargs: Any) -> None:
    """TensorFlow backend -> ONNX (``tf.function`` + ``tf2onnx``, in process)."""
    _refuse_lookup_layers(model, "tensorflow: tf.function -> tf2onnx")
    _export(model, filepath, verbose, input_signature, kwargs, "tensorflow",
            (capture_tensorflow,))


REHOST_ROUTE = "re-host on tensorflow (child process): tf.function -> tf2onnx"


def export_rehost(model: Any, filepath: str | os.PathLike[str], *,
                  verbose: bool | None = None, input_signature: Any | None = None,
                  **kwargs: Any) -> None:
    """Any backend -> ONNX by re-hosting the model on TensorFlow in a child process.

    Uses :func:`kexport.capture.rehost.rehost_export`: the graph is written by
    the TensorFlow route in the re-host worker and compared with the live
    model before it is placed at ``filepath``.
    """
    import keras

    from kexport.capture.rehost import rehost_export

    _refuse_lookup_layers(model, REHOST_ROUTE)
    opts = _pop_options(dict(kwargs), keras.backend.backend())  # refuse bad options here
    rehost_export(model, filepath, "onnx", "tensorflow", input_signature=input_signature,
                  verbose=verbose, opset_version=opts["opset"],
                  external_data_threshold=opts["threshold"])


def export_jax(model: Any, filepath: str | os.PathLike[str], *,
               verbose: bool | None = None, input_signature: Any | None = None,
               **kwargs: Any) -> None:
    """JAX backend -> ONNX.

    ``jax2onnx`` in process when ONNX Runtime reproduces the live model at
    other sizes of every dynamic axis (:mod:`._onnx_jax`), else re-hosted on
    TensorFlow (:func:`export_rehost`). Models with a recurrent layer go
    straight to the re-host route: tf2onnx writes one ONNX ``LSTM``/``GRU``
    op where ``jax2onnx`` writes a ``Loop`` (2-2.5x slower in ONNX Runtime).
    """
    from kexport.formats._onnx_jax import capture_jax2onnx

    _refuse_lookup_layers(model, "jax: jax2onnx")
    _in_process_else_rehost(model, filepath, verbose, input_signature, kwargs, "jax",
                            (capture_jax2onnx,))


def export_torch(model: Any, filepath: str | os.PathLike[str], *,
                 verbose: bool | None = None, input_signature: Any | None = None,
                 **kwargs: Any) -> None:
    """PyTorch backend -> ONNX.

    Strategies in order, in process: the traced ``torch.onnx`` exporter when
    ONNX Runtime reproduces the live model at other sizes of every dynamic
    axis (:func:`kexport.formats._onnx_torch.capture_traced`, fast), else
    ``torch.export`` + ``torch.onnx``. A model with a recurrent layer
    (both unroll Keras's Python RNN loop into a fixed number of steps), or one
    whose dynamic axis was fixed anyway, is re-hosted on TensorFlow instead
    (:func:`export_rehost`) so that the time axis stays symbolic.
    """
    _refuse_lookup_layers(model, "torch: torch.export -> torch.onnx")
    _in_process_else_rehost(model, filepath, verbose, input_signature, kwargs, "torch",
                            _TORCH_STRATEGIES)


def _in_process_else_rehost(model: Any, filepath: str | os.PathLike[str],
                            verbose: bool | None, input_signature: Any,
                            kwargs: dict[str, Any], backend: str,
                            captures: Sequence[Callable[[Any, list[Any], int], RawGraph]]
                            ) -> None:
    """``captures`` in process unless the model is recurrent or the last of them
    raises :class:`NotTraceable`; then re-host on TensorFlow (nothing is
    written before either succeeds)."""
    signature = normalize_for_model(model, input_signature)
    if _has_dynamic_recurrence(model, signature) is None:
        try:
            _export(model, filepath, verbose, input_signature, dict(kwargs), backend, captures)
            return
        except NotTraceable:
            if verbose is None or verbose:
                print(f"kexport: re-hosting on tensorflow ({REHOST_ROUTE.partition(': ')[2]})")
    export_rehost(model, filepath, verbose=verbose, input_signature=input_signature,
                  **kwargs)


# -- ExportArchive ------------------------------------------------------------------

def write_archive(archive: ExportArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, verbose: bool = True, *,
                  opset_version: int | None = None) -> None:
    """Write ``archive`` as a folder of ONNX graphs sharing one weights file.

    Layout::

        <filepath>/
          <endpoint>.onnx      one graph per endpoint, inputs/outputs named;
                               every initializer refers to weights.data
          weights.data         every weight tensor once, shared by the graphs
                               (a tensor two endpoints use is stored once)
          manifest.json        producer, versions, backend, opset,
                               default_endpoint and, per endpoint in the
                               order added, its file and input/output specs

    Every floating-point initializer goes to ``weights.data`` whatever its
    size; other tensors (shapes, axes, indices) go there from 1 KiB up.

    Args:
        archive: the archive whose endpoints to write.
        filepath: the folder to write (atomically).
        options: must be ``None`` (SavedModel's ``SaveOptions`` only).
        verbose: print a summary.
        opset_version: the ONNX opset of every graph (``None``: :data:`DEFAULT_OPSET`);
            passed as ``archive.write_out(path, format="onnx", opset_version=17)``.

    Raises:
        SignatureError: when ``options`` is given or ``opset_version`` is invalid.
        CaptureError, WriteError: when converting or writing fails.
    """
    from kexport.formats import _onnx_io

    if options is not None:
        raise SignatureError(
            "Expected `options=None` for format='onnx' (options are "
            f"tf.saved_model.SaveOptions, SavedModel only). Received: {type(options).__name__}"
        )
    opset = _check_opset(opset_version)
    route = f"{archive.backend}: ExportArchive tf.function -> tf2onnx"
    protos = []
    for endpoint in archive.endpoints:
        raw = tf_endpoint_to_onnx(endpoint, opset, route, endpoint.owner,
                                  _weight_bytes(archive.trackables()["variables"]))
        protos.append(finish(raw, opset=opset, backend=archive.backend, endpoint=endpoint.name,
                             input_specs=flatten(endpoint.signature)))
    manifest = Manifest.build(archive.endpoints, format="onnx", backend=archive.backend,
                              file_suffix=".onnx", opset=opset, weights=ARCHIVE_WEIGHTS)
    with atomic_target(filepath, is_dir=True) as tmp:
        with open(tmp / ARCHIVE_WEIGHTS, "wb") as f:
            _onnx_io.externalize(protos, f, ARCHIVE_WEIGHTS, all_floats=True)
        for endpoint, proto in zip(archive.endpoints, protos, strict=False):
            graph_path = tmp / f"{endpoint.name}.onnx"
            graph_path.write_bytes(proto.SerializeToString())
            _check(os.fspath(graph_path), route)
        (tmp / ONNX_ARCHIVE_MANIFEST).write_text(manifest.dumps())
    if verbose:
        _summary.print_summary("onnx", archive.endpoints, filepath)


def spec_structure_to_json(signature: list[Any]) -> Any:
    """A JSON form of a signature (for the re-host child process)."""
    def enc(s: Any) -> Any:
        if isinstance(s, Spec):
            return {"__spec__": [list(s.shape), s.dtype, s.name]}
        if isinstance(s, dict):
            return {"__dict__": {k: enc(v) for k, v in s.items()}}
        if isinstance(s, tuple):
            return {"__tuple__": [enc(v) for v in s]}
        return [enc(v) for v in s]

    return enc(signature)


def spec_structure_from_json(data: Any) -> Any:
    """Inverse of :func:`spec_structure_to_json`."""
    if isinstance(data, dict) and "__spec__" in data:
        shape, dtype, name = data["__spec__"]
        return Spec(tuple(shape), dtype, name)
    if isinstance(data, dict) and "__dict__" in data:
        return {k: spec_structure_from_json(v) for k, v in data["__dict__"].items()}
    if isinstance(data, dict) and "__tuple__" in data:
        return tuple(spec_structure_from_json(v) for v in data["__tuple__"])
    return [spec_structure_from_json(v) for v in data]


"""OpenVINO IR writer (``.xml`` graph + ``.bin`` weights).

What we write:

- for one model with a path ending in ``.xml``: ``name.xml`` and ``name.bin``
  side by side; ``openvino.Core().compile_model("name.xml", "CPU",
  {"INFERENCE_PRECISION_HINT": "f32"})`` runs it (without the hint, CPUs
  with bf16 units run it in bf16);
- for an ``ExportArchive`` with several endpoints (or a path without the
  ``.xml`` suffix): a folder with ``<endpoint>.xml`` / ``<endpoint>.bin`` per
  endpoint plus ``kexport.json``;
- inputs named by the Keras input names and in kexport's flat order, outputs
  named by the Keras output names, dynamic dimensions (``None`` in the
  signature) kept dynamic and every other dimension static;
- float32 weights (no silent float16 compression) and the kexport manifest in
  the IR's ``rt_info`` (``kexport_manifest``), without local paths;
- with ``quantization=`` (``"float16"``, ``"dynamic_int8"``, ``"int8"``; see
  :mod:`kexport.formats._openvino_quantize`): the quantized IR, float32
  inputs and outputs, and the manifest's ``quantization`` record (mode,
  calibration rows, openvino and nncf versions, ``excluded_layers``), which
  ``kexport.load`` and ``kexport.verify`` read;
- with ``quantization_exclude=`` (``"dynamic_int8"``, ``"int8"``): the IR
  operations of those Keras layers kept in float (NNCF's ``IgnoredScope``),
  found by :mod:`kexport.artifact.exclusion` from each strategy's
  ``naming``.

How an endpoint reaches OpenVINO (strategies tried in order, by what the
capture produced, never by backend name):

1. a TensorFlow function (TensorFlow backend): ``openvino.convert_model`` on
   the signature's concrete function. A JAX capture (StableHLO inside
   ``XlaCallModule``) is refused here: neither OpenVINO's TensorFlow frontend
   nor its TFLite frontend (after a LiteRT conversion) reads it, so the JAX
   route re-hosts the model onto TensorFlow (:func:`export_rehost`), and
   ``ExportArchive.write_out(format="openvino")`` re-hosts JAX archives
   (``kexport.routing.archive_host``) before this writer runs;
2. a Python callable on PyTorch tensors (PyTorch backend): ``torch.export``
   (:mod:`kexport.formats.torch_program`), then ``openvino.convert_model``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target
from kexport.artifact import (
    MANIFEST_NAME,
    OPENVINO_MANIFEST_KEY,
    OPENVINO_PRODUCER_KEY,
    Manifest,
    file_sha256,
)
from kexport.artifact.exclusion import (
    check_exclude,
    check_naming,
    excluded_nodes_by_graph,
    resolve_layers,
)
from kexport.artifact.quantization import check_quantization, record
from kexport.check.calibration import (
    calibration_batches,
    calibration_by_endpoint,
    calibration_rows,
)
from kexport.context import ExportContext, step_label
from kexport.errors import (
    CaptureError,
    KexportError,
    SignatureError,
    UnsupportedRouteError,
    WriteError,
)
from kexport.formats import _openvino_strings as strings
from kexport.formats import litert
from kexport.formats._openvino_names import named
from kexport.formats._openvino_quantize import quantize_ir, toolchain
from kexport.formats.torch_program import export_program
from kexport.signature import flat_names, flatten, normalize_for_model

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint
    from kexport.formats._writer import EndpointArchive

__all__ = ["rehost_options", "single_model_options", "write_archive"]

_WEIGHTS_PENDING = "kexport-weights-sha256-pending"


# -- strategies -----------------------------------------------------------------------------------
def _uses_xla_call_module(concrete: Any) -> bool:
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return any(n.op == "XlaCallModule" for n in nodes)


@dataclass(frozen=True)
class _Converted:
    """An endpoint's IR and each of its operations' scope (for ``quantization_exclude``)."""

    model: Any
    #: operation friendly name -> the segments naming the layer it came from
    scopes: dict[str, tuple[str, ...]]


def _from_tensorflow(endpoint: TracedEndpoint, archive: EndpointArchive) -> _Converted:
    """Strategy 1: a TensorFlow function, read by OpenVINO's TensorFlow frontend.

    Its operations keep the TensorFlow op names, Keras name scopes included
    (``tagger_1/block_1/inner_1/MatMul``): naming ``"layer_names"``."""
    import openvino as ov

    concrete = litert._signature_function(endpoint, endpoint.function).get_concrete_function()
    if _uses_xla_call_module(concrete):
        raise UnsupportedRouteError(
            f"{step_label('convert', 'openvino')}: endpoint '{endpoint.name}' is StableHLO wrapped "
            "in XlaCallModule (JAX backend), which OpenVINO cannot read (neither directly "
            "nor through LiteRT). Expected a TensorFlow or PyTorch capture. Next step: "
            "archive.write_out(path, format='openvino') and export_model(model, path, "
            "format='openvino') re-host JAX archives and models onto TensorFlow."
        )
    if strings.uses_strings(concrete):  # the tokenizers' conversions, from a SavedModel
        model = strings.convert_saved(endpoint, archive, concrete)
    else:
        model = _integer_matmul_accumulates(ov.convert_model(concrete))
    return _Converted(model, {op.get_friendly_name(): tuple(
        s for s in op.get_friendly_name().split("/") if s)[:-1] for op in model.get_ops()})


def _integer_matmul_accumulates(model: Any) -> Any:
    """Peer workaround: OpenVINO's TensorFlow frontend drops ``BatchMatMulV3``'s
    ``Tout``: an int8 x int8 -> int32 matmul (how Keras's ``int8``-quantized
    Dense and EinsumDense multiply) becomes an int8 MatMul that overflows, then a
    Convert to int32. Each integer MatMul narrower than 32 bits whose every
    consumer converts it to int32 gets its inputs converted to int32 first,
    which is what ``Tout=int32`` computes."""
    import openvino as ov
    import openvino.opset13 as opset

    changed = False
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        out = op.get_output_element_type(0)
        consumers = op.output(0).get_target_inputs()
        if not (out.is_integral() and out.bitwidth < 32 and consumers and all(
                c.get_node().get_type_name() == "Convert"
                and c.get_node().get_output_element_type(0) == ov.Type.i32
                for c in consumers)):
            continue
        for i in range(2):
            source = op.input_value(i)
            op.input(i).replace_source_output(opset.convert(source, ov.Type.i32).output(0))
        changed = True
    if changed:
        model.validate_nodes_and_infer_types()
    return model


def _from_torch(endpoint: TracedEndpoint, archive: EndpointArchive) -> _Converted:
    """Strategy 3: ``torch.export`` the Python callable, then convert the program.

    The program is handed over as the decoder ``openvino.convert_model`` makes
    of it (the same call, after the same decompositions), so that its
    operations' names (``mm_1/aten.mm.default/MatMul``: the FX node first)
    can be read against the decomposed graph's ``nn_module_stack``: each
    operation's scope is the module path of its node below the tracked model
    (``("block", "inner")``), naming ``"module_paths"``."""
    import openvino as ov
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    layers = list(archive.trackables()["tracked_layers"])
    program = export_program(endpoint.function, endpoint.signature, endpoint.input_names,
                             layers, endpoint.name)
    decoder = TorchFXPythonDecoder.from_exported_program(program)
    modules = {}
    for node in decoder.pt_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:  # "layers.<i>.block.inner": below the FlatEndpoint's ModuleList
            path = tuple(list(stack.values())[-1][0].split("."))
            modules[node.name] = path[2:] if path[:1] == ("layers",) else path
    model = ov.convert_model(decoder)
    return _Converted(model, {op.get_friendly_name(): modules.get(
        op.get_friendly_name().split("/")[0], ()) for op in model.get_ops()})


@dataclass(frozen=True)
class _Strategy:
    """How an endpoint reaches OpenVINO, and how its IR names the layers."""

    convert: Callable[[TracedEndpoint, EndpointArchive], _Converted]
    #: how operation names carry layers (:data:`kexport.artifact.exclusion.NAMINGS`)
    naming: str | None
    via: str

    def route(self, archive: EndpointArchive) -> str:
        return f"{archive.backend}: {self.via}"


_TENSORFLOW = _Strategy(_from_tensorflow, "layer_names", "tf.function -> openvino.convert_model")
_TORCH = _Strategy(_from_torch, "module_paths", "torch.export -> openvino.convert_model")


def _strategy(endpoint: TracedEndpoint) -> _Strategy:
    """The strategy for what the capture produced (never the backend's name)."""
    return _TENSORFLOW if hasattr(endpoint.function, "get_concrete_function") else _TORCH


def _convert(endpoint: TracedEndpoint, archive: EndpointArchive) -> _Converted:
    try:
        converted = _strategy(endpoint).convert(endpoint, archive)
    except KexportError:
        raise
    except Exception as e:  # every conversion failure becomes a typed error
        raise CaptureError(
            f"{step_label('convert', 'openvino')}: converting endpoint '{endpoint.name}' with "
            f"openvino.convert_model failed: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
        ) from e
    return _Converted(named(converted.model, endpoint), converted.scopes)


def _manifest(archive: EndpointArchive, layout: str, context: ExportContext) -> Manifest:
    import openvino as ov

    return Manifest.build(archive.endpoints, format="openvino", backend=archive.backend,
                          file_suffix=".xml", openvino_version=ov.__version__, layout=layout,
                          **context.recorded())


def _save(model: Any, xml: Path, manifest: Manifest, float16: bool = False) -> None:
    import openvino as ov

    model.set_rt_info("kexport", [OPENVINO_PRODUCER_KEY])
    model.set_rt_info(manifest.dumps(indent=None), [OPENVINO_MANIFEST_KEY])
    # float32 weights unless float16 was asked: OpenVINO's default would halve them silently
    ov.save_model(model, os.fspath(xml), compress_to_fp16=float16)


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, *,
                  quantization: str | None = None, calibration_data: Any | None = None,
                  quantization_exclude: list[str] | None = None,
                  context: ExportContext) -> None:
    """Write ``archive`` as OpenVINO IR: one ``.xml``/``.bin`` pair, or a folder of them.

    Args:
        archive: the endpoints to write.
        filepath: ``name.xml`` (one endpoint; ``name.bin`` goes beside it) or a folder.
        options: unused; must be ``None``.
        quantization: ``None``, ``"float16"``, ``"dynamic_int8"`` or ``"int8"``:
            every endpoint's IR is quantized (see
            :mod:`kexport.formats._openvino_quantize`) and the manifest records
            it (``quantization``: mode, calibration rows, toolchain).
        calibration_data: the calibration batches for ``"int8"``; they must
            fit every endpoint's inputs.
        quantization_exclude: layers of the tracked models (names or paths)
            kept in float with ``"dynamic_int8"`` or ``"int8"``: their IR
            operations go to NNCF's ``IgnoredScope`` (see
            :mod:`kexport.artifact.exclusion`); recorded as the quantization
            record's ``excluded_layers``.
        context: the export's context (overwrite, the sample policy recorded).

    Raises:
        SignatureError: ``options`` given, or an ``.xml`` path for several endpoints.
        QuantizationError: a mode OpenVINO does not write (``"bfloat16"``),
            ``"int8"`` without calibration data, or calibration data that does
            not fit an endpoint's inputs; ``quantization_exclude`` naming no
            layer of the tracked models, or with ``"float16"``; nothing is written.
        LayerMappingError: an excluded layer's operations cannot be told in the
            IR (a layer that is no module attribute on the ``torch.export``
            strategy, or one that computes nothing); the route refuses before
            converting where it can.
        CaptureError, WriteError: when converting, quantizing or writing fails.
    """
    if options is not None:
        raise SignatureError(
            f"Expected options=None for format='openvino'. Received: {options!r}")
    mode = check_quantization("openvino", quantization, calibration_data)
    tracked = list(archive.trackables()["tracked_layers"])
    names = check_exclude("openvino", mode, quantization_exclude)
    layers = resolve_layers(tracked, names) if names else ()
    for endpoint in archive.endpoints:  # a graph that cannot name them: before converting
        strategy = _strategy(endpoint)
        check_naming(layers, strategy.naming, strategy.route(archive))
    calibration = calibration_by_endpoint(archive.endpoints, calibration_data)
    target = Path(os.fspath(filepath))
    single = target.suffix == ".xml" and len(archive.endpoints) == 1
    if target.suffix == ".xml" and not single:
        raise SignatureError(
            f"Expected a folder path for an archive with {len(archive.endpoints)} endpoints "
            f"(one IR per endpoint). Received: filepath='{os.fspath(filepath)}' ending in .xml."
        )
    manifest = _manifest(archive, "file" if single else "folder", context)
    if mode is not None:
        rows = calibration_rows(next(iter(calibration.values()))) if calibration else None
        manifest = manifest.with_extras(quantization=record(
            mode, rows, toolchain(), [layer.path for layer in layers]))
    if single:
        manifest = manifest.with_extras(weights_sha256=_WEIGHTS_PENDING)
    converted = {e.name: _convert(e, archive) for e in archive.endpoints}
    ignored: dict[str, list[str]] = {}
    if layers:  # every layer has operations in some endpoint's IR, before quantizing
        ignored = excluded_nodes_by_graph(
            tracked, layers, {e.name: (converted[e.name].scopes, _strategy(e).naming)
                              for e in archive.endpoints},
            _strategy(archive.endpoints[0]).route(archive))
    models = {name: c.model for name, c in converted.items()}
    del converted
    if any(strings.needs_extension(m) for m in models.values()):
        if mode is not None:
            raise UnsupportedRouteError(
                f"{step_label('finish', 'openvino')}: quantization='{mode}' is not supported for an "
                "IR with openvino-tokenizers string operations; nothing was written. "
                "Expected quantization=None.")
        manifest = manifest.with_extras(extensions=[strings.EXTENSION])
    if mode is not None:
        models = {name: quantize_ir(model, mode, calibration.get(name), name,
                                    ignored_nodes=ignored.get(name, ()))
                  for name, model in models.items()}
    with tempfile.TemporaryDirectory(prefix="kexport-openvino-") as tmp:
        build = Path(tmp)
        try:
            for name, model in models.items():
                _save(model, build / f"{name}.xml", manifest, float16=mode == "float16")
        except Exception as e:
            raise WriteError(f"{step_label('place', 'openvino')}: saving the IR failed: {e}") from e
        if single:
            (name,) = models
            xml = build / f"{name}.xml"
            # the graph records its weights' hash (kexport readers check the pair)
            xml.write_text(xml.read_text().replace(_WEIGHTS_PENDING,
                                                   file_sha256(build / f"{name}.bin")))
            context.check_staged(xml)  # before it is placed: a failed check places nothing
            # Two renames cannot be one atomic step: weights first, graph last
            # (the .xml is what runtimes open). A crash between them leaves a
            # new .bin beside the old .xml, which check_openvino_weights() refuses and
            # the next export replaces.
            with atomic_target(target.with_suffix(".bin"), is_dir=False,
                               overwrite=context.overwrite) as t:
                shutil.copyfile(build / f"{name}.bin", t)
            with atomic_target(target, is_dir=False, overwrite=context.overwrite) as t:
                shutil.copyfile(xml, t)
        else:
            (build / MANIFEST_NAME).write_text(manifest.dumps())
            context.check_staged(build)
            with atomic_target(target, is_dir=True, overwrite=context.overwrite) as t:
                for f in build.iterdir():
                    shutil.copyfile(f, t / f.name)
    if context.printer.on:
        _summary.print_summary("openvino", archive.endpoints, filepath,
                               say=context.printer)


def single_model_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``export_model``'s options: ``quantization``, ``calibration_data``
    and ``quantization_exclude`` go to the writer, the rest to the capture."""
    writer = {k: options.pop(k) for k in ("quantization", "calibration_data",
                                          "quantization_exclude") if k in options}
    return options, writer


def rehost_options(model: Any, input_signature: Any, options: dict[str, Any],
                   context: Any = None) -> dict[str, Any]:
    """(``context`` is not read: this format's options are not declared as a
    :class:`~kexport.formats._options.FormatOptions` yet.) What a re-host to OpenVINO carries to the TensorFlow child: ``quantization``,
    the calibration batches as plain lists (checked here against the inputs,
    before the child starts) and ``quantization_exclude`` by layer path (the
    child resolves them again in the rebuilt model). A quantized IR is compared
    with the live model by its mode's thresholds (``quantized``), on calibration
    batches when there are some."""
    mode = check_quantization("openvino", options.get("quantization"),
                              options.get("calibration_data"))
    names = check_exclude("openvino", mode, options.get("quantization_exclude"))
    if mode is None:
        options.pop("quantization", None)
        options.pop("quantization_exclude", None)
        return options
    carried: dict[str, Any] = {**options, "quantized": mode}
    if names:
        carried["quantization_exclude"] = [layer.path for layer in resolve_layers(model, names)]
    data = options.get("calibration_data")
    if data is not None:
        signature = normalize_for_model(model, input_signature)
        batches = calibration_batches(data, flatten(signature), flat_names(signature))
        carried["calibration_data"] = [{n: v.tolist() for n, v in b.items()} for b in batches]
        carried["sample_inputs"] = [list(b.values()) for b in batches[:2]]
    return carried

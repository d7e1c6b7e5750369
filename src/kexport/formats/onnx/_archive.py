"""``ExportArchive.write_out(path, format="onnx")``: one graph per endpoint, shared weights.

Each endpoint is converted as a single model's default endpoint is
(:func:`kexport.formats.onnx._convert.convert`: the backend's strategies in
order, then finished); the graphs are then quantized when asked and written
into one folder sharing ``weights.data``. On JAX that is ``jax2onnx``, as for
``export_model``; when a strategy refuses an endpoint,
:class:`~kexport.errors.RouteRefused` lets ``ExportArchive`` re-host the
archive on TensorFlow (:data:`kexport.routing.archives` ``native_first``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target
from kexport.artifact import ONNX_ARCHIVE_MANIFEST, Manifest
from kexport.artifact.exclusion import resolve_layers
from kexport.artifact.quantization import record
from kexport.check.calibration import (
    calibration_by_endpoint,
    calibration_rows,
)
from kexport.context import ExportContext
from kexport.errors import RouteRefused, SignatureError
from kexport.formats.onnx import _io as _onnx_io
from kexport.formats.onnx._accept import NotTraceable
from kexport.formats.onnx._convert import STRATEGIES, Finished, convert, proto_route
from kexport.formats.onnx._export import in_process_problem
from kexport.formats.onnx._graph import ARCHIVE_WEIGHTS, INLINE_LIMIT, Source
from kexport.formats.onnx._io import initializer_bytes
from kexport.formats.onnx._options import OnnxOptions
from kexport.formats.onnx._quantize import Exclude, quantize_graph, toolchain
from kexport.formats.onnx._tensorflow import _weight_bytes
from kexport.formats.onnx._write import _check

if TYPE_CHECKING:
    from kexport.formats._writer import EndpointArchive

__all__ = ["write_archive"]


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, *,
                  opset_version: int | None = None, quantization: str | None = None,
                  calibration_data: Any | None = None,
                  quantization_exclude: list[str] | None = None,
                  context: ExportContext) -> None:
    """Write ``archive`` as a folder of ONNX graphs sharing one weights file.

    Layout::

        <filepath>/
          <endpoint>.onnx      one graph per endpoint, inputs/outputs named;
                               every initializer refers to weights.data
          weights.data         every weight tensor once, shared by the graphs
                               (a tensor two endpoints use is stored once)
          manifest.json        producer, versions, backend, opset,
                               default_endpoint and, per endpoint in the
                               order added, its file and input/output specs;
                               ``quantization`` (mode, calibration size,
                               toolchain) when quantized

    Every floating-point initializer goes to ``weights.data`` whatever its
    size; other tensors (shapes, axes, indices) go there from 1 KiB up.

    Args:
        archive: the archive whose endpoints to write.
        filepath: the folder to write (atomically).
        options: must be ``None`` (SavedModel's ``SaveOptions`` only).
        opset_version: the ONNX opset of every graph (``None``: :data:`DEFAULT_OPSET`);
            passed as ``archive.write_out(path, format="onnx", opset_version=17)``.
        quantization: ``None``, ``"dynamic_int8"``, ``"int8"`` or ``"float16"``:
            every graph is quantized (see :mod:`kexport.formats.onnx._quantize`).
        calibration_data: the calibration batches for ``"int8"``; they must
            fit every endpoint's inputs.
        quantization_exclude: layers of the tracked models (names or paths)
            kept in float in every graph (recorded as the quantization
            record's ``excluded_layers``).
        context: the export's context (overwrite, the sample policy of the
            acceptance and of the manifest).

    Raises:
        RouteRefused: no in-process strategy of the backend converts an
            endpoint (``ExportArchive`` then re-hosts the archive, where its
            route table says so).
        SignatureError: when ``options`` is given or ``opset_version`` is invalid.
        QuantizationError: an unsupported mode, or calibration data that does
            not fit an endpoint's inputs.
        CaptureError, WriteError: when converting or writing fails.
    """
    if options is not None:
        raise SignatureError(
            "Expected `options=None` for format='onnx' (options are "
            f"tf.saved_model.SaveOptions, SavedModel only). Received: {type(options).__name__}"
        )
    opts = context.options
    if not isinstance(opts, OnnxOptions):  # a caller that built its context without them
        opts = OnnxOptions.parse(
            {"opset_version": opset_version, "quantization": quantization,
             "calibration_data": calibration_data, "quantization_exclude": quantization_exclude},
            backend=archive.backend, entry="write_out")
    opset, mode, names = opts.opset_version, opts.quantization, opts.quantization_exclude
    calibration_data = opts.calibration_data
    tracked = list(archive.trackables()["tracked_layers"])
    layers = resolve_layers(tracked, names) if names else ()
    calibration = calibration_by_endpoint(archive.endpoints, calibration_data)
    for layer in tracked:  # as for one model: the route table's next route carries it
        problem = in_process_problem(layer) if archive.backend in _REHOSTED_WHEN else ""
        if problem:
            raise RouteRefused(f"ONNX archive on the {archive.backend} backend: {problem}")
    finished = [convert(source, STRATEGIES[archive.backend], context=context, opset=opset,
                        backend=archive.backend, place=_checked_in_memory, layers=layers)
                for source in _sources(archive, tracked)]
    route = proto_route(finished[0].proto)
    exclude = Exclude(tracked, layers, finished[0].strategy.naming,
                      required=False) if layers else None
    protos = [f.proto for f in finished]
    del finished
    if exclude is not None:  # each layer in some endpoint's graph, before quantizing
        _each_layer_found(exclude, protos, route)
    floats, protos = protos, []
    for endpoint, proto in zip(archive.endpoints, floats, strict=True):
        if mode is not None:
            proto = quantize_graph(proto, mode, calibration.get(endpoint.name), route,
                                   exclude=exclude)
        protos.append(proto)
    extras = {}
    if mode is not None:
        extras["quantization"] = record(
            mode, calibration_rows(next(iter(calibration.values()))) if calibration else None,
            toolchain(), [layer.path for layer in exclude.layers] if exclude else None)
    manifest = Manifest.build(archive.endpoints, format="onnx", backend=archive.backend,
                              file_suffix=".onnx", opset=opset, weights=ARCHIVE_WEIGHTS,
                              **extras, **context.recorded())
    with atomic_target(filepath, is_dir=True, overwrite=context.overwrite) as tmp:
        with open(tmp / ARCHIVE_WEIGHTS, "wb") as f:
            _onnx_io.externalize(protos, f, ARCHIVE_WEIGHTS, all_floats=True)
        for endpoint, proto in zip(archive.endpoints, protos, strict=False):
            graph_path = tmp / f"{endpoint.name}.onnx"
            graph_path.write_bytes(proto.SerializeToString())
            _check(os.fspath(graph_path), proto_route(proto))
        (tmp / ONNX_ARCHIVE_MANIFEST).write_text(manifest.dumps())
        context.check_staged(tmp)  # before it is placed: a failed check places nothing
    if context.printer.on:
        _summary.print_summary("onnx", archive.endpoints, filepath,
                               say=context.printer)


#: Backends whose ONNX archives, like their single models, go to the route
#: table's next route (a re-host) when :func:`in_process_problem` says so.
_REHOSTED_WHEN = ("jax", "torch")


def _sources(archive: EndpointArchive, tracked: list[Any]) -> list[Source]:
    """Each endpoint of ``archive`` as the strategies read it: its live function
    (jax2onnx), the ``tf.function`` the capture traced (tf2onnx), the Keras
    variables of the tracked layers (the live reference)."""
    variables: list[Any] = []
    for layer in tracked:
        variables += [v for v in layer.variables if all(v is not k for k in variables)]
    trainable = [v for v in variables if v.trainable]
    frozen = [v for v in variables if not v.trainable]
    live = archive.described_endpoints()
    weight_bytes = _weight_bytes(archive.trackables()["variables"])
    return [Source(e.name, live[e.name][1] if e.name in live else e.function,
                   list(e.signature), e.owner, (trainable, frozen), traced=e,
                   in_archive=True, weight_bytes=weight_bytes)
            for e in archive.endpoints]


def _checked_in_memory(finished: Finished) -> Finished:
    """An archive's graph kept for the folder, once a fast strategy's check accepted it
    (the serialized float graph: the folder shares its weights afterwards)."""
    if finished.accept is not None:
        if initializer_bytes([finished.proto]) > INLINE_LIMIT:
            raise NotTraceable("the graph is too large to check in memory")
        finished.accept(finished.proto.SerializeToString())
    return finished


def _each_layer_found(exclude: Exclude, protos: list[Any], route: str) -> None:
    """Raise :class:`~kexport.errors.LayerMappingError` for a layer of
    ``quantization_exclude`` that no endpoint's graph computes."""
    for layer in exclude.layers:
        single = Exclude(exclude.model, (layer,), exclude.naming, required=False)
        if not any(single.nodes(proto, route) for proto in protos):
            Exclude(exclude.model, (layer,), exclude.naming).nodes(protos[0], route)

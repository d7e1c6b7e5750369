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
  the IR's ``rt_info`` (``kexport_manifest``), without local paths.

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
from kexport.check import samples
from kexport.errors import (
    CaptureError,
    KexportError,
    SignatureError,
    UnsupportedRouteError,
    WriteError,
)
from kexport.formats import litert
from kexport.formats.torch_program import export_program
from kexport.signature import flatten

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint
    from kexport.formats._writer import EndpointArchive

__all__ = ["write_archive"]

_WEIGHTS_PENDING = "kexport-weights-sha256-pending"


# -- strategies -----------------------------------------------------------------------------------
def _uses_xla_call_module(concrete: Any) -> bool:
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return any(n.op == "XlaCallModule" for n in nodes)


def _from_tensorflow(endpoint: TracedEndpoint, archive: EndpointArchive) -> Any:
    """Strategy 1: a TensorFlow function, read by OpenVINO's TensorFlow frontend."""
    import openvino as ov


    concrete = litert._signature_function(endpoint, endpoint.function).get_concrete_function()
    if _uses_xla_call_module(concrete):
        raise UnsupportedRouteError(
            f"Step 3/3 (write, openvino): endpoint '{endpoint.name}' is StableHLO wrapped "
            "in XlaCallModule (JAX backend), which OpenVINO cannot read (neither directly "
            "nor through LiteRT). Expected a TensorFlow or PyTorch capture. Next step: "
            "archive.write_out(path, format='openvino') and export_model(model, path, "
            "format='openvino') re-host JAX archives and models onto TensorFlow."
        )
    return ov.convert_model(concrete)


def _from_torch(endpoint: TracedEndpoint, archive: EndpointArchive) -> Any:
    """Strategy 3: ``torch.export`` the Python callable, then convert the program."""
    import openvino as ov


    layers = list(archive.trackables()["tracked_layers"])
    program = export_program(endpoint.function, endpoint.signature, endpoint.input_names,
                             layers, endpoint.name)
    return ov.convert_model(program)


def _convert(endpoint: TracedEndpoint, archive: EndpointArchive) -> Any:
    is_tf = hasattr(endpoint.function, "get_concrete_function")
    strategy = _from_tensorflow if is_tf else _from_torch
    try:
        model = strategy(endpoint, archive)
    except KexportError:
        raise
    except Exception as e:  # every conversion failure becomes a typed error
        raise CaptureError(
            f"Step 3/3 (write, openvino): converting endpoint '{endpoint.name}' with "
            f"openvino.convert_model failed: {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
        ) from e
    return _named(model, endpoint)


# -- names and shapes -------------------------------------------------------------------------------
def _named(model: Any, endpoint: TracedEndpoint) -> Any:
    """Give the IR the Keras names, kexport's input order and the signature's dims.

    Converters name ports their own way (``serve_x:0``, placeholders, ...) and
    some make every dimension dynamic; the signature is the truth.
    """
    import openvino as ov

    specs = flatten(endpoint.signature)
    names = endpoint.input_names
    ports = list(model.inputs)
    if len(ports) != len(names):
        raise CaptureError(
            f"Step 3/3 (write, openvino): endpoint '{endpoint.name}' converted with "
            f"{len(ports)} inputs. Expected {len(names)}: {names}."
        )
    prefix = f"{endpoint.name}_"  # LiteRT tensors are named "<signature>_<input>:0"
    by_name = {}
    for port in ports:
        for n in port.get_names():
            base = n.split(":")[0]
            for key in (n, base, base.removeprefix(prefix)):
                by_name.setdefault(key, port)
    ordered = [by_name.get(n) for n in names]
    if any(p is None for p in ordered) or len({id(p) for p in ordered}) != len(ordered):
        ordered = ports  # converters that drop names keep the flat order
    shapes = {}
    for port, name, spec in zip(ordered, names, specs, strict=True):
        port.get_tensor().set_names({name})
        shapes[port] = ov.PartialShape([-1 if d is None else d for d in spec.shape])
    model.reshape(shapes)
    out_names = endpoint.output_names
    outs = list(model.outputs)
    if len(outs) == len(out_names):
        by_out = {}
        for port in outs:
            for n in port.get_names():
                by_out.setdefault(n, port)
        ordered_out = [by_out.get(n) for n in out_names]
        if any(p is None for p in ordered_out) or len({id(p) for p in ordered_out}) != len(outs):
            ordered_out = outs
        named: set[tuple[str, int]] = set()
        for port, name in zip(ordered_out, out_names, strict=True):
            # outputs that are one tensor (``return x, x``) share its names:
            # renaming it again would lose the first output's name
            source = port.get_node().input_value(0)
            key = (source.get_node().get_friendly_name(), source.get_index())
            if key in named:
                port.get_tensor().add_names({name})
            else:
                port.get_tensor().set_names({name})
                named.add(key)
    return model


def _manifest(archive: EndpointArchive, layout: str) -> Manifest:
    import openvino as ov

    return Manifest.build(archive.endpoints, format="openvino", backend=archive.backend,
                          file_suffix=".xml", openvino_version=ov.__version__, layout=layout,
                          **samples.recorded())


def _save(model: Any, xml: Path, manifest: Manifest) -> None:
    import openvino as ov

    model.set_rt_info("kexport", [OPENVINO_PRODUCER_KEY])
    model.set_rt_info(manifest.dumps(indent=None), [OPENVINO_MANIFEST_KEY])
    ov.save_model(model, os.fspath(xml), compress_to_fp16=False)


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, verbose: bool = True) -> None:
    """Write ``archive`` as OpenVINO IR: one ``.xml``/``.bin`` pair, or a folder of them.

    Args:
        archive: the endpoints to write.
        filepath: ``name.xml`` (one endpoint; ``name.bin`` goes beside it) or a folder.
        options: unused; must be ``None``.
        verbose: print a summary.
    """
    if options is not None:
        raise SignatureError(
            f"Expected options=None for format='openvino'. Received: {options!r}")
    target = Path(os.fspath(filepath))
    single = target.suffix == ".xml" and len(archive.endpoints) == 1
    if target.suffix == ".xml" and not single:
        raise SignatureError(
            f"Expected a folder path for an archive with {len(archive.endpoints)} endpoints "
            f"(one IR per endpoint). Received: filepath='{os.fspath(filepath)}' ending in .xml."
        )
    manifest = _manifest(archive, "file" if single else "folder")
    if single:
        manifest = manifest.with_extras(weights_sha256=_WEIGHTS_PENDING)
    models = {e.name: _convert(e, archive) for e in archive.endpoints}
    with tempfile.TemporaryDirectory(prefix="kexport-openvino-") as tmp:
        build = Path(tmp)
        try:
            for name, model in models.items():
                _save(model, build / f"{name}.xml", manifest)
        except Exception as e:
            raise WriteError(f"Step 3/3 (write, openvino): saving the IR failed: {e}") from e
        if single:
            (name,) = models
            xml = build / f"{name}.xml"
            # the graph records its weights' hash (kexport readers check the pair)
            xml.write_text(xml.read_text().replace(_WEIGHTS_PENDING,
                                                   file_sha256(build / f"{name}.bin")))
            # Two renames cannot be one atomic step: weights first, graph last
            # (the .xml is what runtimes open). A crash between them leaves a
            # new .bin beside the old .xml, which check_openvino_weights() refuses and
            # the next export replaces.
            with atomic_target(target.with_suffix(".bin"), is_dir=False) as t:
                shutil.copyfile(build / f"{name}.bin", t)
            with atomic_target(target, is_dir=False) as t:
                shutil.copyfile(xml, t)
        else:
            (build / MANIFEST_NAME).write_text(manifest.dumps())
            with atomic_target(target, is_dir=True) as t:
                for f in build.iterdir():
                    shutil.copyfile(f, t / f.name)
    if verbose:
        _summary.print_summary("openvino", archive.endpoints, filepath)

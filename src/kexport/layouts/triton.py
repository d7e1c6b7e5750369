"""The Triton model repository layout.

One Triton model per endpoint (``<name>`` for a single-endpoint artifact,
``<name>_<endpoint>`` for each endpoint of an archive)::

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<VERSION>/model.onnx        ONNX: backend "onnxruntime"
                                               (+ its external data file, same name)
    <repo>/<model>/<VERSION>/model.savedmodel/ SavedModel: platform "tensorflow_savedmodel"
                                               (TF_SIGNATURE_DEF names the endpoint)
    <repo>/<model>/<VERSION>/model.xml, .bin   OpenVINO IR: backend "openvino"

``config.pbtxt`` lists the endpoint's inputs and outputs by name with Triton's
``TYPE_*`` data types and their dims (``-1`` for a dynamic one). When axis 0 is
a free batch dimension (dynamic in every input and output, one symbol used
nowhere else), the model batches: ``max_batch_size`` (:data:`MAX_BATCH_SIZE`)
and ``dynamic_batching``, and the dims leave the batch axis out. A tensor left
with no dims is written ``dims: [ 1 ]`` with ``reshape { shape: [ ] }``, as
Triton requires. One config serves every version of a model: a version is
only added beside a ``config.pbtxt`` with the same text.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kexport.artifact import MANIFEST_NAME, ONNX_ARCHIVE_MANIFEST, strict_json
from kexport.errors import LayoutError, TargetExistsError
from kexport.layouts._place import choose_version, copy_file, new_version, place_file
from kexport.layouts._repo import Layout
from kexport.runtime import Artifact, EndpointInfo, TensorInfo

__all__ = ["CONFIG", "FORMATS", "MAX_BATCH_SIZE", "TYPES", "batch_axis_free", "config_text",
           "model_names", "write"]

#: The model configuration file of a Triton model folder.
CONFIG = "config.pbtxt"
#: ``max_batch_size`` of a model whose axis 0 is a free batch dimension.
MAX_BATCH_SIZE = 32
#: NumPy dtype name -> Triton data type.
TYPES: dict[str, str] = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}
#: kexport format -> (the config line choosing Triton's backend, the file name
#: in the version folder). Formats not listed cannot be served by Triton.
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ('backend: "onnxruntime"', "model.onnx"),
    "tf_saved_model": ('platform: "tensorflow_savedmodel"', "model.savedmodel"),
    "openvino": ('backend: "openvino"', "model.xml"),
}


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _symbol(t: TensorInfo, axis: int) -> str | None:
    return t.symbols[axis] if t.symbols is not None and axis < len(t.symbols) else None


def batch_axis_free(info: EndpointInfo) -> bool:
    """Whether axis 0 of every input and output is one free (dynamic) batch dimension.

    Dynamic in every tensor; where the artifact records dimension symbols, the
    inputs' axis 0 share one symbol that no other axis uses, and no output's
    axis 0 carries another input symbol.
    """
    tensors = [*info.inputs, *info.outputs]
    if not info.inputs or any(not t.shape or t.shape[0] is not None for t in tensors):
        return False
    batch = {_symbol(t, 0) for t in info.inputs} - {None}
    if len(batch) > 1:
        return False
    if batch:
        symbol = next(iter(batch))
        if any(_symbol(t, a) == symbol for t in tensors for a in range(1, len(t.shape))):
            return False
        others = {_symbol(t, a) for t in info.inputs for a in range(1, len(t.shape))} - {None}
        if any(_symbol(t, 0) in others for t in info.outputs):
            return False
    return True


def _tensor(t: TensorInfo, batched: bool, endpoint: str) -> str:
    if t.dtype not in TYPES:
        raise LayoutError(f"Endpoint '{endpoint}', tensor '{t.name}': expected a dtype Triton "
                          f"has, one of {sorted(TYPES)}. Received: dtype {t.dtype}")
    dims = [-1 if d is None else int(d) for d in (t.shape[1:] if batched else t.shape)]
    lines = ["  {", f"    name: {_quote(t.name)}", f"    data_type: {TYPES[t.dtype]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape { shape: [ ] }"]
    return "\n".join(lines + ["  }"])


def config_text(model: str, format: str, info: EndpointInfo) -> str:
    """The ``config.pbtxt`` of Triton model ``model`` serving endpoint ``info``."""
    backend, _ = FORMATS[format]
    batched = batch_axis_free(info)
    lines = [f"name: {_quote(model)}", backend,
             f"max_batch_size: {MAX_BATCH_SIZE if batched else 0}"]
    for key, tensors in (("input", info.inputs), ("output", info.outputs)):
        body = ",\n".join(_tensor(t, batched, info.name) for t in tensors)
        lines.append(f"{key} [\n{body}\n]")
    if batched:
        lines.append("dynamic_batching { }")
    if format == "tf_saved_model":
        lines.append('parameters { key: "TF_SIGNATURE_DEF" value { string_value: '
                     f'{_quote(info.name)} }} }}')
    return "\n".join(lines) + "\n"


def model_names(name: str, endpoints: list[str]) -> dict[str, str]:
    """Endpoint -> Triton model name: ``name`` alone, else ``name_<endpoint>`` each."""
    if len(endpoints) == 1:
        return {endpoints[0]: name}
    return {e: f"{name}_{e}" for e in endpoints}


def _endpoint_file(source: Path, endpoint: str, suffix: str) -> Path:
    """The file of ``endpoint`` in a folder artifact (the manifest's ``file``, else
    ``<endpoint><suffix>``); ``source`` itself for a single file."""
    if source.is_file():
        return source
    for manifest in (ONNX_ARCHIVE_MANIFEST, MANIFEST_NAME):
        if (source / manifest).is_file():
            data = strict_json((source / manifest).read_bytes(), what=manifest)
            entry = data.get("endpoints", {}).get(endpoint)
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                return source / Path(entry["file"]).name
    return source / f"{endpoint}{suffix}"


def _external_files(onnx_file: Path) -> list[str]:
    """Relative file names of the external data an ONNX graph refers to."""
    import onnx  # heavy
    from onnx import TensorProto

    model = onnx.load_model(os.fspath(onnx_file), load_external_data=False)
    found: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            rel = Path(location)
            if location and not rel.is_absolute() and ".." not in rel.parts \
                    and location not in found:
                found.append(location)
    return found


def _fill(into: Path, format: str, source: Path, endpoint: str) -> None:
    """Put the endpoint's model files in the (empty) version folder ``into``."""
    _, filename = FORMATS[format]
    if format == "tf_saved_model":
        shutil.copytree(source, into / filename)
    elif format == "onnx":
        graph = _endpoint_file(source, endpoint, ".onnx")
        copy_file(graph, into / filename)
        for location in _external_files(graph):
            copy_file(graph.parent / location, into / location)
    else:  # openvino
        xml = _endpoint_file(source, endpoint, ".xml")
        copy_file(xml, into / filename)
        copy_file(xml.with_suffix(".bin"), into / Path(filename).with_suffix(".bin"))


def write(artifact: Artifact, source: Path, format: str, repo: Path, name: str,
          version: int | None) -> list[Layout]:
    """Write one Triton model per endpoint of ``artifact`` (see the module doc)."""
    names = model_names(name, list(artifact.endpoints))
    configs = {e: config_text(m, format, artifact.endpoints[e]) for e, m in names.items()}
    model_dirs = [repo / m for m in names.values()]
    for endpoint, model in names.items():  # refuse before writing anything
        config = repo / model / CONFIG
        if config.is_file() and config.read_text() != configs[endpoint]:
            raise TargetExistsError(
                f"Expected model '{model}' in '{os.fspath(repo)}' to be new or to have the "
                f"same {CONFIG} (one config serves every version of a Triton model). "
                f"Received: a {CONFIG} for other inputs, outputs or backend. Nothing was "
                "written. Next step: choose another `name`.")
    chosen = choose_version(model_dirs, version)
    written = []
    for endpoint, model in names.items():
        model_dir = repo / model
        with new_version(model_dir, chosen, model_dirs) as tmp:
            _fill(tmp, format, source, endpoint)
        place_file(model_dir / CONFIG, configs[endpoint])
        _, filename = FORMATS[format]
        written.append(Layout(model, chosen, os.fspath(model_dir / str(chosen) / filename),
                              format))
    return written

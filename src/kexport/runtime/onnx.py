"""Runtime for ONNX artifacts (backed by ONNX Runtime).

Two layouts are recognised:

- **a single ONNX file** (any name; ``.onnx`` or ONNX bytes): one endpoint,
  named by the ``kexport.endpoint`` / ``endpoint`` metadata property, else
  ``serve``;
- **an ONNX archive folder**: one ``<endpoint>.onnx`` per endpoint, all
  referring to one external weights file, plus a JSON manifest. The weights
  are read once and handed to every endpoint's session as ONNX Runtime
  *shared initializers* (``SessionOptions.add_initializer``), so endpoints
  share one copy in memory instead of one copy each.

The verification report is stored in each graph's ``metadata_props`` under
``kexport.verification``. A quantized artifact's record (``kexport.quantization``
in ``metadata_props``, or the manifest's ``quantization``) is read into
``metadata``: ``quantization`` (the mode), ``precision`` (``"int8"``,
``"float16"``: the tolerance row ``kexport.verify`` uses) and the whole record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kexport._atomic import atomic_target
from kexport._numerics import onnxruntime_options
from kexport.artifact import DEFAULT_ENDPOINT, endpoint_order, manifest_default_endpoint
from kexport.artifact.quantization import METADATA_KEY as QUANTIZATION_KEY
from kexport.artifact.quantization import read_record
from kexport.errors import ArtifactError, KexportError
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["PRECISIONS", "REPORT_KEY", "OnnxArtifact", "detect", "layer_ops", "open",
           "store_report"]

FORMAT = "onnx"
PRECISIONS: tuple[str, ...] = ("float32",)
REPORT_KEY = "kexport.verification"
_ENDPOINT_KEYS = ("kexport.endpoint", "endpoint")


def _looks_like_onnx_file(path: Path) -> bool:
    if path.suffix == ".onnx":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(1)
    except OSError:
        return False
    if head != b"\x08":  # ModelProto field 1 (ir_version), varint
        return False
    try:
        import onnx

        model = onnx.load_model(os.fspath(path), load_external_data=False)
    except Exception:
        return False
    return bool(model.opset_import) and model.HasField("graph")


def detect(path: Path) -> bool:
    """An ONNX file, or a folder holding ``<endpoint>.onnx`` files."""
    if path.is_file():
        return _looks_like_onnx_file(path)
    return path.is_dir() and any(path.glob("*.onnx"))


def _manifest(folder: Path) -> dict[str, Any]:
    """The archive's JSON manifest (the first JSON file naming endpoints)."""
    for candidate in sorted(folder.glob("*.json")):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "endpoints" in data:
            return data
    return {}


def _props(model: Any) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            props[p.key] = json.loads(p.value)
        except ValueError:
            props[p.key] = p.value
    return props


def _np_dtype(onnx_type: str) -> str:
    """``'tensor(float)'`` -> ``'float32'``."""
    import numpy as np

    inner = onnx_type.removeprefix("tensor(").removesuffix(")")
    table = {"float": "float32", "double": "float64", "float16": "float16",
             "bfloat16": "bfloat16", "string": "string", "bool": "bool"}
    if inner in table:
        return table[inner]
    try:
        return np.dtype(inner).name
    except TypeError:
        return inner


def _info(arg: Any) -> TensorInfo:
    shape = tuple(arg.shape or ())
    dims = tuple(d if isinstance(d, int) else None for d in shape)
    # named dims (dim_param) are the graph's own symbols: equal names, equal sizes
    symbols = tuple(d if isinstance(d, str) and d else None for d in shape)
    return TensorInfo(arg.name, dims, _np_dtype(arg.type),
                      symbols if any(isinstance(d, str) for d in shape) else None)


def _external_key(tensor: Any) -> tuple[str, int, int] | None:
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    fields = {e.key: e.value for e in tensor.external_data}
    return (fields.get("location", ""), int(fields.get("offset", 0) or 0),
            int(fields.get("length", -1) or -1))


class OnnxArtifact(Artifact):
    """An ONNX file or archive folder run with ONNX Runtime."""

    thread_safe = True  # concurrent run() calls are safe

    def __init__(self, path: str, root: Path, files: dict[str, Path],
                 default: str, metadata: dict[str, Any], threads: int | None = None) -> None:
        import onnx
        import onnxruntime as ort

        super().__init__(path=path, format=FORMAT)
        self.precision = "float32"
        self._root = root
        self._graph_files = files
        self._models: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        # key (location, offset, length) -> (ndarray, OrtValue); kept alive as
        # long as the sessions that use them.
        self._shared: dict[tuple[str, int, int], tuple[Any, Any]] = {}
        share = len(files) > 1
        for name, file in files.items():
            model = onnx.load_model(os.fspath(file), load_external_data=False)
            self._models[name] = model
            options = onnxruntime_options(threads=threads)
            if share:
                for tensor in model.graph.initializer:
                    key = _external_key(tensor)
                    if key is not None:
                        options.add_initializer(tensor.name, self._shared_value(file, tensor, key))
            session = ort.InferenceSession(os.fspath(file), options,
                                           providers=["CPUExecutionProvider"])
            self._sessions[name] = session
            self.endpoints[name] = EndpointInfo(
                name, tuple(_info(a) for a in session.get_inputs()),
                tuple(_info(a) for a in session.get_outputs()))
        self.default_endpoint = default if default in self.endpoints else next(iter(files))
        first = self._models[self.default_endpoint]
        self.metadata = dict(metadata)
        self.metadata.update({k: v for k, v in _props(first).items() if k != REPORT_KEY})
        self.metadata.setdefault("producer", first.producer_name)
        self.metadata.setdefault("producer_version", first.producer_version)
        self.metadata.setdefault("opset", {(o.domain or "ai.onnx"): o.version
                                           for o in first.opset_import})
        quantized = read_record(self.metadata)
        if quantized is not None:
            # as LiteRT's metadata says it: the mode, and the compute precision
            # kexport.verify picks its tolerances by; the whole record beside them
            self.metadata[QUANTIZATION_KEY] = quantized
            self.metadata["quantization"] = quantized["mode"]
            self.metadata["precision"] = quantized["precision"]

    @property
    def shared_initializers(self) -> int:
        """How many weight tensors the endpoints share in memory."""
        return len(self._shared)

    def _shared_value(self, file: Path, tensor: Any, key: tuple[str, int, int]) -> Any:
        import numpy as np
        import onnxruntime as ort
        from onnx import helper

        if key not in self._shared:
            location, offset, length = key
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
            count = int(np.prod(tensor.dims)) if tensor.dims else 1
            if length >= 0 and length != count * dtype.itemsize:

                raise ArtifactError(
                    f"Weight '{tensor.name}' of '{file.name}': expected {count * dtype.itemsize} "
                    f"bytes in '{location}'. Received: length={length}"
                )
            data = np.fromfile(file.parent / location, dtype=dtype, count=count, offset=offset)
            array = np.ascontiguousarray(data.reshape(tuple(tensor.dims)))
            self._shared[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
        return self._shared[key][1]

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        session = self._sessions[endpoint.name]
        values = session.run(endpoint.output_names, feeds)
        return dict(zip(endpoint.output_names, values, strict=True))

    @property
    def verification(self) -> dict[str, Any] | None:
        """The report stored in the default graph's ``metadata_props``."""
        report = _props(self._models[self.default_endpoint]).get(REPORT_KEY)
        return report if isinstance(report, dict) else None

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """ONNX operator types per endpoint, subgraphs included."""
        out = {}
        for name, model in self._models.items():
            tally: dict[str, int] = {}
            _count(model.graph, tally)
            out[name] = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
        return out


def _count(graph: Any, tally: dict[str, int]) -> None:
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        tally[key] = tally.get(key, 0) + 1
        for attr in node.attribute:
            if attr.HasField("g"):
                _count(attr.g, tally)
            for g in attr.graphs:
                _count(g, tally)


def layer_ops(path: str | os.PathLike[str], names: list[str], first: int = 5
              ) -> dict[str, list[str]]:
    """Layer name -> the first ``first`` op kinds (graph order, distinct) of the
    default graph whose node name or metadata (the converter's name scopes:
    tf2onnx's ``.../dense/MatMul``, torch.onnx's ``namespace``) holds that name
    as one segment; layers no node names are left out (a converter that keeps
    no scopes, e.g. jax2onnx, gives ``{}``). For :func:`kexport.localize`."""
    import re

    import onnx

    files, default, _ = _graph_files(Path(path))
    graph = onnx.load_model(os.fspath(files[default]), load_external_data=False).graph
    wanted = set(names)
    found: dict[str, list[str]] = {}
    for node in graph.node:
        text = " ".join([node.name, *(p.value for p in node.metadata_props)])
        layers = set()
        for segment in re.split(r"[/.:\s]+", text):
            # TensorFlow name scopes add "_1" to a scope used again
            if segment in wanted or (segment := re.sub(r"_\d+$", "", segment)) in wanted:
                layers.add(segment)
        for name in layers:
            ops = found.setdefault(name, [])
            if len(ops) < first and node.op_type not in ops:
                ops.append(node.op_type)
    return {n: ops for n, ops in found.items() if ops}


def _graph_files(path: Path) -> tuple[dict[str, Path], str, dict[str, Any]]:
    """Endpoint -> graph file, the default endpoint, manifest metadata."""
    if path.is_file():
        import onnx

        props = _props(onnx.load_model(os.fspath(path), load_external_data=False))
        name = next((str(props[k]) for k in _ENDPOINT_KEYS if k in props), DEFAULT_ENDPOINT)
        return {name: path}, name, {}
    manifest = _manifest(path)
    found = {f.stem: f for f in sorted(path.glob("*.onnx"))}
    default = manifest_default_endpoint(manifest, found)
    names = endpoint_order(manifest, found)
    meta = {k: v for k, v in manifest.items() if k not in ("endpoints",)}
    return {n: found[n] for n in names}, default, meta


def open(path: Path, given: str, threads: int | None = None,
         precision: str = "float32") -> OnnxArtifact:
    """Open an ONNX file or archive folder with ONNX Runtime.

    Args:
        path: the file or folder.
        given: the path as the caller wrote it (for messages and ``.path``).
        threads: ONNX Runtime intra-op threads (``None``: its default).
        precision: only ``"float32"``: ONNX Runtime's CPU provider computes a
            float graph in its own dtypes (a float16 graph is written so).

    Raises:
        ArtifactError: when ONNX Runtime cannot open a graph.
    """

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening an ONNX artifact needs onnx and onnxruntime: pip install 'kexport[onnx]'"
        ) from e
    files, default, meta = _graph_files(path)
    if not files:
        raise ArtifactError(f"Expected one or more .onnx graphs in '{given}'. Received none.")
    try:
        return OnnxArtifact(given, path, files, default, meta, threads=threads)
    except KexportError:
        raise
    except Exception as e:
        raise ArtifactError(
            f"Expected an ONNX artifact that ONNX Runtime can open at '{given}'. "
            f"It failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def store_report(path: Path, report: dict[str, Any]) -> None:
    """Store ``report`` in ``metadata_props`` of every graph of the artifact.

    Each graph file is rewritten beside itself and renamed into place (its
    external weights are referenced, not copied), so every file is complete
    at every moment.
    """
    import onnx


    files, _, _ = _graph_files(path)
    text = json.dumps(report, sort_keys=True)
    for file in files.values():
        model = onnx.load_model(os.fspath(file), load_external_data=False)
        kept = [p for p in model.metadata_props if p.key != REPORT_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=REPORT_KEY, value=text)
        with atomic_target(file, is_dir=False, overwrite=True) as tmp:
            onnx.save_model(model, os.fspath(tmp))

"""The kexport manifest: what every artifact says about itself, built and read in one place.

Every writer records a manifest (``kexport.json``, or ``manifest.json`` in an
ONNX archive folder, or the same JSON inside the artifact's own metadata) built
through :class:`Manifest`, and every reader of a manifest file goes through
:func:`read_manifest` (strict JSON: no duplicate keys, NaN or Infinity). Which
endpoint an artifact runs by default is decided by :func:`default_endpoint`,
here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kexport._version import __version__
from kexport.errors import ArtifactError
from kexport.signature import Spec, flatten

__all__ = [
    "DEFAULT_ENDPOINT",
    "MANIFEST_NAME",
    "MANIFESTS",
    "ONNX_ARCHIVE_MANIFEST",
    "PRODUCER",
    "SAVED_MODEL_MANIFEST",
    "SERVING_DEFAULT",
    "Manifest",
    "default_endpoint",
    "endpoint_order",
    "manifest_default_endpoint",
    "read_manifest",
    "strict_json",
]

#: The name of the single endpoint of a model exported with ``export_model``.
DEFAULT_ENDPOINT = "serve"
#: TensorFlow Serving's default signature key; an endpoint with this name is the default.
SERVING_DEFAULT = "serving_default"
#: The ``producer`` every kexport manifest records.
PRODUCER = "kexport"
#: The manifest file of folder artifacts (and the metadata entry of single files).
MANIFEST_NAME = "kexport.json"
#: Where a SavedModel keeps its manifest.
SAVED_MODEL_MANIFEST = os.path.join("assets.extra", MANIFEST_NAME)
#: The manifest of an ONNX archive folder.
ONNX_ARCHIVE_MANIFEST = "manifest.json"
#: Manifest file names that mark a folder as a kexport artifact (SavedModel,
#: generic, ONNX archive folder).
MANIFESTS: tuple[str, ...] = (SAVED_MODEL_MANIFEST, MANIFEST_NAME, ONNX_ARCHIVE_MANIFEST)
_MANIFEST_MAX_BYTES = 16 << 20


# -- the default-endpoint rule -------------------------------------------------------
def default_endpoint(names: Iterable[str], recorded: object = None, *,
                     ordered: bool = True) -> str:
    """The endpoint an artifact runs by default: the one rule of every format.

    In order: ``recorded`` (a manifest's ``default_endpoint``) when it names
    one of ``names``; else ``serving_default`` if an endpoint has that name;
    else, when ``names`` lost the order the endpoints were added in (older
    manifests were written with sorted keys), ``serve``; else the first name.

    Args:
        names: the endpoint names, in the order they were added when known.
        recorded: the default a manifest recorded, if any.
        ordered: whether ``names`` is in the order the endpoints were added.

    Returns:
        The default endpoint's name; ``""`` when ``names`` is empty.

    Example:

    ```python
    default_endpoint(["predict", "serve"])  # "predict": the first added
    default_endpoint(["encode", "serving_default"])  # "serving_default"
    ```
    """
    names = list(names)
    if isinstance(recorded, str) and recorded in names:
        return recorded
    if SERVING_DEFAULT in names:
        return SERVING_DEFAULT
    if not ordered and DEFAULT_ENDPOINT in names:
        return DEFAULT_ENDPOINT
    return names[0] if names else ""


def endpoint_order(manifest: Mapping[str, Any], found: Iterable[str]) -> list[str]:
    """``found`` (endpoint names a runtime found) in the order the manifest lists them.

    Names the manifest does not list follow, in their own order. The
    manifest's ``endpoints`` is an object keyed by name, or (older archives)
    a list of names or of objects with a ``name``.
    """
    found = list(found)
    listed = manifest.get("endpoints")
    if isinstance(listed, Mapping):
        names = [str(k) for k in listed]
    elif isinstance(listed, list):
        names = [n if isinstance(n, str) else str(n.get("name", "")) if isinstance(n, Mapping)
                 else str(n) for n in listed]
    else:
        names = []
    order = [n for n in names if n in found]
    return order + [n for n in found if n not in order]


def manifest_default_endpoint(manifest: Mapping[str, Any], endpoints: Iterable[str]) -> str:
    """The default of an artifact whose runtime found ``endpoints``, by its manifest.

    :func:`default_endpoint` over the endpoints in the order the manifest
    lists them (then any it does not list), with the manifest's recorded
    ``default_endpoint`` (older ONNX archives: ``default``). A manifest
    without a record may have lost the endpoint order (sorted keys), so
    ``serve`` is preferred there. ``serve`` when there are no endpoints.

    Args:
        manifest: the artifact's manifest as a dict (missing keys are fine).
        endpoints: the endpoint names the runtime found.
    """
    order = endpoint_order(manifest, endpoints)
    recorded = manifest.get("default_endpoint") or manifest.get("default")
    return default_endpoint(order, recorded, ordered=False) or DEFAULT_ENDPOINT


# -- strict JSON ------------------------------------------------------------------------
def _reject_constant(value: str) -> None:
    raise ValueError(f"non-finite number {value} is not allowed")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def strict_json(text: str | bytes, *, what: str) -> dict[str, Any]:
    """Parse a JSON object strictly: no duplicate keys, NaN or Infinity.

    Args:
        text: the JSON document.
        what: names the document in error messages.

    Raises:
        ArtifactError: when ``text`` is not such a JSON object.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"Expected {what} to be valid strict JSON. Received "
                            f"invalid content: {e}") from e
    if not isinstance(value, dict):
        raise ArtifactError(f"Expected {what} to hold a JSON object. Received: "
                            f"{type(value).__name__}")
    return value


# -- the manifest -----------------------------------------------------------------------
class EndpointLike(Protocol):
    """What :meth:`Manifest.build` reads from an endpoint (a traced endpoint)."""

    name: str
    signature: Any
    input_names: Sequence[str]
    output_specs: Sequence[Spec]


def _sorted(value: Any) -> Any:
    """``value`` with every dict's keys sorted (a stable JSON layout)."""
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


@dataclass(frozen=True)
class Manifest:
    """What a kexport artifact records about itself (no local paths).

    Attributes:
        format: the format name (``"onnx"``, ...); ``""`` in manifests of
            older versions that did not record it.
        backend: the Keras backend that wrote the artifact.
        endpoints: endpoint name -> ``{"inputs": [...], "outputs": [...]}``
            (spec dicts with ``name``, ``shape``, ``dtype``; plus ``file``
            where each endpoint has a file of its own), in the order added.
        default_endpoint: the endpoint the artifact runs by default
            (:func:`default_endpoint`); ``""`` when not recorded.
        producer_version: the kexport version that wrote it.
        keras_version: the Keras version that wrote it.
        source_backend: the backend the model was re-hosted from, when it was.
        route: how the artifact was made, when recorded (``"rehost"``).
        extras: format-specific facts, stored at the top level of the JSON
            (e.g. ``opset``, ``quantization``, ``layout``, ``weights_sha256``).
    """

    #: The ``producer`` of every manifest kexport writes.
    producer: ClassVar[str] = PRODUCER

    format: str = ""
    backend: str = ""
    endpoints: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_endpoint: str = ""
    producer_version: str = __version__
    keras_version: str = ""
    source_backend: str = ""
    route: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)

    _STR_FIELDS: ClassVar[tuple[str, ...]] = (
        "format", "backend", "default_endpoint", "producer_version", "keras_version",
        "source_backend", "route")

    @staticmethod
    def endpoint_entry(endpoint: EndpointLike, file: str | None = None) -> dict[str, Any]:
        """The manifest entry of one endpoint: its input and output specs (and file)."""
        entry: dict[str, Any] = {
            "inputs": [dict(s.to_json(), name=n) for s, n in
                       zip(flatten(endpoint.signature), endpoint.input_names, strict=True)],
            "outputs": [s.to_json() for s in endpoint.output_specs],
        }
        if file is not None:
            entry["file"] = file
        return entry

    @classmethod
    def build(cls, endpoints: Iterable[EndpointLike], *, format: str, backend: str,
              file_suffix: str | None = None, **extras: Any) -> Manifest:
        """The manifest a writer records for ``endpoints``.

        Args:
            endpoints: the traced endpoints, in the order they were added.
            format: the format name.
            backend: the Keras backend writing the artifact.
            file_suffix: when each endpoint has a file of its own, its suffix
                (the entry records ``file=<name><suffix>``).
            **extras: format-specific facts (see :attr:`extras`).
        """
        import keras  # heavy: only writers (which already run Keras) build manifests

        endpoints = list(endpoints)
        entries = {e.name: cls.endpoint_entry(
            e, None if file_suffix is None else f"{e.name}{file_suffix}") for e in endpoints}
        return cls(format=format, backend=backend, endpoints=entries,
                   default_endpoint=default_endpoint(entries),
                   keras_version=keras.__version__, extras=dict(extras))

    def with_extras(self, **extras: Any) -> Manifest:
        """A copy with ``extras`` added (or replaced)."""
        return dataclasses.replace(self, extras={**self.extras, **extras})

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk: keys sorted, endpoints in the order added."""
        data: dict[str, Any] = {k: _sorted(v) for k, v in self.extras.items()}
        data["producer"] = self.producer
        for name in self._STR_FIELDS:
            value = getattr(self, name)
            if value:
                data[name] = value
        out = {k: data[k] for k in sorted(data)}
        out["endpoints"] = {name: _sorted(entry) for name, entry in self.endpoints.items()}
        return {k: out[k] for k in sorted(out)}

    def dumps(self, indent: int | None = 2) -> str:
        """:meth:`to_json` as text (``indent=None``: one line, for embedded metadata)."""
        return json.dumps(self.to_json(), indent=indent)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes, *,
                  what: str = "the kexport manifest") -> Manifest:
        """Read a manifest strictly; keys older versions did not write may be missing.

        Args:
            data: the manifest's text, or the object it holds.
            what: names the document in error messages.

        Raises:
            ArtifactError: when ``data`` is not strict JSON, not written by
                kexport, or a recorded field has the wrong type.
        """
        if isinstance(data, (str, bytes)):
            data = strict_json(data, what=what)
        if not isinstance(data, Mapping):
            raise ArtifactError(f"Expected {what} to hold a JSON object. Received: "
                                f"{type(data).__name__}")
        if data.get("producer") != PRODUCER:
            raise ArtifactError("Expected a manifest with producer 'kexport'. Received: "
                                f"producer={data.get('producer')!r}")
        endpoints = data.get("endpoints", {})
        if not isinstance(endpoints, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in endpoints.items()):
            raise ArtifactError("Expected the manifest's `endpoints` to be an object keyed by "
                                "endpoint name.")
        fields: dict[str, Any] = {}
        for name in cls._STR_FIELDS:
            if name in data:
                value = data[name]
                if not isinstance(value, str):
                    raise ArtifactError(f"Expected the manifest's `{name}` to be a string. "
                                        f"Received: {name}={value!r}")
                fields[name] = value
        known = {"producer", "endpoints", *cls._STR_FIELDS}
        return cls(endpoints=endpoints, extras={k: v for k, v in data.items() if k not in known},
                   **fields)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a kexport manifest file (``kexport.json``) strictly.

    Args:
        path: the manifest file.

    Returns:
        The :class:`Manifest`.

    Raises:
        ArtifactError: when the file is missing, too large, not strict JSON,
            or not written by kexport.
    """
    p = Path(os.fspath(path))
    try:
        size = p.stat().st_size
        if size > _MANIFEST_MAX_BYTES:
            raise ArtifactError(f"Expected a kexport manifest under "
                                f"{_MANIFEST_MAX_BYTES} bytes. Received {size} bytes.")
        data = p.read_bytes()
    except OSError as e:
        raise ArtifactError(f"Could not read the kexport manifest: {e}") from e
    return Manifest.from_json(data)

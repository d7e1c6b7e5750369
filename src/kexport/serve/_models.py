"""What a ``kexport serve PATH`` serves: model names -> opened artifacts.

:func:`_models_in` resolves PATH to ``{name: artifact path}``; :class:`Served`
holds one opened artifact, the endpoint each model name runs, and the lock
that serialises calls when the format's runtime is not thread-safe
(``Artifact.thread_safe``).

Model names: the artifact's file name without the format's suffix
(``digits.onnx`` -> ``digits``), or ``name=`` for a single artifact. Every
endpoint of a multi-endpoint archive is also served as ``<name>.<endpoint>``;
``<name>`` alone runs the default endpoint (TF-Serving's ``signature_name``
picks any endpoint of ``<name>``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexport import runtime
from kexport.artifact import FORMATS
from kexport.artifact.recognize import has_manifest
from kexport.errors import ArtifactError, LayoutError, describe
from kexport.layouts import existing_versions, read_layout
from kexport.runtime import Artifact, EndpointInfo

__all__ = ["Served", "ServedModel", "_models_in", "open_models"]


def _stem(path: Path, format: str) -> str:
    suffix = FORMATS[format].suffix
    if suffix and path.name.endswith(suffix) and path.name != suffix:
        return path.name[: -len(suffix)]
    return path.name


def _models_in(path: str | os.PathLike[str], name: str | None = None) -> dict[str, Path]:
    """Resolve ``kexport serve PATH`` to ``{model name: artifact path}``.

    PATH is one artifact (served as ``name``, default its file stem) or a
    folder of artifacts (one model per artifact, named by file stem; entries
    that are not artifacts are skipped). A folder is one artifact when it
    holds a kexport manifest (a SavedModel, an ONNX archive, ...), or when
    none of its entries is an artifact but a runtime recognises the folder.

    Serving layouts (:func:`kexport.write_layout`) are served as their
    systems would: a model folder (``<repo>/<name>``) as ``<name>`` at its
    highest version, a version folder (``<repo>/<name>/<N>``) as ``<name>``
    at that version, and a repository as one model per model folder.

    Raises:
        ArtifactError: PATH missing, holding no artifact, two artifacts with
            one name, or ``name`` given for a folder of several artifacts.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ArtifactError(f"Expected PATH to be a non-empty str or pathlib.Path. "
                            f"Received: {describe(path)}")
    root = Path(os.fspath(path))
    if not root.exists():
        raise ArtifactError(f"Expected an artifact or a folder of artifacts at "
                            f"'{os.fspath(path)}'. Received: a path that does not exist")
    layout = _layout_models(root, name)
    if layout is not None:
        return layout
    if not root.is_dir() or has_manifest(root):
        return {name or _stem(root, runtime.detect(root)): root}
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        try:
            format = runtime.detect(child)
        except ArtifactError:
            continue
        stem = _stem(child, format)
        if stem in found:
            raise ArtifactError(
                f"Expected one artifact per model name. Received: '{found[stem].name}' and "
                f"'{child.name}' would both be served as '{stem}'; rename one")
        found[stem] = child
    if not found:
        with contextlib.suppress(ArtifactError):  # an artifact folder kexport did not write
            return {name or _stem(root, runtime.detect(root)): root}
        kinds = ", ".join(runtime.runtime_formats())
        raise ArtifactError(f"Expected an artifact ({kinds}) or a folder holding artifacts. "
                            f"Received: '{os.fspath(path)}', where none was found")
    if name is not None:
        if len(found) != 1:
            raise ArtifactError(f"Expected --name/name= only for a single artifact. Received: "
                                f"a folder of {len(found)} artifacts {sorted(found)}")
        return {name: next(iter(found.values()))}
    return found


def _layout_models(root: Path, name: str | None) -> dict[str, Path] | None:
    """``{model name: artifact path}`` when ``root`` is a serving layout (a
    version folder, a model folder or a repository), else ``None``."""
    if not root.is_dir():
        return None
    is_version = root.name.isdigit() and int(root.name) > 0 and bool(
        existing_versions(root.resolve().parent))
    if is_version or existing_versions(root):
        layout = read_layout(root)
        return {name or layout.name: Path(layout.artifact_path)}
    model_dirs = sorted(d for d in root.iterdir()
                        if d.is_dir() and not d.name.startswith(".") and existing_versions(d))
    if not model_dirs:
        return None
    found: dict[str, Path] = {}
    for model_dir in model_dirs:
        try:
            layout = read_layout(model_dir)
        except LayoutError as e:
            raise ArtifactError(f"Expected every model folder of the repository '{root.name}' "
                                f"to hold a servable version. Received: {e}") from None
        found[layout.name] = Path(layout.artifact_path)
    if name is not None:
        if len(found) != 1:
            raise ArtifactError(f"Expected --name/name= only for a single model. Received: a "
                                f"repository of {len(found)} models {sorted(found)}")
        return {name: next(iter(found.values()))}
    return found


@dataclass
class Served:
    """One opened artifact and how calls to it are serialised."""

    name: str
    artifact: Artifact
    lock: Any = field(default_factory=contextlib.nullcontext)

    def run(self, endpoint: str, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run ``endpoint``, holding the lock when the runtime is not thread-safe."""
        with self.lock:
            return self.artifact.run(endpoint, feeds)


@dataclass(frozen=True)
class ServedModel:
    """A model name of the server: an artifact and the endpoint the name runs."""

    name: str
    served: Served
    endpoint: EndpointInfo


def open_models(path: str | os.PathLike[str],
                name: str | None = None) -> tuple[dict[str, Served], dict[str, ServedModel]]:
    """Open every artifact under ``path``; ``(artifacts by name, models by name)``."""
    artifacts: dict[str, Served] = {}
    models: dict[str, ServedModel] = {}
    for stem, where in _models_in(path, name).items():
        artifact = runtime.load(where)
        lock = contextlib.nullcontext() if artifact.thread_safe else threading.Lock()
        served = Served(stem, artifact, lock)
        artifacts[stem] = served
        models[stem] = ServedModel(stem, served, artifact.endpoints[artifact.default_endpoint])
        if len(artifact.endpoints) > 1:
            for endpoint, info in artifact.endpoints.items():
                models.setdefault(f"{stem}.{endpoint}", ServedModel(f"{stem}.{endpoint}",
                                                                    served, info))
    return artifacts, models

"""One runtime API for every artifact kexport writes: :func:`load`.

Each format has one loader module here (``saved_model.py``, ``onnx.py``, ...)
exposing ``detect(path) -> bool`` (cheap: file names and magic bytes, no
heavy imports), ``PRECISIONS`` (the compute precisions its runtime can be
pinned to, ``float32`` first) and ``open(path, given, precision) -> Artifact``,
which pins its runtime to ``precision`` in one place. The modules are registered in
:mod:`kexport.registry` (``RUNTIMES``), so adding a format's runtime is one
module plus one registry row; :func:`load` never branches on format names.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from kexport.errors import ArtifactError, describe
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["Artifact", "EndpointInfo", "TensorInfo", "check_precision", "detect", "load",
           "runtime_module"]


def runtime_module(format: str) -> ModuleType:
    """The loader module of ``format`` (imported on demand)."""
    from kexport import registry

    return importlib.import_module(registry.runtime_for(format))


def detect(path: str | os.PathLike[str]) -> str:
    """The format of the artifact at ``path``.

    Raises:
        ArtifactError: when ``path`` does not exist or is no known artifact.
    """
    from kexport import registry

    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ArtifactError(
            f"Expected `path` to be a non-empty str or pathlib.Path. Received: {describe(path)}"
        )
    p = Path(os.fspath(path))
    if not p.exists():
        raise ArtifactError(
            f"Expected an artifact at '{os.fspath(path)}'. Received a path that does not exist."
        )
    for format in registry.runtime_formats():
        try:
            module = runtime_module(format)
        except ImportError:
            continue
        if module.detect(p):
            return format
    kinds = ", ".join(registry.runtime_formats())
    raise ArtifactError(
        f"Expected a kexport artifact (one of: {kinds}). Received: '{os.fspath(path)}', "
        "which none of the runtimes recognises."
    )


def load(path: str | os.PathLike[str], format: str | None = None, *,
         precision: str | None = None) -> Artifact:
    """Open the artifact at ``path`` with its own runtime.

    Args:
        path: a SavedModel folder, an ``.onnx`` file, an ONNX archive folder,
            or any other artifact a registered runtime recognises.
        format: skip detection and open as this format.
        precision: the precision the runtime computes in: ``"f32"`` (the
            default, whatever the CPU), ``"bf16"`` or ``"f16"`` where the
            format's runtime offers it (OpenVINO). The precision
            actually used is ``artifact.precision``.

    Returns:
        An :class:`Artifact`: ``.format``, ``.endpoints``, ``.metadata``;
        call it to run the default endpoint, or ``.run(endpoint, inputs)``.

    Example:

    ```python
    artifact = kexport.load("out/model.onnx")
    outputs = artifact.run("serve", {"features": x})
    ```

    Raises:
        ArtifactError: when ``path`` is missing or not an artifact.
        UnsupportedRouteError: when ``format`` is unknown.
        SignatureError: when ``precision`` is unknown or the format's runtime
            cannot compute in it.
    """
    if format is None:
        format = detect(path)
    wanted = check_precision(format, precision)
    return runtime_module(format).open(Path(os.fspath(path)), os.fspath(path), precision=wanted)


def check_precision(format: str, precision: str | None) -> str:
    """The canonical name of ``precision`` if the ``format`` runtime can compute in it.

    Raises:
        SignatureError: an unknown precision, or one the runtime lacks (the
            message names the runtimes that have it).
    """
    from kexport import _numerics, registry

    wanted = _numerics.normalize(precision)
    offered = runtime_module(format).PRECISIONS
    if wanted not in offered:
        elsewhere = []
        for other in registry.runtime_formats():
            try:
                if wanted in runtime_module(other).PRECISIONS:
                    elsewhere.append(other)
            except ImportError:
                continue
        _numerics.check_supported(wanted, offered, format, elsewhere)
    return wanted

"""One runtime API for every artifact kexport writes: :func:`load`.

Each format has one loader module here (``saved_model.py``, ``onnx.py``, ...)
exposing ``detect(path) -> bool`` (cheap: file names and magic bytes, no
heavy imports), ``PRECISIONS`` (the compute precisions its runtime can be
pinned to, ``float32`` first) and ``open(path, given, precision) -> Artifact``,
which pins its runtime to ``precision`` in one place. The modules are registered in
the table :data:`RUNTIMES` below (detection order), so adding a format's
runtime is one module plus one row there; :func:`load` never branches on
format names.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from kexport import _numerics
from kexport.errors import ArtifactError, UnknownFormatError, describe
from kexport.runtime import litert, onnx, openvino, saved_model, torch_program
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["RUNTIMES", "Artifact", "EndpointInfo", "TensorInfo", "check_precision", "detect",
           "load", "runtime_formats", "runtime_module"]

#: format -> its loader module; :func:`detect` asks them in this order.
RUNTIMES: dict[str, ModuleType] = {
    "tf_saved_model": saved_model,
    "onnx": onnx,
    "litert": litert,
    "openvino": openvino,
    "torch": torch_program,
}


def runtime_formats() -> list[str]:
    """Formats that :func:`load` can open, in detection order."""
    return list(RUNTIMES)


def runtime_module(format: str) -> ModuleType:
    """The loader module of ``format``.

    Raises:
        UnknownFormatError: when no runtime is registered for ``format``.
    """
    if format not in RUNTIMES:
        raise UnknownFormatError(
            f"Expected a format with a runtime, one of {list(RUNTIMES)}. "
            f"Received: format={format!r}"
        )
    return RUNTIMES[format]


def detect(path: str | os.PathLike[str]) -> str:
    """The format of the artifact at ``path``.

    Raises:
        ArtifactError: when ``path`` does not exist or is no known artifact.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ArtifactError(
            f"Expected `path` to be a non-empty str or pathlib.Path. Received: {describe(path)}"
        )
    p = Path(os.fspath(path))
    if not p.exists():
        raise ArtifactError(
            f"Expected an artifact at '{os.fspath(path)}'. Received a path that does not exist."
        )
    for format, module in RUNTIMES.items():
        if module.detect(p):
            return format
    kinds = ", ".join(RUNTIMES)
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
        UnknownFormatError: when ``format`` is unknown.
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
    wanted = _numerics.normalize(precision)
    offered = runtime_module(format).PRECISIONS
    if wanted not in offered:
        elsewhere = [other for other, module in RUNTIMES.items() if wanted in module.PRECISIONS]
        _numerics.check_supported(wanted, offered, format, elsewhere)
    return wanted

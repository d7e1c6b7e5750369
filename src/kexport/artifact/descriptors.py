"""Format descriptors: what an artifact of each format is, on disk.

One :class:`FormatDescriptor` per format says what its files look like
(suffix, sidecar files), which packages its runtime needs, how to recognise
an artifact kexport wrote, and which tolerance a comparison with the live
model uses when the format declares one. How an artifact is *made* (the
routes and writers) lives in :mod:`kexport.routing`.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexport.artifact.metadata import (
    TORCH_PROGRAM_SUFFIX,
    is_litert_artifact,
    is_onnx_artifact,
    is_openvino_artifact,
    is_torch_program_artifact,
)
from kexport.errors import UnknownFormatError

__all__ = ["BACKENDS", "FORMATS", "LITERT_QUANTIZATIONS", "FormatDescriptor", "artifact_files",
           "format_info", "missing_packages"]

#: The Keras backends kexport exports from.
BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")

#: The LiteRT quantization modes (``None``: float32). A quantized artifact is
#: judged by its mode's thresholds in ``kexport.check.tolerance.QUANTIZED``
#: (SQNR, cosine, top-k), like every format's.
LITERT_QUANTIZATIONS: tuple[str | None, ...] = (None, "float16", "dynamic_int8", "int8")


@dataclass(frozen=True)
class FormatDescriptor:
    """One artifact format, as files on disk.

    Attributes:
        name: the ``format=`` value.
        description: one line for tables and help.
        suffix: the usual file suffix, ``""`` for folder formats.
        packages: importable modules the format's runtime needs.
        extra: the pip extra that installs them.
        sidecars: files that belong to a single-file artifact, as patterns
            over its file name (``{name}``) and stem (``{stem}``), e.g. ONNX
            external data ``{name}.data`` or OpenVINO weights ``{stem}.bin``.
        recognizer: tells whether a path holds an artifact of this format
            that kexport wrote (see :func:`kexport.artifact.is_kexport_artifact`);
            ``None`` when the generic manifest check suffices. Reads only and
            never raises.
        tolerance: ``(metadata) -> (atol, rtol) | None``, the tolerance the
            format declares for one of its artifacts (``None``: verify's
            precision defaults apply).
        quantizations: the ``quantization=`` modes the format writes (names
            from :data:`kexport.artifact.quantization.MODES`); empty: none.
        exclude_modes: the modes in which the format keeps the layers of
            ``quantization_exclude=`` in float (see
            :mod:`kexport.artifact.exclusion`); empty: it cannot.
    """

    name: str
    description: str
    suffix: str
    packages: tuple[str, ...]
    extra: str
    sidecars: tuple[str, ...] = ()
    recognizer: Callable[[Path], bool] | None = None
    tolerance: Callable[[Mapping[str, Any]], tuple[float, float] | None] | None = None
    quantizations: tuple[str, ...] = ()
    exclude_modes: tuple[str, ...] = ()


FORMATS: dict[str, FormatDescriptor] = {
    "tf_saved_model": FormatDescriptor(
        "tf_saved_model", "TensorFlow SavedModel (TF-Serving, TF runtimes)", "",
        ("tensorflow",), "tensorflow"),
    "litert": FormatDescriptor(
        "litert", "LiteRT / TensorFlow Lite flatbuffer with named signatures", ".tflite",
        ("tensorflow",), "tensorflow", recognizer=is_litert_artifact,
        quantizations=("float16", "dynamic_int8", "int8")),
    "torch": FormatDescriptor(
        "torch", "PyTorch ExportedProgram (torch.export .pt2)", TORCH_PROGRAM_SUFFIX,
        ("torch",), "torch", recognizer=is_torch_program_artifact),
    "openvino": FormatDescriptor(
        "openvino", "OpenVINO IR (.xml graph + .bin weights)", ".xml",
        ("openvino",), "openvino", sidecars=("{stem}.bin",), recognizer=is_openvino_artifact,
        quantizations=("float16", "dynamic_int8", "int8"),
        # NNCF's IgnoredScope; save_model(compress_to_fp16=True) compresses every weight
        exclude_modes=("dynamic_int8", "int8")),
    "onnx": FormatDescriptor(
        "onnx", "ONNX graph (ONNX Runtime, Triton)", ".onnx",
        ("onnx", "onnxruntime"), "onnx", sidecars=("{name}.data",),
        recognizer=is_onnx_artifact, quantizations=("float16", "dynamic_int8", "int8"),
        exclude_modes=("float16", "dynamic_int8", "int8")),
}


def artifact_files(path: str | os.PathLike[str], format: str | None = None) -> list[Path]:
    """Every file that makes up the artifact at ``path``.

    A folder artifact is every file below it; a single-file artifact is the
    file plus its format's sidecars (``FormatDescriptor.sidecars``) that exist.
    """
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if not p.is_file():
        return []
    files = [p]
    info = FORMATS.get(format or "")
    for pattern in info.sidecars if info else ():
        sidecar = p.with_name(pattern.format(name=p.name, stem=p.stem))
        if sidecar.is_file():
            files.append(sidecar)
    return files


def format_info(format: str) -> FormatDescriptor:
    """The :class:`FormatDescriptor` named ``format``.

    Raises:
        UnknownFormatError: for unknown names, with a did-you-mean (an
            ``UnsupportedRouteError`` and a ``ValueError``).
    """
    if not isinstance(format, str) or format not in FORMATS:
        names = sorted(FORMATS)
        hint = difflib.get_close_matches(str(format), names, n=1)
        more = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownFormatError(
            f"Expected `format` to be one of {names}. Received: "
            f"format={format!r}.{more}"
        )
    return FORMATS[format]


def missing_packages(packages: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``packages`` that cannot be imported here (nothing is imported)."""
    return tuple(p for p in packages if importlib.util.find_spec(p) is None)

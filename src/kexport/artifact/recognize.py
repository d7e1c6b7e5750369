"""Whether a path holds an artifact that kexport wrote.

Used before replacing a path (``kexport._atomic.check_target``): a kexport
artifact may be overwritten, other data only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kexport.artifact.descriptors import FORMATS, artifact_files
from kexport.artifact.manifest import MANIFESTS, read_manifest
from kexport.errors import KexportError

__all__ = ["has_manifest", "is_kexport_artifact", "register_artifact_check"]

_CHECKS: list[Callable[[Path], bool]] = []


def has_manifest(path: Path) -> bool:
    """A folder holding a valid kexport manifest (any of :data:`MANIFESTS`)."""
    if not path.is_dir():
        return False
    for name in MANIFESTS:
        candidate = path / name
        if candidate.is_file():
            try:
                read_manifest(candidate)
            except KexportError:
                continue
            return True
    return False


def _recognized(path: Path, format: str) -> bool:
    recognizer = FORMATS[format].recognizer
    return recognizer is not None and recognizer(path)


def _sidecar_of_artifact(path: Path) -> bool:
    """A sidecar file (``FormatDescriptor.sidecars``, e.g. ``name.onnx.data``) of a
    kexport artifact."""
    return any(path in artifact_files(main, fmt)[1:]
               for fmt, info in FORMATS.items() if info.suffix
               for main in path.parent.glob(f"*{info.suffix}")
               if main != path and _recognized(main, fmt))


def _format_checks() -> list[Callable[[Path], bool]]:
    return [info.recognizer for info in FORMATS.values() if info.recognizer is not None]


def register_artifact_check(check: Callable[[Path], bool]) -> None:
    """Add a recogniser for a kind of kexport artifact.

    For artifacts that are neither a folder with a kexport manifest nor
    recognised by a format's ``FormatDescriptor.recognizer``.

    Args:
        check: returns ``True`` when the path is an artifact kexport wrote;
            it must not raise and must only read the path.
    """
    if check not in _CHECKS:
        _CHECKS.append(check)


def is_kexport_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds an artifact that kexport wrote.

    Recognised: a folder holding a valid kexport manifest
    (``assets.extra/kexport.json`` in a SavedModel, ``kexport.json`` or
    ``manifest.json``); whatever a format's descriptor recognises (e.g. an
    ONNX file whose ``producer_name`` is ``kexport``, a ``.tflite`` file with
    kexport metadata); a sidecar of such a file (``name.onnx.data``); and
    whatever :func:`register_artifact_check` added.
    """
    p = Path(os.fspath(path))
    if not (p.exists() or p.is_symlink()):
        return False
    for check in [has_manifest, *_format_checks(), _sidecar_of_artifact, *_CHECKS]:
        try:
            if check(p):
                return True
        except Exception:  # a broken recogniser is a "no"
            continue
    return False

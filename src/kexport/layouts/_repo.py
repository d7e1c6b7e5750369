"""What every serving layout shares: model names, version folders, placement.

A *layout* is a folder tree a serving system loads as it is: a model folder
``<repo>/<name>/`` holding numbered version folders ``<name>/<VERSION>/``
(TF-Serving, Triton, KServe's runtimes all scan version folders this way).
A version folder is written once, atomically (``kexport._atomic``), and never
replaced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from kexport.artifact import FORMATS
from kexport.errors import LayoutError, describe

__all__ = ["Layout", "check_name", "check_version", "default_name", "existing_versions",
           "next_free_version", "version_exists_message"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Layout(NamedTuple):
    """One model version in a layout (what :func:`kexport.layouts.read_layout` returns).

    Attributes:
        name: the model's name (its folder name).
        version: the version number (its version folder's name).
        artifact_path: the artifact inside the version folder (the version
            folder itself for a TF-Serving SavedModel, ``model.onnx``,
            ``model.savedmodel``, ``model.xml`` for Triton).
        format: the artifact's format (``"tf_saved_model"``, ``"onnx"``, ...).
    """

    name: str
    version: int
    artifact_path: str
    format: str


def check_name(name: Any) -> str:
    """A model name usable as one folder name and in a URL path.

    Raises:
        LayoutError: a name that is not a str, or holds characters other
            than letters, digits, ``_``, ``.`` and ``-`` (or starts with ``.``,
            ``_`` or ``-``).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise LayoutError(
            "Expected `name` to be a model name of letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit. Received: {describe(name)}"
        )
    return name


def default_name(artifact_path: Path) -> str:
    """The artifact's name without its format's suffix, made a valid model name."""
    stem = artifact_path.name
    suffix = artifact_path.suffix
    if suffix and (not artifact_path.is_dir() or suffix in {f.suffix for f in FORMATS.values()}):
        stem = artifact_path.stem
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")
    return cleaned or "model"


def check_version(version: Any) -> int | None:
    """``None`` (the next free number) or a positive int.

    Raises:
        LayoutError: anything else (bools too).
    """
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LayoutError(
            f"Expected `version` to be a positive int or None (the next free number). "
            f"Received: {describe(version)}"
        )
    return version


def existing_versions(model_dir: Path) -> list[int]:
    """The version numbers present in ``model_dir`` (numeric entries), sorted."""
    if not model_dir.is_dir():
        return []
    found = []
    for entry in model_dir.iterdir():
        if entry.name.isdigit() and int(entry.name) > 0:
            found.append(int(entry.name))
    return sorted(found)


def next_free_version(model_dirs: Iterable[Path]) -> int:
    """One more than the highest version in any of ``model_dirs`` (1 when none)."""
    return max((v for d in model_dirs for v in existing_versions(d)), default=0) + 1


def version_exists_message(model_dir: Path, version: int, next_free: int) -> str:
    """The error text for an explicit version that is already there."""
    return (
        f"Expected a version that does not exist yet: versions are never overwritten. "
        f"Received: version={version}, but '{os.fspath(model_dir / str(version))}' exists. "
        f"Nothing was written. Next step: pass version={next_free} (the next free "
        "version) or version=None."
    )

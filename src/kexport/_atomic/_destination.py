"""Where an artifact may go: the target's checks (other data, overwrite) and its folders.

Checked once at the boundary (:func:`check_destination`) and again at the swap
(:func:`check_target`, under the folder's lock); missing folders are found here
and made by :mod:`kexport._atomic`, which removes them again if the write fails.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from kexport.artifact import is_kexport_artifact
from kexport.errors import (
    SignatureError,
    SignatureTypeError,
    TargetExistsError,
    WriteError,
    describe,
)

__all__ = ["check_destination", "check_filepath", "check_parent", "check_target"]


def check_filepath(filepath: Any) -> None:
    """Refuse a ``filepath`` that is not a non-empty ``str`` or ``os.PathLike``: the one
    check of that argument, where a user's call enters (``export_model``,
    ``ExportArchive.write_out``, ``rehost_export``); the layers below assert it."""
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
        raise (SignatureError if isinstance(filepath, (str, os.PathLike))
               else SignatureTypeError)(
            f"Expected `filepath` to be a non-empty str or pathlib.Path. "
            f"Received: {describe(filepath)}"
        )


def check_target(filepath: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse to replace something that is not a kexport artifact.

    Nothing at ``filepath``, an empty folder or file, or a kexport artifact
    may be replaced; anything else only with ``overwrite=True``.

    Raises:
        TargetExistsError: when ``filepath`` holds other data and
            ``overwrite`` is false.
    """
    p = Path(os.fspath(filepath))
    if overwrite or not (p.exists() or p.is_symlink()):
        return
    try:
        if p.is_dir() and not any(p.iterdir()):
            return
        if p.is_file() and p.stat().st_size == 0:
            return
    except OSError:
        pass
    if is_kexport_artifact(p):
        return
    kind = "a folder of other files" if p.is_dir() else "a file that is not a kexport artifact"
    raise TargetExistsError(
        f"Expected `filepath` to be a new path, an empty folder or an existing kexport "
        f"artifact. Received: filepath='{os.fspath(filepath)}', which is {kind}. "
        "Nothing was written. Next step: choose another path, or pass overwrite=True "
        "to replace it."
    )


def _not_a_folder(filepath: str | os.PathLike[str], folder: Path) -> WriteError:
    kind = "a broken symbolic link" if folder.is_symlink() and not folder.exists() else "a file"
    return WriteError(
        f"Expected every path component above the artifact to be a folder. Received: "
        f"filepath='{os.fspath(filepath)}' where '{os.fspath(folder)}' is {kind}, "
        "not a folder. Nothing was written."
    )


def _missing_parents(filepath: str | os.PathLike[str]) -> tuple[Path, Path, list[Path]]:
    """``(target, parent folder, missing folders, outermost first)``; creates nothing.

    Raises:
        WriteError: when ``filepath`` names no file or folder, a path
            component above it is a file, or the folder that holds (or will
            hold) the artifact is not writable.
    """
    target = Path(os.fspath(filepath))
    parent = target.parent if str(target.parent) else Path(".")
    if not target.name or target.name in (".", ".."):
        raise WriteError(f"Expected `filepath` to name a file or folder. Received: "
                         f"filepath='{os.fspath(filepath)}'")
    missing: list[Path] = []
    folder = parent
    while True:
        try:
            if folder.is_dir():
                break
        except OSError as e:  # e.g. a folder above that cannot be searched
            raise WriteError(
                f"Expected a writable folder for the artifact. Received: "
                f"filepath='{os.fspath(filepath)}' whose folder '{os.fspath(folder)}' "
                f"cannot be read: {e}"
            ) from e
        if os.path.lexists(folder):
            if folder.is_dir():  # a concurrent write made it since the check above
                break
            raise _not_a_folder(filepath, folder)
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        where = (f" ('{os.fspath(folder)}', where its missing folders would be created)"
                 if missing else "")
        raise WriteError(
            f"Expected a writable folder for the artifact. Received: "
            f"filepath='{os.fspath(filepath)}' in a folder that is not writable{where}."
        )
    missing.reverse()
    return target, parent, missing


def check_parent(filepath: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a ``filepath`` whose folder cannot be made or written.

    Missing folders are fine (:func:`atomic_target` creates them). Creates
    nothing itself.

    Raises:
        WriteError: when ``filepath`` names no file or folder, a path
            component above it is a file, or the folder that holds it (or,
            when missing, the nearest existing folder above) is not writable.
    """
    _missing_parents(filepath)


def _remove_created(created: list[Path]) -> None:
    """Remove folders this write created, innermost first, where still empty.

    ``os.rmdir`` refuses a folder that is not empty, so a folder another
    write is using (its temporary is inside) is never removed.
    """
    for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def check_destination(filepath: str | os.PathLike[str], overwrite: Any) -> None:
    """Refuse a bad ``overwrite`` value and, early, targets holding other data or a
    folder that cannot hold them (missing folders are created at the write).
    ``filepath`` was checked by :func:`check_filepath` where the call entered."""
    assert isinstance(filepath, (str, os.PathLike)) and os.fspath(filepath), filepath
    if not isinstance(overwrite, bool):
        raise SignatureTypeError(
            f"Expected `overwrite` to be True or False. Received: {describe(overwrite)}"
        )
    check_target(filepath, overwrite=overwrite)
    check_parent(filepath)

"""Atomic artifact writes: build beside the target, then swap into place.

Every writer builds its artifact in a private temporary folder next to the
target (same filesystem, so renames are atomic), and only on success moves it
to the target path. An earlier artifact at the target is renamed aside first
and deleted only after the new one is in place; a crash between the two
renames leaves the previous artifact recoverable, and :func:`recover` (called
at the start of every export) puts it back and removes stale temporaries.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from kexport.errors import WriteError

__all__ = ["atomic_target", "recover"]

_TMP = ".kexport-tmp-"
_OLD = ".kexport-old-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(target: Path) -> None:
    """Undo what an interrupted export left beside ``target``.

    Restores a previous artifact that was renamed aside when the target is
    missing, and deletes stale temporary builds for this target.
    """
    parent = target.parent
    if not parent.is_dir():
        return
    prefix_tmp = f".{target.name}{_TMP}"
    prefix_old = f".{target.name}{_OLD}"
    olds = []
    for entry in parent.iterdir():
        if entry.name.startswith(prefix_tmp):
            _remove(entry)
        elif entry.name.startswith(prefix_old):
            olds.append(entry)
    for old in olds:
        if not target.exists() and not target.is_symlink():
            with contextlib.suppress(OSError):
                os.replace(old, target)
                continue
        _remove(old)


@contextlib.contextmanager
def atomic_target(filepath: str | os.PathLike[str], *, is_dir: bool) -> Iterator[Path]:
    """Yield a temporary path to write into; move it to ``filepath`` on success.

    Args:
        filepath: where the artifact must end up.
        is_dir: whether the artifact is a folder (else a single file).

    Raises:
        WriteError: when the parent folder does not exist or is not writable,
            or the final move fails. The target is then left as it was.
    """
    target = Path(os.fspath(filepath))
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise WriteError(
            f"Expected the folder that will hold the artifact to exist. "
            f"Received: filepath='{filepath}' whose parent folder does not exist."
        )
    if not os.access(parent, os.W_OK):
        raise WriteError(
            f"Expected a writable folder for the artifact. Received: "
            f"filepath='{filepath}' in a folder that is not writable."
        )
    recover(target)
    token = uuid.uuid4().hex[:12]
    tmp = parent / f".{target.name}{_TMP}{token}"
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise WriteError(f"The writer produced nothing for '{filepath}'.")
        old = parent / f".{target.name}{_OLD}{token}"
        had_old = target.exists() or target.is_symlink()
        try:
            if had_old:
                os.replace(target, old)
            os.replace(tmp, target)
        except OSError as e:
            if had_old and not target.exists():
                with contextlib.suppress(OSError):
                    os.replace(old, target)
            raise WriteError(f"Could not move the new artifact into place: {e}") from e
        if had_old:
            _remove(old)
    finally:
        _remove(tmp)

"""Writing a version folder atomically, never over an existing one."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from kexport._atomic import atomic_target
from kexport.errors import ArtifactError, TargetExistsError
from kexport.layouts._repo import next_free_version, version_exists_message

__all__ = ["choose_version", "copy_file", "new_version", "place_file"]


def choose_version(model_dirs: Sequence[Path], version: int | None) -> int:
    """``version``, or the next free number over ``model_dirs`` when ``None``.

    Raises:
        TargetExistsError: when ``version`` exists in one of ``model_dirs``;
            the message names the next free version.
    """
    free = next_free_version(model_dirs)
    if version is None:
        return free
    for model_dir in model_dirs:
        if os.path.lexists(model_dir / str(version)):
            raise TargetExistsError(version_exists_message(model_dir, version, free))
    return version


@contextlib.contextmanager
def new_version(model_dir: Path, version: int, model_dirs: Sequence[Path]) -> Iterator[Path]:
    """A temporary folder that becomes ``model_dir/version`` on success.

    Built beside its final name and moved in by ``kexport._atomic`` with
    ``exclusive=True``: a version a concurrent writer placed first is never
    replaced (:class:`TargetExistsError` naming the next free version).
    """
    target = model_dir / str(version)
    try:
        with atomic_target(target, is_dir=True, overwrite=False, exclusive=True) as tmp:
            yield tmp
    except TargetExistsError as e:
        if not os.path.lexists(target):
            raise
        raise TargetExistsError(
            version_exists_message(model_dir, version, next_free_version(model_dirs))) from e


def copy_file(src: Path, dst: Path) -> None:
    """Copy one file of an artifact into a layout being built.

    Raises:
        ArtifactError: when ``src`` is missing (an incomplete artifact).
    """
    if not src.is_file():
        raise ArtifactError(f"Expected the artifact file '{src.name}'. Received: it is "
                            "missing beside the artifact.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def place_file(target: Path, text: str) -> bool:
    """Write ``text`` to ``target`` atomically unless the same text is there.

    Returns:
        ``True`` when written, ``False`` when ``target`` already held ``text``.

    Raises:
        TargetExistsError: when ``target`` holds other text (it is kept).
    """
    for _ in range(3):
        if target.is_file():
            if target.read_text() == text:
                return False
            raise TargetExistsError(
                f"Expected '{os.fspath(target)}' to be missing or to hold the same text. "
                "Received: a different file, which is kept.")
        try:
            with atomic_target(target, is_dir=False, overwrite=False, exclusive=True) as tmp:
                tmp.write_text(text)
            return True
        except TargetExistsError:
            if not target.is_file():
                raise
    raise TargetExistsError(f"'{os.fspath(target)}' kept changing while it was written.")

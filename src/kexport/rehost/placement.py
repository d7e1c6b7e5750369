"""Placing a verified artifact: the last step of a re-host, and the only one that
touches the target path.

The child wrote the artifact (and any sibling files its format writes next to
it) into the job's private folder; once the parent's check passed,
:func:`place` moves it to ``filepath`` atomically
(:func:`kexport._atomic.atomic_target`: an earlier artifact there is kept on
any failure). Nothing is rewritten on the way: the artifact is placed as the
child wrote it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kexport._atomic import atomic_target

__all__ = ["place"]


def _copy(src: Path, target: str | os.PathLike[str], overwrite: bool) -> None:
    with atomic_target(target, is_dir=src.is_dir(), overwrite=overwrite) as tmp:
        if src.is_dir():
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, tmp)


def place(src: Path, filepath: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Move the verified artifact ``src`` (and siblings it wrote) to ``filepath`` atomically
    (``overwrite``: replace data that is not a kexport artifact, as the export was told)."""
    target = Path(os.fspath(filepath))
    _copy(src, filepath, overwrite)
    for sibling in sorted(src.parent.iterdir()):
        if sibling.name != src.name:
            _copy(sibling, target.parent / sibling.name, overwrite)

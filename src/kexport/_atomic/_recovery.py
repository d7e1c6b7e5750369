"""Stale temporaries of interrupted writes: their names, which writes are alive, recovery.

A write's temporaries carry its process id and a token (:data:`_TMP`, :data:`_OLD`);
:func:`recover` removes those whose writer is gone and puts a previous artifact
renamed aside back when the new one never arrived (see :mod:`kexport._atomic`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["recover"]

_TMP = ".kexport-tmp-"
_OLD = ".kexport-old-"
# Tokens of writes in progress in this process: the process's own bookkeeping of
# its open writes (what other processes learn from the process id in the names).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()
_SWAP_LOCK = threading.Lock()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _owner(entry: str, prefix: str) -> tuple[int, str] | None:
    rest = entry[len(prefix):]
    pid, _, token = rest.partition("-")
    if not pid.isdigit():
        return None
    return int(pid), token[:12]


def _alive(pid: int, token: str) -> bool:
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return token in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """Serialise swaps in ``parent`` across threads and processes."""
    with _SWAP_LOCK:
        fd = None
        try:
            fd = os.open(parent, os.O_RDONLY)
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (OSError, ImportError):
            pass  # no flock here (Windows, some network filesystems)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock


def _recover_locked(target: Path) -> None:
    parent = target.parent
    prefix_tmp = f".{target.name}{_TMP}"
    prefix_old = f".{target.name}{_OLD}"
    olds = []
    for entry in parent.iterdir():
        for prefix in (prefix_tmp, prefix_old):
            if not entry.name.startswith(prefix):
                continue
            owner = _owner(entry.name, prefix)
            if owner is not None and _alive(*owner):
                continue
            if prefix == prefix_tmp:
                _remove(entry)
            else:
                olds.append(entry)
    for old in sorted(olds, key=lambda p: p.stat().st_mtime if p.exists() else 0):
        if not (target.exists() or target.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(old, target)
                continue
        _remove(old)


def recover(target: str | os.PathLike[str]) -> None:
    """Undo what an interrupted export left beside ``target``.

    Restores a previous artifact that was renamed aside when the target is
    missing, and deletes temporary builds for this target whose writer
    process is gone. Writes still in progress are left alone.
    """
    target = Path(os.fspath(target))
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return
    with _locked(parent):
        _recover_locked(target)

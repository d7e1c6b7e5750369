"""Atomic artifact writes: build beside the target, then swap into place.

Every writer builds its artifact in a private temporary path next to the
target (same filesystem, so renames are atomic) through :func:`atomic_target`,
and only on success moves it to the target path. The guarantees, which every
format inherits by writing through :func:`atomic_target`:

- **Never partial.** Readers of the target see either the complete previous
  artifact or the complete new one. On Linux an existing target is swapped
  with the new build in one ``renameat2(RENAME_EXCHANGE)`` call; elsewhere
  the previous artifact is renamed aside first and put back by
  :func:`recover` if the process dies between the two renames.
- **Leftovers are cleaned up.** Temporary names carry the writer's process id;
  :func:`recover` (run at the start of every write) removes those whose
  writer is gone, and never touches those of a live export.
- **No data loss by accident.** An existing target that is not a kexport
  artifact (see :func:`kexport.artifact.is_kexport_artifact`) is refused with
  :class:`~kexport.errors.TargetExistsError` unless ``overwrite=True``.
- **Missing folders are made, and unmade on failure.** Missing parent folders
  of the target are created (all levels, as Keras's own exporter does);
  if the write then fails, the folders this write created are removed again
  when still empty. A write's first entry in the folder (its temporary, or a
  ``-hold`` marker for a file) is made right after the folders, so a
  concurrent failed write never removes a folder another write is using.
- **Typed errors.** Any failure inside the ``with`` block becomes a
  :class:`~kexport.errors.WriteError` (``KexportError`` subclasses pass
  through) and leaves the target as it was.
- **Concurrent writers** (threads or processes) to the same folder serialise
  only their final swap (an ``flock`` on the parent folder); two exports to
  one path both succeed and the last swap wins, leaving one complete artifact.

Test hook (private): when the environment variable ``_KEXPORT_FAULT`` names
one of the points in :data:`FAULT_POINTS`, the process kills itself with
``SIGKILL`` there. The fault tests use it to prove the guarantees above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from kexport._atomic._destination import (
    _missing_parents,
    _not_a_folder,
    _remove_created,
    check_destination,
    check_filepath,
    check_parent,
    check_target,
)
from kexport._atomic._recovery import _ACTIVE, _ACTIVE_LOCK, _OLD, _TMP, _locked, _remove, recover
from kexport.errors import KexportError, TargetExistsError, WriteError

__all__ = [
    "FAULT_POINTS",
    "atomic_target",
    "check_destination",
    "check_filepath",
    "check_parent",
    "check_target",
    "recover",
    "staging_dir",
]

_HOLD = "-hold"
_FAULT_ENV = "_KEXPORT_FAULT"
#: Where the ``_KEXPORT_FAULT`` test hook can kill the process, in order:
#: ``created`` (empty temporary made), ``written`` (new artifact complete in
#: the temporary, before the swap), ``aside`` (fallback swap only: previous
#: artifact renamed aside, new one not yet in place), ``swapped`` (new artifact
#: in place, previous one not yet deleted).
FAULT_POINTS: tuple[str, ...] = ("created", "written", "aside", "swapped")



def _fault(point: str) -> None:
    """Test hook: die here (``SIGKILL``) when ``_KEXPORT_FAULT`` names ``point``."""
    if os.environ.get(_FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)






# -- stale temporaries -----------------------------------------------------------










# -- the swap ----------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap paths ``a`` and ``b``; ``False`` where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _swap_in(tmp: Path, target: Path, old: Path) -> None:
    """Move ``tmp`` to ``target``; afterwards ``tmp``/``old`` hold what to delete."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    if _exchange(tmp, target):
        return
    os.replace(target, old)
    _fault("aside")
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target.exists() or target.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise










def _writable_target(filepath: str | os.PathLike[str]) -> tuple[Path, Path, list[Path]]:
    """``(target, parent folder, folders created)``: the one place that checks the
    folder of an artifact and creates it (all missing levels) when missing.

    Semantics of ``mkdir(parents=True, exist_ok=True)``, except that only the
    folders this call made itself are returned: a folder a concurrent write
    made first is not this write's to remove.

    Raises:
        WriteError: as :func:`check_parent`, or when a folder cannot be
            created (those created before are removed again).
        FileNotFoundError: when a folder above vanished meanwhile (removed
            by a concurrent write that failed); :func:`_claim` tries again.
    """
    target, parent, missing = _missing_parents(filepath)
    created: list[Path] = []
    for folder in missing:
        try:
            os.mkdir(folder)
        except FileExistsError:
            if folder.is_dir():
                continue  # made by a concurrent write
            _remove_created(created)
            raise _not_a_folder(filepath, folder) from None
        except FileNotFoundError:  # a concurrent failed write removed a folder above:
            _remove_created(created)  # the caller (_claim) tries again
            raise
        except OSError as e:
            _remove_created(created)
            raise WriteError(
                f"Writing '{os.fspath(filepath)}' failed: could not create the folder "
                f"'{os.fspath(folder)}': {e}. Nothing was written."
            ) from e
        created.append(folder)
    return target, parent, created


#: How often a write makes its folders again when a concurrent failed write
#: removed them between their creation and the write's first entry.
_CLAIM_TRIES = 5


def _claim(filepath: str | os.PathLike[str], create: Callable[[], object]) -> list[Path]:
    """Make the folders of ``filepath``, then this write's first entry there (``create``).

    The entry keeps the folder non-empty, so a concurrent write that created
    the folder and then failed cannot remove it; should that write remove it
    between the two steps (or while the folders are made), the step fails
    with ``FileNotFoundError`` and the folders are made again.

    Returns:
        The folders this write created (remove with :func:`_remove_created`
        if the write fails).
    """
    created: list[Path] = []
    for attempt in range(_CLAIM_TRIES):
        try:
            created += _writable_target(filepath)[2]
            create()
            return created
        except FileNotFoundError:
            if attempt == _CLAIM_TRIES - 1:
                _remove_created(created)
                raise
        except BaseException:
            _remove_created(created)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _check_absent(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise TargetExistsError(
            f"Expected '{os.fspath(target)}' not to exist: it is never replaced. "
            "Received: an existing path. Nothing was written."
        )


@contextlib.contextmanager
def atomic_target(filepath: str | os.PathLike[str], *, is_dir: bool,
                  overwrite: bool, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write into; move it to ``filepath`` on success.

    Args:
        filepath: where the artifact must end up.
        is_dir: whether the artifact is a folder (else a single file).
        overwrite: replace ``filepath`` even when it holds data that is not a
            kexport artifact: an export passes its context's
            (:attr:`kexport.context.ExportContext.overwrite`); ``True`` for
            kexport's own rewrites of files inside an artifact.
        exclusive: never replace anything: the move fails when ``filepath``
            exists at the moment of the swap (checked under the folder's
            lock, so of two concurrent exclusive writes one fails), e.g. a
            version folder of a serving layout.

    Raises:
        TargetExistsError: when ``filepath`` holds other data (see
            :func:`check_target`), or anything at all when ``exclusive``.
        WriteError: when a path component above ``filepath`` is a file, the
            folder is not writable, the writer fails, or the final move
            fails. The target is then left as it was, and the missing
            folders this write created are removed again.
    """
    target, parent, _ = _missing_parents(filepath)
    check_target(target, overwrite=overwrite)
    if exclusive:
        _check_absent(target)
    token = uuid.uuid4().hex[:12]
    with _ACTIVE_LOCK:
        _ACTIVE.add(token)
    stem = f"{os.getpid()}-{token}"
    tmp = parent / f".{target.name}{_TMP}{stem}{'' if is_dir else target.suffix}"
    old = parent / f".{target.name}{_OLD}{stem}"
    # A file's temporary is made by the writer; until then this marker holds the folder.
    hold = None if is_dir else parent / f".{target.name}{_TMP}{stem}{_HOLD}"
    created: list[Path] = []
    done = False
    try:
        try:
            created = _claim(filepath, tmp.mkdir if hold is None else hold.touch)
            recover(target)
            _fault("created")
            yield tmp
            if not (tmp.exists() or tmp.is_symlink()):
                raise WriteError(f"The writer produced nothing for '{os.fspath(filepath)}'.")
            _fault("written")
            with _locked(parent):
                check_target(target, overwrite=overwrite)
                if exclusive:
                    _check_absent(target)
                _swap_in(tmp, target, old)
            done = True
            _fault("swapped")
        except KexportError:
            raise
        except OSError as e:
            raise WriteError(
                f"Writing '{os.fspath(filepath)}' failed: {e}. The target was left as it was."
            ) from e
        except Exception as e:  # every write failure becomes a typed error
            raise WriteError(
                f"Writing '{os.fspath(filepath)}' failed: {type(e).__name__}: {e}. "
                "The target was left as it was."
            ) from e
    finally:
        _remove(tmp)
        if hold is not None:
            _remove(hold)
        if target.exists() or target.is_symlink():
            _remove(old)  # else recover() puts the previous artifact back
        if not done:
            _remove_created(created)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(token)


@contextlib.contextmanager
def staging_dir(filepath: str | os.PathLike[str]) -> Iterator[Path]:
    """A private, empty folder beside ``filepath`` for files that must be
    checked together before any of them is placed (e.g. a graph and its
    external data, whose reader resolves one from the other's folder).

    Removed on exit; if the process dies first, :func:`recover` removes it
    with the other temporaries of ``filepath``. Move finished files out with
    :func:`atomic_target` (same filesystem, so a rename).

    Raises:
        WriteError: when a path component above the target is a file, the
            target's folder is not writable, or the staging folder cannot be
            created. Missing folders are created (see :func:`atomic_target`)
            and removed again if the ``with`` block fails.
    """
    target, parent, _ = _missing_parents(filepath)
    token = uuid.uuid4().hex[:12]
    with _ACTIVE_LOCK:
        _ACTIVE.add(token)
    stage = parent / f".{target.name}{_TMP}{os.getpid()}-{token}-stage"
    created: list[Path] = []
    done = False
    try:
        try:
            created = _claim(filepath, stage.mkdir)
        except OSError as e:
            raise WriteError(f"Writing '{os.fspath(filepath)}' failed: {e}. "
                             "The target was left as it was.") from e
        yield stage
        done = True
    finally:
        _remove(stage)
        if not done:
            _remove_created(created)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(token)



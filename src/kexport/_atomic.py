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
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kexport.artifact import is_kexport_artifact
from kexport.errors import (
    KexportError,
    SignatureError,
    SignatureTypeError,
    TargetExistsError,
    WriteError,
    describe,
)

__all__ = [
    "FAULT_POINTS",
    "atomic_target",
    "check_destination",
    "check_parent",
    "check_target",
    "recover",
    "staging_dir",
]

_TMP = ".kexport-tmp-"
_OLD = ".kexport-old-"
_HOLD = "-hold"
_FAULT_ENV = "_KEXPORT_FAULT"
#: Where the ``_KEXPORT_FAULT`` test hook can kill the process, in order:
#: ``created`` (empty temporary made), ``written`` (new artifact complete in
#: the temporary, before the swap), ``aside`` (fallback swap only: previous
#: artifact renamed aside, new one not yet in place), ``swapped`` (new artifact
#: in place, previous one not yet deleted).
FAULT_POINTS: tuple[str, ...] = ("created", "written", "aside", "swapped")

_ACTIVE: set[str] = set()  # tokens of writes in progress in this process
_ACTIVE_LOCK = threading.Lock()
_SWAP_LOCK = threading.Lock()


def _fault(point: str) -> None:
    """Test hook: die here (``SIGKILL``) when ``_KEXPORT_FAULT`` names ``point``."""
    if os.environ.get(_FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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


# -- stale temporaries -----------------------------------------------------------
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


def check_destination(filepath: str | os.PathLike[str], overwrite: Any) -> None:
    """Refuse bad ``filepath``/``overwrite`` values and, early, targets holding other data
    or a folder that cannot hold them (missing folders are created at the write)."""
    if not isinstance(filepath, (str, os.PathLike)) or not os.fspath(filepath):
        raise (SignatureError if isinstance(filepath, (str, os.PathLike))
               else SignatureTypeError)(
            f"Expected `filepath` to be a non-empty str or pathlib.Path. "
            f"Received: {describe(filepath)}"
        )
    if not isinstance(overwrite, bool):
        raise SignatureTypeError(
            f"Expected `overwrite` to be True or False. Received: {describe(overwrite)}"
        )
    check_target(filepath, overwrite=overwrite)
    check_parent(filepath)

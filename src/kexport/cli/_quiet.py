"""The command line's quiet default: kexport's own output and nothing else.

Without ``-v`` the verbs would otherwise print the frameworks' start-up lines
and warnings before their own output. Where each comes from decides how it is
silenced:

* C++ logs. TensorFlow 2.21 prints absl's ``WARNING: All log messages before
  absl::InitializeLog() is called ...`` and ``oneDNN custom operations are
  on ...`` while its shared libraries load (twice: two libraries carry the
  code), whatever ``TF_CPP_MIN_LOG_LEVEL`` says; LiteRT prints ``INFO: Created
  TensorFlow Lite XNNPACK delegate`` when an interpreter is made; GPU builds
  add cuda/cuDNN/TensorRT lines. No setting reaches these, so file descriptor
  2 points at :data:`os.devnull` while a verb runs, and Python's
  :data:`sys.stderr` (progress, errors, tracebacks) keeps the terminal.
  ``TF_CPP_MIN_LOG_LEVEL=3`` is still set (unless the user set it) so that
  child processes, which inherit the environment, log less into the pipes
  kexport reads their replies and crash reports from.
* Python warnings (``DeprecationWarning``, ``FutureWarning``, ``UserWarning``
  from torch, TensorFlow, JAX, OpenVINO): ignored, unless the user chose
  filters with ``-W`` or ``PYTHONWARNINGS``.
* Python logging (``tensorflow``, ``absl``, ``jax``, ``tf2onnx``, ...):
  records below CRITICAL are dropped.

Nothing here changes what the libraries compute (``TF_ENABLE_ONEDNN_OPTS``
is left alone), and everything but the environment is restored when the verb
ends. ``-v`` skips all of it.

:func:`json_stdout` is the other half: with ``--json`` the verb's one JSON
document is the only thing on stdout.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

__all__ = ["QUIET_ENV", "json_stdout", "quiet_libraries", "result_stream"]

# Set with ``setdefault``: a value the user exported wins.
QUIET_ENV: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "3"}


class _ResultStream:
    """Where a verb's result goes while :func:`json_stdout` holds stdout, or ``None``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: TextIO | None = None

    def set(self, stream: TextIO | None) -> None:
        with self._lock:
            self._stream = stream

    def get(self) -> TextIO | None:
        with self._lock:
            return self._stream


# One for the process: it stands for the process's real stdout (file descriptor 1).
_RESULT = _ResultStream()


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.StringIO, closed, None
        return None


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Hide the frameworks' own log lines and warnings inside the block.

    Args:
        verbose: leave every library's logging as it is (the ``-v`` flag).

    Example:
        >>> with quiet_libraries():
        ...     import tensorflow  # no oneDNN / absl lines on the terminal
    """
    if verbose:
        yield
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    disabled = logging.root.manager.disable
    with warnings.catch_warnings(), _native_stderr_hidden():
        if not sys.warnoptions:
            warnings.simplefilter("ignore")
        logging.disable(logging.ERROR)
        try:
            yield
        finally:
            logging.disable(disabled)


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """File descriptor 2 -> os.devnull; Python's ``sys.stderr`` keeps its target."""
    stream = sys.stderr
    try:
        if stream is not None:
            stream.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 at all (a daemon): nothing to hide
        yield
        return
    if _fileno(stream) == 2:
        # Not closed on the way out: a logging handler made inside the block may hold it.
        sys.stderr = open(os.dup(saved), "w", buffering=1,  # noqa: SIM115
                          encoding=getattr(stream, "encoding", None) or "utf-8",
                          errors=getattr(stream, "errors", None) or "backslashreplace")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    fault_handler = faulthandler.is_enabled()
    faulthandler.enable(saved)  # a crash still shows a traceback
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError, OSError, ValueError):  # None, closed
            sys.stderr.flush()
        sys.stderr = stream
        faulthandler.disable()
        os.dup2(saved, 2)
        os.close(saved)
        if fault_handler:
            with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
                faulthandler.enable()


@contextlib.contextmanager
def json_stdout(active: bool = True) -> Iterator[TextIO]:
    """Keep stdout for one result: anything else written there goes to stderr.

    Inside the block Python's ``sys.stdout`` is ``sys.stderr`` and file
    descriptor 1 points where descriptor 2 does, so a library's ``print`` or
    C++ output cannot end up inside the JSON; the yielded stream (also
    :func:`result_stream`) writes to the real stdout.

    Args:
        active: when False, nothing is redirected and ``sys.stdout`` is yielded.
    """
    if not active:
        yield sys.stdout
        return
    original = sys.stdout
    saved = None
    result: TextIO = original
    if _fileno(original) == 1:
        original.flush()
        saved = os.dup(1)
        result = open(os.dup(saved), "w",  # noqa: SIM115 - closed below
                      encoding=getattr(original, "encoding", None) or "utf-8",
                      errors=getattr(original, "errors", None) or "strict")
        os.dup2(2, 1)
    sys.stdout = sys.stderr
    _RESULT.set(result)
    try:
        yield result
    finally:
        _RESULT.set(None)
        with contextlib.suppress(AttributeError, OSError, ValueError):  # None, closed
            sys.stderr.flush()
        sys.stdout = original
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                result.close()  # flushes the result onto the real stdout
            os.dup2(saved, 1)
            os.close(saved)


def result_stream() -> TextIO:
    """Where the verb's result goes: the real stdout inside :func:`json_stdout`."""
    result = _RESULT.get()
    return result if result is not None else sys.stdout

"""The one client of kexport's child processes.

:func:`kexport.verify` runs an artifact in a fresh ``python -m
kexport.runtime._worker``; re-hosting keeps one ``python -m
kexport.routing.rehost_child`` per target backend. Both are a
:class:`Worker`: started with :class:`subprocess.Popen` (never
``multiprocessing``, so user scripts without a ``__main__`` guard are safe),
in the environment :func:`kexport._numerics.child_env` states (float32 math),
fed one JSON request per stdin line, answering one JSON line per request on
stdout, with stderr in an anonymous temporary file whose tail explains a
crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kexport._numerics import child_env

__all__ = ["Worker"]


class Worker:
    """One kexport child process speaking JSON lines.

    Args:
        module: the module run as ``python -m module``.
        env: its environment (default: this process's), with
            :func:`~kexport._numerics.child_env` applied.
        cwd: its working folder.
        marker: replies are the stdout lines that start with it (the rest,
            e.g. what a runtime prints, is skipped); ``""``: every line
            that parses as JSON.
        lifetime: seconds after which the child is killed whatever it does
            (a request in flight then gets no reply); ``None``: no limit.
        name: the name of the thread reading its replies.
        on_close: called once the child is stopped (e.g. to remove its home).
    """

    def __init__(self, module: str, *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, marker: str = "",
                 lifetime: float | None = None, name: str = "kexport-worker",
                 on_close: Callable[[], None] | None = None) -> None:
        self.marker = marker
        self._on_close = on_close
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            encoding="utf-8", errors="replace",
            env=child_env(os.environ if env is None else env), cwd=cwd)
        self._replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=name).start()
        self._timer: threading.Timer | None = None
        if lifetime is not None:
            self._timer = threading.Timer(lifetime, self.proc.kill)
            self._timer.daemon = True
            self._timer.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)  # end of file: the child exited

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def exit_code(self) -> int:
        """The child's exit code (waits for it to end)."""
        return self.proc.wait()

    def log_tail(self, chars: int = 1500, lines: int | None = None) -> str:
        """The end of the child's stderr: its last ``lines`` lines, at most ``chars`` characters."""
        try:
            self.log.seek(0)
            text = self.log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        if lines is not None:
            text = "\n".join(text.splitlines()[-lines:])
        return text[-chars:]

    def ask(self, request: Mapping[str, Any], timeout: float | None = None
            ) -> dict[str, Any] | None:
        """Send ``request``; return the child's reply, or ``None`` if it ended without one.

        Raises:
            TimeoutError: no reply within ``timeout`` seconds; the child was killed.
        """
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the child is gone: its end of output says so below
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                line = self._replies.get(timeout=left)
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"no reply in {timeout:g} s") from None
            if line is None:
                self._replies.put(None)  # later asks see the end too
                return None
            if line.startswith(self.marker):
                with contextlib.suppress(ValueError):
                    reply = json.loads(line[len(self.marker):])
                    if isinstance(reply, dict):
                        return reply

    def close(self, goodbye: Mapping[str, Any] | None = None, wait: float = 30.0) -> None:
        """Stop the child: send ``goodbye`` (if any), close its input, wait, else kill it."""
        if self._timer is not None:
            self._timer.cancel()
        if self.alive():
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError, ValueError):
                if goodbye is not None:
                    self.proc.stdin.write(json.dumps(goodbye) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(OSError):
            self.log.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

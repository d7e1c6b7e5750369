"""A one-line progress display for long CLI steps (only on a terminal)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["Progress"]

_FRAMES = "|/-\\"


class Progress:
    """Shows ``<spinner> step... 3.1s`` on stderr while a step runs.

    Enabled only when both stdout and stderr are terminals and JSON output
    was not asked for, so pipes, files and scripts see nothing of it.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stdout.isatty() and sys.stderr.isatty()
        self.enabled = enabled
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Time the block as ``label``; animate it on a terminal."""
        start = time.perf_counter()
        stop = threading.Event()
        thread = None
        if self.enabled:
            def spin() -> None:
                i = 0
                while not stop.wait(0.1):
                    elapsed = time.perf_counter() - start
                    sys.stderr.write(f"\r{_FRAMES[i % 4]} {label}... {elapsed:.1f}s")
                    sys.stderr.flush()
                    i += 1

            thread = threading.Thread(target=spin, daemon=True)
            thread.start()
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            elapsed = time.perf_counter() - start
            self.timings[label] = elapsed
            if self.enabled:
                mark = "done" if ok else "failed"
                sys.stderr.write(f"\r{label}: {mark} ({elapsed:.1f}s)\x1b[K\n")
                sys.stderr.flush()

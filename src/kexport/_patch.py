"""Scoped, reference-counted replacement of a peer library's attribute.

kexport works around peer-library misbehaviour only while its own export call
runs: :func:`scoped_patch` swaps one attribute in, and the original is back as
soon as the last concurrent user (threads included) leaves. Each workaround
that uses it lives in one named place, with a test (see docs/onnx.md).

Why reference counting and not save/restore per caller: two exports in two
threads that each saved "the current value" and put it back on exit would
restore in the wrong order whenever the first to enter is not the last to
leave (the second saved the first's replacement and reinstalls it for good,
or the first removes it while the second still converts). Here the first
user installs, later users share that replacement, and the last user out
restores the value the first one found; several patches entered in one
``with`` are left in the reverse order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["scoped_patch"]


@dataclass
class _Installed:
    owner: Any  # held, so that id(owner) cannot be reused while installed
    original: Any
    replacement: Any
    users: int = 0


_lock = threading.Lock()
_installed: dict[tuple[int, str], _Installed] = {}


@contextlib.contextmanager
def scoped_patch(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """Within the context ``owner.name`` is ``make(original)``.

    Nested and concurrent uses share one replacement (the first user's
    ``make``; every use of one workaround passes the same); the original is
    restored when the last one exits, unless something else replaced the
    attribute meanwhile (its value is then left alone). A no-op when
    ``owner`` has no such attribute of its own (the peer library changed:
    its own behaviour then applies).
    """
    key = (id(owner), name)
    with _lock:
        entry = _installed.get(key)
        if entry is None and name in getattr(owner, "__dict__", {}):
            original = vars(owner)[name]
            replacement = make(original)
            setattr(owner, name, replacement)
            entry = _installed[key] = _Installed(owner, original, replacement)
        if entry is not None:
            entry.users += 1
    try:
        yield
    finally:
        if entry is not None:
            with _lock:
                entry.users -= 1
                if entry.users == 0:
                    del _installed[key]
                    if vars(owner).get(name) is entry.replacement:
                        setattr(owner, name, entry.original)

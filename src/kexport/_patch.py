"""Scoped, reference-counted replacement of a peer library's attribute.

kexport works around peer-library misbehaviour only while its own export call
runs: :func:`scoped_patch` swaps one attribute in, and the original is back as
soon as the last concurrent user (threads included) leaves. Each workaround
that uses it lives in one named place, with a test (see docs/onnx.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["scoped_patch"]

_lock = threading.Lock()
_users: dict[tuple[int, str], list[Any]] = {}  # (id(owner), name) -> [count, original]


@contextlib.contextmanager
def scoped_patch(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """Within the context ``owner.name`` is ``make(original)``.

    Nested and concurrent uses share one replacement; the original is
    restored when the last one exits. A no-op when ``owner`` has no such
    attribute (the peer library changed: its own behaviour then applies).
    """
    key = (id(owner), name)
    with _lock:
        entry = _users.get(key)
        if entry is None:
            if name not in vars(owner):
                entry = None
            else:
                original = vars(owner)[name]
                setattr(owner, name, make(original))
                entry = _users[key] = [0, original]
        if entry is not None:
            entry[0] += 1
    try:
        yield
    finally:
        if entry is not None:
            with _lock:
                entry[0] -= 1
                if entry[0] == 0:
                    setattr(owner, name, entry[1])
                    del _users[key]

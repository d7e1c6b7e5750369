"""Where the model being exported lives when it was re-hosted.

A re-host child (:mod:`kexport.routing.rehost_child`) exports a model rebuilt
from another backend; writers that record the source backend in their
artifact's metadata ask :func:`rehost_source` while they write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["rehost_source", "rehosted_from"]

_SOURCE: list[str] = []  # set in the worker while a job runs (see rehosted_from)


@contextlib.contextmanager
def rehosted_from(backend: str) -> Iterator[None]:
    """Mark the exports inside the block as re-hosted from ``backend`` (child side).

    Writers that record the source backend in their artifact's metadata read it
    with :func:`rehost_source`.
    """
    _SOURCE.append(backend)
    try:
        yield
    finally:
        _SOURCE.pop()


def rehost_source() -> str | None:
    """The backend the model being exported was re-hosted from, or ``None``."""
    return _SOURCE[-1] if _SOURCE else None

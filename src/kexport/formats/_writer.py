"""The writer protocol: what every format's archive writer receives and is.

A format module under :mod:`kexport.formats` exposes ``write_archive``, an
:class:`ArchiveWriter` over an :class:`EndpointArchive` (an
``ExportArchive``: traced endpoints, tracked state, variable collections).
It may also declare, for the single-model export that
:mod:`kexport.routing.single` writes once for every format:

- ``single_model_options(options) -> (capture options, writer options)``: how
  the options of ``export_model`` split (default: all go to the capture);
- ``rehost_options(model, input_signature, options, context) -> dict``: what a
  re-host to this format carries and checks (default: the options as given);
- its typed options, a frozen :class:`~kexport.formats._options.FormatOptions`
  (``ArchiveRoute.options``), parsed once where the call enters into
  ``context.options``, which its converters and writer read.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Protocol

from kexport.capture._base import TracedEndpoint
from kexport.context import ExportContext

__all__ = ["ArchiveWriter", "EndpointArchive"]


class EndpointArchive(Protocol):
    """What a writer reads of an ``ExportArchive``."""

    backend: str

    @property
    def endpoints(self) -> list[TracedEndpoint]:
        """The traced endpoints, in the order they were added."""
        ...

    @property
    def endpoint_names(self) -> list[str]:
        """Their names."""
        ...

    @property
    def default_endpoint(self) -> str:
        """The endpoint the artifact runs by default."""
        ...

    @property
    def collections(self) -> dict[str, list[Any]]:
        """Variable collections as the capture holds them."""
        ...

    def variable_collections(self) -> dict[str, list[Any]]:
        """Variable collections as the Keras variables given."""
        ...

    def described_endpoints(self) -> dict[str, tuple[Any, Any]]:
        """Endpoints as data (for re-hosting)."""
        ...

    def trackables(self) -> dict[str, Any]:
        """What the artifact must hold: variables, resources, tracked layers."""
        ...

    def save_context(self) -> contextlib.AbstractContextManager[Any]:
        """The backend's context for serialising traced functions."""
        ...


class ArchiveWriter(Protocol):
    """``write_archive(archive, filepath, options=None, *, context, **format_options)``.

    Writes atomically (``kexport._atomic``, with ``overwrite=context.overwrite``),
    records ``context.recorded()`` in its manifest and prints its summary with
    ``context.printer`` (``verbose`` was resolved where the call entered); the other keyword-only
    parameters are the format's options (``ExportArchive.write_out(..., format=F,
    **options)``).
    """

    def __call__(self, archive: EndpointArchive, filepath: str | os.PathLike[str],
                 options: Any | None = None, *,
                 context: ExportContext, **format_options: Any) -> None:
        """Write ``archive`` to ``filepath``."""
        ...

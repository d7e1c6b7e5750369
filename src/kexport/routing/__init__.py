"""Routing: every way from a Keras backend to an artifact format, and the one that runs.

- :mod:`~kexport.routing.table`: the single-model routes, typed entries holding
  their export functions (:func:`routes`, :func:`resolve`, :func:`usable`);
- :mod:`~kexport.routing.archive_routes`: ``ExportArchive`` per backend (capture) and
  per format (archive writer, re-hosted archives);
- :mod:`~kexport.routing.single`: the single-model export, written once from what
  each format declares, and the loop over one cell's routes (:func:`export`);
- :mod:`~kexport.routing.archive`: :class:`ExportArchive` itself;
- :mod:`~kexport.routing.rehost_child`: the re-host worker's entry point (it
  writes with the host's routes); re-hosting itself is :mod:`kexport.rehost`,
  one layer below.

The package is named ``routing`` because ``kexport.routes()`` is the public
function that lists the table.
"""

from kexport.artifact import BACKENDS, FORMATS, format_info
from kexport.routing.archive import ExportArchive
from kexport.routing.archive_routes import (
    ArchiveRoute,
    CaptureRoute,
    archive_host,
    archive_route,
    capture_for,
    capture_host,
    captures,
)
from kexport.routing.single import export
from kexport.routing.table import Route, matrix, resolve, routes, usable

__all__ = ["BACKENDS", "FORMATS", "ArchiveRoute", "CaptureRoute", "ExportArchive", "Route",
           "archive_host", "archive_route", "capture_for", "capture_host", "captures", "export",
           "format_info", "matrix", "resolve", "routes", "usable"]

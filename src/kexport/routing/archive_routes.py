"""How ``ExportArchive`` works on each backend and writes each format.

Two tables, typed and holding the functions themselves: the capture of each
backend (how endpoints are traced, and whether the backend's archives are
always re-hosted) and the archive writer of each format (with the backends
whose archives that format re-hosts). :class:`~kexport.routing.archive.ExportArchive`
asks :func:`capture_for`, :func:`archive_route` and :func:`archive_host`,
never the backend's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kexport._outcome import attempt, every_refusal
from kexport.artifact import format_info, missing_packages
from kexport.capture import Capture
from kexport.capture.jax import JaxCapture
from kexport.capture.tensorflow import TensorFlowCapture
from kexport.context import ExportContext
from kexport.errors import UnsupportedRouteError
from kexport.formats import litert, onnx, openvino, saved_model, torch_program
from kexport.formats._options import FormatOptions
from kexport.rehost.capture import RehostCapture

__all__ = ["ArchiveRoute", "CaptureRoute", "archive_host", "archive_route", "capture_for",
           "capture_host", "captures", "in_process_first"]


@dataclass(frozen=True)
class ArchiveRoute:
    """How ``ExportArchive.write_out`` writes one format.

    Attributes:
        writer: ``writer(archive, filepath, *, context, options=None,
            **format_options)`` writing an ``ExportArchive`` in process.
        native_archives: backends whose archives ``writer`` writes in-process
            even where the backend's capture would re-host (e.g. ``.pt2``
            programs on the PyTorch backend).
        rehost: ``(source backend, host backend)`` pairs: archives built on
            the source backend are written by re-hosting them onto the host
            backend (its ``writer`` runs there), although the source
            backend's capture works in-process for other formats (e.g.
            ``.pt2`` programs from TensorFlow functions). See
            :func:`archive_host`.
        native_first: backends of :attr:`rehost` whose archives ``writer``
            tries in process first; when it raises
            :class:`~kexport.errors.RouteRefused` (nothing written), the
            archive is re-hosted (e.g. ONNX on JAX: ``jax2onnx``, as for one
            model, else tf2onnx on TensorFlow). See :func:`in_process_first`.
        options: the format's typed options (a
            :class:`~kexport.formats._options.FormatOptions` subclass), parsed
            once where the call enters into ``ExportContext.options``;
            ``None``: not declared yet (the writer's keyword-only parameters
            are its options).
    """

    writer: Callable[..., Any] = field(compare=False, repr=False)
    native_archives: tuple[str, ...] = ()
    rehost: tuple[tuple[str, str], ...] = ()
    native_first: tuple[str, ...] = ()
    options: type[FormatOptions] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CaptureRoute:
    """``ExportArchive`` support on one backend.

    Attributes:
        factory: makes a fresh :class:`~kexport.capture.Capture`; called with
            ``host`` when the capture re-hosts every archive.
        packages: importable modules the capture needs.
        extra: the pip extra that installs them.
        via: how endpoints are captured, for people.
        host: the backend that writes this backend's archives (formats not in
            :attr:`ArchiveRoute.native_archives`), ``None`` when it writes
            them in process.
    """

    factory: Callable[..., Capture] = field(compare=False, repr=False)
    packages: tuple[str, ...]
    extra: str
    via: str
    host: str | None = None


# Keyed by format name (the formats themselves: ``kexport.artifact.FORMATS``).
_ARCHIVE_ROUTES: dict[str, ArchiveRoute] = {
    "tf_saved_model": ArchiveRoute(saved_model.write_archive),
    "litert": ArchiveRoute(litert.write_archive, options=litert.LiteRTOptions),
    "torch": ArchiveRoute(
        torch_program.write_archive, ("torch",),
        # torch.export reads PyTorch code only, never TensorFlow functions
        rehost=(("tensorflow", "torch"), ("jax", "torch"))),
    "openvino": ArchiveRoute(
        openvino.write_archive, ("torch",),
        # OpenVINO cannot read the XlaCallModule (StableHLO) ops of jax2tf functions
        rehost=(("jax", "tensorflow"),)),
    "onnx": ArchiveRoute(
        onnx.write_archive,
        # jax2onnx in process, as export_model; else re-hosted, as tf2onnx cannot
        # read the XlaCallModule (StableHLO) ops of jax2tf functions
        rehost=(("jax", "tensorflow"),), native_first=("jax",), options=onnx.OnnxOptions),
}

_CAPTURES: dict[str, CaptureRoute] = {
    "tensorflow": CaptureRoute(TensorFlowCapture, ("tensorflow",), "tensorflow",
                               "native: tf.function"),
    "jax": CaptureRoute(JaxCapture, ("tensorflow", "jax"), "jax",
                        "native: jax2tf -> tf.function"),
    # No native capture (Keras needs torch_xla): endpoints are recorded as data
    # and the archive is rebuilt and written on the TensorFlow backend.
    "torch": CaptureRoute(
        RehostCapture, ("tensorflow",), "tensorflow",
        "rehost: endpoints recorded as data (model, method, training flag, signature); the "
        "archive is rebuilt and written on tensorflow in a child process, then verified "
        "against the live endpoints", host="tensorflow"),
}

def archive_route(format: str) -> ArchiveRoute:
    """How ``ExportArchive.write_out`` writes ``format``.

    Raises:
        UnsupportedRouteError: for unknown formats.
    """
    format_info(format)
    return _ARCHIVE_ROUTES[format]


def capture_host(backend: str) -> str | None:
    """Where ``backend``'s capture re-hosts archives by default; ``None`` when it
    writes them in-process (see :func:`archive_host` for one format)."""
    entry = _CAPTURES.get(backend)
    return entry.host if entry is not None else None


def archive_host(backend: str, format: str) -> str | None:
    """The backend that writes ``format`` archives built on ``backend``.

    ``None`` when the archive is written in-process by the format's
    :attr:`ArchiveRoute.writer`; otherwise ``ExportArchive.write_out`` re-hosts it onto
    the returned backend (:func:`kexport.rehost.write_archive_rehosted`).

    Raises:
        UnsupportedRouteError: for unknown formats.
    """
    format_info(format)
    route = _ARCHIVE_ROUTES[format]
    rehosted = dict(route.rehost)
    if backend in rehosted:
        return rehosted[backend]
    if backend in route.native_archives:
        return None
    return capture_host(backend)


def in_process_first(backend: str, format: str, native: Callable[..., Any],
                     rehosted: Callable[..., Any]) -> Callable[..., Any]:
    """The writer of ``format`` archives on ``backend`` that :func:`archive_host`
    re-hosts: ``rehosted``, or, where the format's route says
    :attr:`ArchiveRoute.native_first`, ``native`` in process first and
    ``rehosted`` when its :class:`~kexport._outcome.Outcome` is a refusal."""
    if backend not in archive_route(format).native_first:
        return rehosted

    def write(archive: Any, filepath: Any, *, context: ExportContext,
              options: Any | None = None, **format_options: Any) -> None:
        outcome = attempt("in process", native, archive, filepath, context=context,
                          options=options, **format_options)
        if outcome.ok:
            return
        context.printer(f"kexport: re-hosting the archive ({outcome.reason[:240]})")
        second = attempt("re-hosted", rehosted, archive, filepath, context=context,
                         options=options, **format_options)
        if not second.ok:
            raise every_refusal([outcome, second])

    return write


def captures() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """ExportArchive support per backend: ``{backend: (how, packages, extra)}``."""
    return {b: (c.via, c.packages, c.extra) for b, c in _CAPTURES.items()}


def capture_for(backend: str) -> Capture:
    """A fresh capture (endpoint tracer) for ``backend``.

    Raises:
        UnsupportedRouteError: when no capture exists for ``backend`` here.
    """
    if backend not in _CAPTURES:
        raise UnsupportedRouteError(
            f"ExportArchive is not available on the {backend} backend yet. "
            f"Expected one of {sorted(_CAPTURES)}. Next step: load the model "
            "with KERAS_BACKEND=tensorflow or jax and build the archive there."
        )
    entry = _CAPTURES[backend]
    missing = missing_packages(entry.packages)
    if missing:
        raise UnsupportedRouteError(
            f"The {backend} capture needs {', '.join(missing)}: "
            f"pip install 'kexport[{entry.extra}]'"
        )
    return entry.factory(entry.host) if entry.host is not None else entry.factory()

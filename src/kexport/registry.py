"""The route registry: which backend can write which format, and how.

A *route* is one way from a Keras backend to an artifact format: a capture
plus a writer, or a re-host onto another backend plus that backend's route.
This module is the only place that maps backends and formats to code; the
rest of kexport asks it (``resolve``, ``capture_for``) instead of branching on
``keras.backend.backend()``. Adding a format or a backend means adding rows
here and one module beside the others.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kexport.artifact import BACKENDS, FORMATS, FormatDescriptor
from kexport.errors import UnsupportedRouteError

if TYPE_CHECKING:
    from kexport.capture import Capture

__all__ = ["RUNTIMES", "ArchiveRoute", "Route", "archive_host", "archive_writer", "capture_for",
           "capture_host", "captures", "format_info", "matrix", "resolve", "routes",
           "runtime_for", "runtime_formats"]


@dataclass(frozen=True)
class ArchiveRoute:
    """How ``ExportArchive.write_out`` writes one format (route facts of a format).

    Attributes:
        writer: ``"module:function"`` writing an ``ExportArchive``.
        native_archives: backends whose archives ``writer`` writes in-process
            even where the backend's capture would re-host (e.g. ``.pt2``
            programs on the PyTorch backend).
        rehost: ``(source backend, host backend)`` pairs: archives built on
            the source backend are written by re-hosting them onto the host
            backend (its ``writer`` runs there), although the source
            backend's capture works in-process for other formats (e.g.
            ``.pt2`` programs from TensorFlow functions). See
            :func:`archive_host`.
    """

    writer: str
    native_archives: tuple[str, ...] = ()
    rehost: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Route:
    """One way to produce ``format`` from ``backend``.

    Attributes:
        backend: the Keras backend the model lives on.
        format: the artifact format produced.
        kind: ``"native"`` (traced on the model's own backend) or ``"rehost"``.
        via: the building blocks used, for people.
        target: ``"module:function"`` that performs the export.
        packages: importable modules this route needs.
        extra: the pip extra that installs them.
        check: optional ``"module:function"`` returning why this route cannot
            carry a given model (``""`` when it can), e.g. layers a capture
            cannot trace.
    """

    backend: str
    format: str
    kind: str
    via: str
    target: str
    packages: tuple[str, ...]
    extra: str
    check: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        """Required modules that cannot be imported here."""
        return tuple(p for p in self.packages if importlib.util.find_spec(p) is None)

    @property
    def available(self) -> bool:
        """Whether every package this route needs is installed."""
        return not self.missing

    @property
    def reason(self) -> str:
        """Why the route is unavailable, with the command that fixes it."""
        if not self.missing:
            return ""
        return (f"missing {', '.join(self.missing)}: "
                f"pip install 'kexport[{self.extra}]'")

    def problem(self, model: Any | None = None) -> str:
        """Why this route cannot export ``model`` here, ``""`` when it can.

        A missing package (with the ``pip install`` that fixes it) or, for
        re-host routes, a model feature that cannot travel to the child
        process (e.g. a custom layer class defined in ``__main__``).
        """
        if self.missing:
            return self.reason
        if model is not None and self.check:
            module, _, func = self.check.partition(":")
            problem = getattr(importlib.import_module(module), func)(model)
            if problem:
                return problem
        if model is not None and self.kind == "rehost":
            from kexport.routing.rehost import rehost_problem

            return rehost_problem(model)
        return ""

    def load(self) -> Callable[..., Any]:
        """Import and return the function that performs this route."""
        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able row (``kexport formats --json``)."""
        return {"backend": self.backend, "format": self.format, "kind": self.kind,
                "via": self.via, "available": self.available, "reason": self.reason}


# Keyed by format name (the formats themselves: ``kexport.artifact.FORMATS``).
_ARCHIVE_ROUTES: dict[str, ArchiveRoute] = {
    "tf_saved_model": ArchiveRoute("kexport.formats.saved_model:write_archive"),
    "litert": ArchiveRoute("kexport.formats.litert:write_archive"),
    "torch": ArchiveRoute(
        "kexport.formats.torch_program:write_archive", ("torch",),
        # torch.export reads PyTorch code only, never TensorFlow functions
        rehost=(("tensorflow", "torch"), ("jax", "torch"))),
    "openvino": ArchiveRoute(
        "kexport.formats.openvino:write_archive", ("torch",),
        # OpenVINO cannot read the XlaCallModule (StableHLO) ops of jax2tf functions
        rehost=(("jax", "tensorflow"),)),
    "onnx": ArchiveRoute(
        "kexport.formats.onnx:write_archive",
        # tf2onnx cannot read the XlaCallModule (StableHLO) ops of jax2tf functions
        rehost=(("jax", "tensorflow"),)),
}


_CAPTURES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "tensorflow": ("kexport.capture.tensorflow:TensorFlowCapture", ("tensorflow",), "tensorflow"),
    "jax": ("kexport.capture.jax:JaxCapture", ("tensorflow", "jax"), "jax"),
    # No native capture (Keras needs torch_xla): endpoints are recorded as data
    # and the archive is rebuilt and written on the TensorFlow backend.
    "torch": ("kexport.routing.rehost.capture:RehostCapture", ("tensorflow",), "tensorflow"),
}

_ROUTES: list[Route] = [
    Route("tensorflow", "litert", "native", "tf.function -> tf.lite.TFLiteConverter",
          "kexport.formats.litert:export", ("tensorflow",), "tensorflow"),
    Route("jax", "litert", "native", "jax2tf (StableHLO) -> tf.lite.TFLiteConverter",
          "kexport.formats.litert:export_stateless", ("tensorflow", "jax"), "jax",
          check="kexport.capture.jax:native_problem"),
    Route("torch", "litert", "rehost",
          "re-host on tensorflow (child process) -> tf.lite.TFLiteConverter",
          "kexport.formats.litert:export_rehost", ("tensorflow",), "tensorflow"),
    Route("tensorflow", "openvino", "native", "tf.function -> openvino.convert_model",
          "kexport.formats.openvino:export", ("tensorflow", "openvino"), "openvino"),
    Route("jax", "openvino", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> openvino.convert_model",
          "kexport.formats.openvino:export_rehost", ("tensorflow", "openvino"), "openvino"),
    Route("torch", "openvino", "native", "torch.export -> openvino.convert_model",
          "kexport.formats.openvino:export", ("torch", "openvino"), "openvino"),
    Route("torch", "torch", "native", "torch.export (Dim dynamic batch)",
          "kexport.formats.torch_program:export", ("torch",), "torch"),
    Route("tensorflow", "torch", "rehost", "re-host on torch (child process) -> torch.export",
          "kexport.formats.torch_program:export_rehost", ("torch",), "torch"),
    Route("jax", "torch", "rehost", "re-host on torch (child process) -> torch.export",
          "kexport.formats.torch_program:export_rehost", ("torch",), "torch"),
    Route("tensorflow", "tf_saved_model", "native", "tf.function -> tf.saved_model",
          "kexport.formats.saved_model:export", ("tensorflow",), "tensorflow"),
    Route("jax", "tf_saved_model", "native", "jax2tf -> tf.function -> tf.saved_model",
          "kexport.formats.saved_model:export", ("tensorflow", "jax"), "jax",
          check="kexport.capture.jax:native_problem"),
    Route("jax", "tf_saved_model", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> tf.saved_model "
          "(models with TensorFlow lookup layers)",
          "kexport.routing.rehost:saved_model_via_tensorflow", ("tensorflow",), "tensorflow"),
    Route("torch", "tf_saved_model", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> tf.saved_model",
          "kexport.routing.rehost:saved_model_via_tensorflow", ("tensorflow",), "tensorflow"),
    Route("tensorflow", "onnx", "native", "tf.function -> tf2onnx",
          "kexport.formats.onnx:export_tensorflow",
          ("tensorflow", "tf2onnx", "onnx", "onnxscript"), "onnx"),
    Route("torch", "onnx", "native",
          "torch.export -> torch.onnx (re-host on tensorflow for a dynamic recurrent time axis)",
          "kexport.formats.onnx:export_torch", ("torch", "onnx", "onnxscript"), "onnx"),
    Route("jax", "onnx", "native",
          "jax2onnx, kept when ONNX Runtime matches the live model (recurrent models and "
          "graphs it cannot write or ONNX Runtime cannot run: re-host on tensorflow)",
          "kexport.formats.onnx:export_jax",
          ("jax2onnx", "onnx", "onnxruntime", "onnxscript", "tensorflow", "tf2onnx"), "onnx"),
    Route("jax", "onnx", "rehost", "re-host on tensorflow (child process) -> tf2onnx",
          "kexport.formats.onnx:export_rehost",
          ("tensorflow", "tf2onnx", "onnx", "onnxscript"), "onnx"),
    Route("torch", "onnx", "rehost", "re-host on tensorflow (child process) -> tf2onnx",
          "kexport.formats.onnx:export_rehost",
          ("tensorflow", "tf2onnx", "onnx", "onnxscript"), "onnx"),
]


# Artifact runtimes (``kexport.load``): format -> loader module exposing
# ``detect(path) -> bool`` and ``open(path, given) -> Artifact``. Detection
# tries them in this order.
RUNTIMES: dict[str, str] = {
    "tf_saved_model": "kexport.runtime.saved_model",
    "onnx": "kexport.runtime.onnx",
    "litert": "kexport.runtime.litert",
    "openvino": "kexport.runtime.openvino",
    "torch": "kexport.runtime.torch_program",
}


def runtime_formats() -> list[str]:
    """Formats that :func:`kexport.load` can open, in detection order."""
    return list(RUNTIMES)


def runtime_for(format: str) -> str:
    """The loader module name for ``format``.

    Raises:
        UnsupportedRouteError: when no runtime is registered for ``format``.
    """
    if format not in RUNTIMES:
        raise UnsupportedRouteError(
            f"Expected a format with a runtime, one of {list(RUNTIMES)}. "
            f"Received: format={format!r}"
        )
    return RUNTIMES[format]


def routes(backend: str | None = None, format: str | None = None) -> list[Route]:
    """The registered routes, optionally filtered, best first within each cell.

    Args:
        backend: keep only routes from this backend.
        format: keep only routes to this format.
    """
    return [r for r in _ROUTES
            if (backend is None or r.backend == backend)
            and (format is None or r.format == format)]


def format_info(format: str) -> FormatDescriptor:
    """The :class:`~kexport.artifact.FormatDescriptor` named ``format``.

    Raises:
        UnsupportedRouteError: for unknown names, with a did-you-mean.
    """
    if not isinstance(format, str) or format not in FORMATS:
        names = sorted(FORMATS)
        hint = difflib.get_close_matches(str(format), names, n=1)
        more = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnsupportedRouteError(
            f"Expected `format` to be one of {names}. Received: "
            f"format={format!r}.{more}"
        )
    return FORMATS[format]


def archive_writer(format: str) -> Callable[..., Any]:
    """The function that writes an ``ExportArchive`` in ``format``."""
    format_info(format)
    target = _ARCHIVE_ROUTES[format].writer
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def matrix() -> dict[tuple[str, str], list[Route]]:
    """Every backend x format cell with its routes in the order they are tried."""
    return {(b, f): routes(b, f) for b in BACKENDS for f in FORMATS}


def resolve(backend: str, format: str, model: Any | None = None) -> Route:
    """The first route from ``backend`` to ``format`` that can run here.

    Args:
        backend: the Keras backend.
        format: the artifact format.
        model: when given, routes that cannot carry this model (see
            :meth:`Route.problem`) are skipped.

    Raises:
        UnsupportedRouteError: when the format is unknown, or no route exists
            or none can run (the message gives each route's reason).
    """
    format_info(format)
    candidates = routes(backend, format)
    problems = [r.problem(model) for r in candidates]
    for route, problem in zip(candidates, problems, strict=True):
        if not problem:
            return route
    if candidates:
        reasons = "; ".join(f"{r.kind} ({r.via}): {p}"
                            for r, p in zip(candidates, problems, strict=True))
        raise UnsupportedRouteError(
            f"Cannot export format '{format}' from the {backend} backend here: {reasons}"
        )
    others = sorted({r.backend for r in routes(format=format)})
    raise UnsupportedRouteError(
        f"Exporting format '{format}' from the {backend} backend is not "
        f"available yet. Backends with a route to it: {others}. Next step: "
        f"load the model with KERAS_BACKEND set to one of them and export there."
    )


# Backends whose capture cannot write any archive in-process (endpoints are
# recorded as data): every format not in ``ArchiveRoute.native_archives`` is written
# by re-hosting onto this backend.
_CAPTURE_HOSTS: dict[str, str] = {"torch": "tensorflow"}


def capture_host(backend: str) -> str | None:
    """Where ``backend``'s capture re-hosts archives by default; ``None`` when it
    writes them in-process (see :func:`archive_host` for one format)."""
    return _CAPTURE_HOSTS.get(backend)


def archive_host(backend: str, format: str) -> str | None:
    """The backend that writes ``format`` archives built on ``backend``.

    ``None`` when the archive is written in-process by the format's
    :func:`archive_writer`; otherwise ``ExportArchive.write_out`` re-hosts it onto
    the returned backend (:func:`kexport.routing.rehost.write_archive_rehosted`).

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


_CAPTURE_VIA: dict[str, str] = {
    "tensorflow": "native: tf.function",
    "jax": "native: jax2tf -> tf.function",
    "torch": ("rehost: endpoints recorded as data (model, method, training flag, "
              "signature); the archive is rebuilt and written on tensorflow in a child "
              "process, then verified against the live endpoints"),
}


def captures() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """ExportArchive support per backend: ``{backend: (how, packages, extra)}``."""
    return {b: (_CAPTURE_VIA.get(b, target), packages, extra)
            for b, (target, packages, extra) in _CAPTURES.items()}


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
    target, packages, extra = _CAPTURES[backend]
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UnsupportedRouteError(
            f"The {backend} capture needs {', '.join(missing)}: "
            f"pip install 'kexport[{extra}]'"
        )
    module, _, cls = target.partition(":")
    host = capture_host(backend)
    factory = getattr(importlib.import_module(module), cls)
    return factory(host) if host is not None else factory()

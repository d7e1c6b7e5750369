"""One model, one format: the single-model export, written once for every format.

A native route exports a model by building a one-endpoint archive
(``serve``, calling ``model(..., training=False)``) on the model's own
backend and handing it to the format's archive writer; a re-host route
rebuilds the model on another backend (:mod:`kexport.rehost`). Both
are made here from what a format declares: how it splits the options of
``export_model`` between the capture and its writer
(``single_model_options``), and what a re-host must carry or check
(``rehost_options``). :func:`export` runs the routes of one cell in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kexport._dims import plan_signature
from kexport._inference import inference_fn
from kexport._outcome import Outcome, every_refusal
from kexport.artifact import DEFAULT_ENDPOINT
from kexport.capture import precision
from kexport.capture.portable import portable_ops
from kexport.context import ExportContext
from kexport.rehost import rehost_export
from kexport.rehost.dtypes import with_output_dtypes
from kexport.routing.archive import ExportArchive
from kexport.routing.archive_routes import archive_route
from kexport.signature import normalize_for_model

if TYPE_CHECKING:
    from kexport.routing.table import Route

__all__ = ["OptionSplit", "RehostOptions", "export", "native_export", "rehost_export_for"]

#: ``split(options) -> (capture options, writer options)`` for a single-model export.
OptionSplit = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
#: ``prepare(model, input_signature, options, context) -> keyword arguments of
#: rehost_export`` (``context.options``: the format's typed options, where it declares them).
RehostOptions = Callable[[Any, Any, dict[str, Any], ExportContext], dict[str, Any]]


def _capture_only(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every option goes to the capture (JAX: ``is_static``, ``jax2tf_kwargs``)."""
    return options, {}


def native_export(format: str, split: OptionSplit = _capture_only,
                  capture_defaults: Mapping[str, Any] | None = None) -> Callable[..., None]:
    """The native single-model export to ``format``.

    Args:
        format: the artifact format (its archive writer does the writing).
        split: the format's ``single_model_options``: which options of
            ``export_model`` go to the capture, which to the writer, for a
            format that does not declare typed options (``ArchiveRoute.options``);
            a format that does has them in ``context.options``, read by its
            writer, and hands its ``PASSED`` ones to the capture.
        capture_defaults: capture options applied unless the caller gives them.
    """
    defaults = dict(capture_defaults or {})

    def export_native(model: Any, filepath: str | os.PathLike[str], *, context: ExportContext,
                      input_signature: Any | None = None, **options: Any) -> None:
        archive = ExportArchive()
        declared = archive_route(format).options
        if declared is None:  # options not declared yet: the format splits them
            capture_options, writer_options = split(dict(options))
        else:  # the writer reads context.options (parsed here where a re-host child enters)
            if not isinstance(context.options, declared):
                context = replace(context, options=declared.parse(
                    options, backend=archive.backend, entry="export_model"))
            capture_options, writer_options = declared.capture_options(
                options, archive.backend), {}
        capture_options = {**defaults, **capture_options}
        signature = plan_signature(inference_fn(model), normalize_for_model(
            model, input_signature), say=context.printer.say)
        archive.track(model)
        # in a re-host child: the source model's integer dtypes (kexport.rehost.dtypes)
        fn = with_output_dtypes(inference_fn(model), context.source_dtypes.get(DEFAULT_ENDPOINT))
        archive.add_endpoint(DEFAULT_ENDPOINT, fn, signature, **capture_options)
        archive.write_with(context, filepath, format=format, **writer_options)

    export_native.__qualname__ = export_native.__name__ = f"export_{format}_native"
    return export_native


def rehost_export_for(format: str, host: str,
                      prepare: RehostOptions | None = None) -> Callable[..., Any]:
    """The re-host export to ``format`` through the ``host`` backend.

    Args:
        format: the artifact format, written natively on ``host``.
        host: the backend the model is rebuilt on, in a child process.
        prepare: the format's ``rehost_options``: checks the options here and
            returns the keyword arguments of
            :func:`~kexport.rehost.rehost_export` (options that travel
            to the child, tolerances, sample inputs); by default every option
            travels as it is.
    """

    def export_rehosted(model: Any, filepath: str | os.PathLike[str], *,
                        context: ExportContext, input_signature: Any | None = None,
                        **options: Any) -> Any:
        extra = (prepare(model, input_signature, dict(options), context) if prepare
                 else options)
        return rehost_export(model, filepath, format, host, input_signature=input_signature,
                             context=context, **extra)

    export_rehosted.__qualname__ = export_rehosted.__name__ = f"export_{format}_via_{host}"
    return export_rehosted


def export(routes: Sequence[Route], model: Any, filepath: str | os.PathLike[str], *,
           context: ExportContext, input_signature: Any | None = None,
           **options: Any) -> Any:
    """Export ``model`` with the first of ``routes`` that delivers, under ``context``
    (built by the caller from the user's call: overwrite, the sample policy, the
    printer of its ``verbose``).

    ``routes`` are one cell's routes that can carry the model, in the order the
    table gives. Each returns an :class:`~kexport._outcome.Outcome`
    (:meth:`Route.run`); one that found, while exporting, that it cannot carry
    the model (nothing written) gives the reason, the next one then runs, and
    a verbose export says so in one line. When every route refused, the last
    refusal's typed error is raised, naming every reason
    (:func:`~kexport._outcome.every_refusal`); any other error propagates.
    """
    refusals: list[Outcome[Any]] = []
    for number, route in enumerate(routes, start=1):
        with precision.for_format(model, route.format), portable_ops():
            outcome = route.run(model, filepath, context=context,
                                input_signature=input_signature, **options)
        if outcome.ok:
            return outcome.value
        refusals.append(outcome)
        if number < len(routes):
            context.printer(f"kexport: trying the next route: {routes[number].via}")
    raise every_refusal(refusals, lambda route: f"{route.kind} ({route.via})")

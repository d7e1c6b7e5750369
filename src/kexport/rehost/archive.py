"""An ``ExportArchive`` written by re-hosting it (any capture's archive).

Used by ``ExportArchive.write_out`` wherever the route tables say so: every
endpoint was described as data when it was added
(:class:`~kexport.capture.endpoint.EndpointRecipe`); the tracked models are
rebuilt on the host in the worker process, the archive is re-created and
written there, and every endpoint is checked against the live endpoint
functions before the artifact is placed (:func:`kexport.rehost.export.rehost`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from kexport.capture.endpoint import EndpointRecipe, not_described_error
from kexport.check.calibration import calibration_by_endpoint
from kexport.check.report import VerificationReport
from kexport.context import ExportContext
from kexport.errors import SignatureError, UnsupportedRouteError, describe
from kexport.rehost.export import DEFAULT_ATOL, DEFAULT_RTOL, json_kwargs, rehost
from kexport.signature import flat_names

__all__ = ["write_archive_rehosted"]


def _collection_refs(name: str, variables: list[Any], models: list[Any],
                     backend: str) -> list[list[int]]:
    """``[model index, variable index]`` for each Keras variable of a collection."""
    refs = []
    for v in variables:
        ref = next(([i, j] for i, m in enumerate(models)
                    for j, w in enumerate(m.variables) if w is v), None)
        if ref is None:
            raise SignatureError(
                f"Variable collection '{name}': expected every variable to belong to a "
                f"tracked layer or model (a re-hosted archive rebuilds them from the "
                f"tracked models). Received: variable '{getattr(v, 'path', v)}' of no "
                "tracked layer. Next step: archive.track(the layer that owns it) first."
            )
        refs.append(ref)
    return refs


def write_archive_rehosted(archive: Any, filepath: str | os.PathLike[str], *,
                           format: str, host: str, context: ExportContext,
                           options: Any | None = None, atol: float = DEFAULT_ATOL,
                           rtol: float = DEFAULT_RTOL, **format_options: Any
                           ) -> VerificationReport:
    """Write ``archive`` in ``format`` by re-hosting it onto the ``host`` backend.

    Used by ``ExportArchive.write_out`` wherever the route tables say so
    (:func:`kexport.routing.archive_routes.archive_host`): every endpoint must have been
    described as data when it was added (:class:`EndpointRecipe`); the tracked
    models are rebuilt on ``host`` in the worker process, the archive is
    re-created and written there with ``host``'s own writer, every endpoint
    is compared with the live endpoint functions at two batch sizes, and only
    then is the artifact placed at ``filepath`` (see the module doc).

    Args:
        archive: the ``ExportArchive`` (any backend's capture).
        filepath: where the artifact goes.
        format: the artifact format.
        host: the backend that writes it (not the current one).
        context: the export's context (overwrite, the sample policy of its checks,
            the printer that says what was re-hosted and written).
        options: must be ``None`` (it cannot travel to the child).
        atol: absolute tolerance of the comparison with the live endpoints.
        rtol: relative tolerance of that comparison.
        **format_options: the format writer's options (``write_out``'s),
            carried to the child: plain values as JSON, ``calibration_data``
            read here against every endpoint's inputs and carried as arrays
            (:class:`~kexport.check.calibration.EndpointBatches`). A
            quantized artifact is compared by its mode's thresholds, on the
            calibration batches when there are some.

    Returns:
        The :class:`~kexport.check.report.VerificationReport` (one check per
        endpoint, output and batch).

    Raises:
        UnsupportedRouteError: an endpoint could not be described as data (the
            message names it, says why and what to do), ``options`` was
            given, or a model cannot be rebuilt in another process.
        VerificationError: the artifact differs from the live endpoints;
            nothing is written to ``filepath`` then.
    """
    import keras

    backend = keras.backend.backend()
    if host == backend:
        raise UnsupportedRouteError(
            f"Expected a host backend other than the current one to re-host a "
            f"format={format!r} archive. Received: host={host!r} on the {backend} backend."
        )
    if options is not None:
        raise UnsupportedRouteError(
            f"`options` cannot travel to the {host} process that writes this "
            f"format={format!r} archive (the {backend} backend re-hosts it). Expected "
            f"options=None. Received: {describe(options)}"
        )
    state = archive.trackables()
    for resource in state.get("tracked_resources", []):
        raise UnsupportedRouteError(
            f"ExportArchive.write_out(format={format!r}) on the {backend} backend re-hosts "
            f"the archive onto the {host} backend, which rebuilds tracked Keras layers and "
            "models only. Expected no TensorFlow resource tracked with archive.track(). "
            f"Received: {describe(resource)}. Next step: keep lookups inside the model "
            "(e.g. a StringLookup layer), or write this format from an archive without it."
        )
    described = archive.described_endpoints()
    recipes: list[tuple[EndpointRecipe, Callable[..., Any]]] = []
    for name in archive.endpoint_names:
        recipe, fn = described.get(name, ("it was added before endpoints were recorded", None))
        if isinstance(recipe, str):
            raise not_described_error(
                name, fn, recipe, f"ExportArchive.write_out(format={format!r}) on the "
                f"{backend} backend re-hosts the archive onto the {host} backend (a child "
                "process rebuilds the tracked models and their endpoints)", host)
        recipes.append((recipe, fn))
    models = list(state["tracked_layers"])
    collections = {k: _collection_refs(k, v, models, backend)
                   for k, v in archive.variable_collections().items()}
    kwargs, carried, calibration, given = _archive_options(recipes, format_options)
    extra = {"mode": "archive", "collections": collections, "tracked": len(models),
             "kwargs": kwargs, "calibration": calibration}
    return rehost(models, recipes, filepath, format, host, extra, atol, rtol,
                  given or None, format_options.get("quantization"), carried, context=context)


def _archive_options(recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
                     format_options: Mapping[str, Any]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                dict[str, list[list[Any]]]]:
    """What of an archive's format options travels to the child: the plain
    options (JSON), the calibration batches as arrays (``carried.npz``: key
    ``cal__<endpoint index>__<batch>__<input index>``) with their layout
    (endpoint -> input names and batch count), and the first two batches of
    each endpoint as the cases the artifact is compared on.

    Raises:
        QuantizationError: calibration data that does not fit an endpoint.
        SignatureError: an option that is not a plain value.
    """
    import types

    import numpy as np

    kwargs = dict(format_options)
    data = kwargs.pop("calibration_data", None)
    views = [types.SimpleNamespace(name=r.name, signature=r.signature,
                                   input_names=flat_names(r.signature)) for r, _ in recipes]
    batches = calibration_by_endpoint(views, data)
    carried: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for e, (name, endpoint_batches) in enumerate(batches.items()):
        names = list(endpoint_batches[0]) if endpoint_batches else []
        for b, batch in enumerate(endpoint_batches):
            for i, input_name in enumerate(names):
                carried[f"cal__{e}__{b}__{i}"] = np.asarray(batch[input_name])
        layout[name] = {"index": e, "names": names, "batches": len(endpoint_batches)}
    given = {name: [list(b.values()) for b in bs[:2]] for name, bs in batches.items() if bs}
    return json_kwargs(kwargs), carried, layout, given

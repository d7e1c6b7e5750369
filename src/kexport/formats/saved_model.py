"""TensorFlow SavedModel writer.

Layout of what we write (a normal SavedModel, nothing kexport-specific is
needed to load it):

- one attribute per endpoint on the root object (``reloaded.serve(x)``),
  taking and returning the same structures as the Keras function;
- one serving signature per endpoint, taking inputs keyed by the Keras input
  names and returning outputs keyed by the Keras output names; the first
  endpoint is also ``serving_default`` unless one already has that name;
- ``variables`` / ``trainable_variables`` / ``non_trainable_variables`` of the
  tracked layers, and every variable collection, as root attributes;
- ``assets.extra/kexport.json``: the kexport manifest (producer, versions,
  backend, format, default endpoint, endpoint specs).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target
from kexport.artifact import SAVED_MODEL_MANIFEST, SERVING_DEFAULT, Manifest
from kexport.context import ExportContext, step_label
from kexport.errors import CaptureError, KexportError, SignatureTypeError, WriteError
from kexport.signature import flatten, pack_as

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint
    from kexport.formats._writer import EndpointArchive

__all__ = ["write_archive"]


def _signature_function(endpoint: TracedEndpoint) -> Any:
    """A flat, named ``tf.function`` for the endpoint's serving signature."""
    import tensorflow as tf

    flat = flatten(endpoint.signature)
    specs = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n)
             for s, n in zip(flat, endpoint.input_names)]
    structure = endpoint.signature
    names = endpoint.output_names

    @tf.function(input_signature=specs, autograph=False)
    def signature(*flat_inputs: Any) -> dict[str, Any]:
        args = pack_as(list(structure), list(flat_inputs))
        outputs = endpoint.function(*args)
        return dict(zip(names, tf.nest.flatten(outputs)))

    return signature


class _TracedWhileSaving:
    """The concrete functions of an endpoint that ``tf.saved_model.save`` keeps.

    TensorFlow's function cache keys traces by the save context, so saving
    traces every endpoint ``tf.function`` once more; only that trace is the
    reloaded endpoint. An alias naming the traces made before saving too would
    not match the reloaded function, and ``LoadOptions(experimental_load_function_aliases=True)``
    would give a list instead of a callable. TensorFlow accepts an iterable of
    concrete functions as an alias and reads it after tracing, so this one
    yields the traces made while saving (all of them if there were none).
    """

    def __init__(self, function: Any) -> None:
        self._function = function
        self._before = {c.name for c in function._list_all_concrete_functions()}

    def __iter__(self) -> Any:
        traces = list(self._function._list_all_concrete_functions())
        new = [c for c in traces if c.name not in self._before]
        return iter(new or traces)


def _saved_aliases(options: Any, endpoints: list[TracedEndpoint]) -> Any:
    """``options`` with aliases of endpoint functions naming the traces that are saved.

    An alias may name an endpoint's ``tf.function`` (what ``add_endpoint``
    returns) or one of its concrete functions; other aliases are kept as given.
    """
    import copy

    aliases = getattr(options, "function_aliases", None)
    if not aliases:
        return options
    by_trace: dict[Any, Any] = {}
    for endpoint in endpoints:
        for concrete in endpoint.function._list_all_concrete_functions():
            by_trace[concrete.name] = endpoint.function
    rewritten = {}
    for alias, value in aliases.items():
        function = next((e.function for e in endpoints if e.function is value), None)
        if function is None:
            function = by_trace.get(getattr(value, "name", None))
        rewritten[alias] = value if function is None else _TracedWhileSaving(function)
    options = copy.copy(options)
    options.function_aliases = rewritten
    return options


def metadata(archive: EndpointArchive, context: ExportContext) -> Manifest:
    """What the artifact says about itself (no local paths); written in a re-host
    child, also the backend the model came from (``route="rehost"``), so the
    manifest is final as written."""
    manifest = Manifest.build(archive.endpoints, format="tf_saved_model",
                              backend=archive.backend, **context.recorded())
    source = context.source_backend
    return manifest if source is None else dataclasses.replace(
        manifest, source_backend=source, route="rehost")


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, *,
                  context: ExportContext) -> None:
    """Write ``archive`` as a SavedModel at ``filepath`` (atomically)."""
    import tensorflow as tf

    if options is not None and not isinstance(options, tf.saved_model.SaveOptions):
        raise SignatureTypeError(
            "Expected `options` to be a tf.saved_model.SaveOptions. Received: "
            f"{type(options).__name__}"
        )
    root = tf.__internal__.tracking.AutoTrackable()
    state = archive.trackables()
    root._kexport_all_variables = list(state["variables"])
    root._kexport_resources = list(state["resources"])
    if state["tracked_layers"]:
        # As the tracked layers split them (a frozen layer's variables are
        # non-trainable although their tf.Variable was made trainable).
        root.variables = list(state["tracked"])
        root.trainable_variables = list(state["tracked_trainable"])
        root.non_trainable_variables = list(state["tracked_non_trainable"])
    for name, variables in archive.collections.items():
        setattr(root, name, list(variables))
    signatures = {}
    for endpoint in archive.endpoints:
        setattr(root, endpoint.name, endpoint.function)
        # A tf.function, not a concrete one: TensorFlow traces it inside its save
        # context, where the endpoint is traced anew (see _saved_aliases).
        signatures[endpoint.name] = _signature_function(endpoint)
    first = archive.endpoints[0].name
    if SERVING_DEFAULT not in signatures:
        signatures[SERVING_DEFAULT] = signatures[first]
    options = _saved_aliases(options, archive.endpoints)
    with atomic_target(filepath, is_dir=True, overwrite=context.overwrite) as tmp:
        try:
            with archive.save_context():
                tf.saved_model.save(root, os.fspath(tmp), signatures=signatures,
                                    options=options)
        except KexportError:
            raise
        except Exception as e:
            if "untracked" in str(e).lower():
                raise CaptureError(
                    f"{step_label('convert', 'tf_saved_model')}: an endpoint uses a "
                    f"TensorFlow resource that is not tracked: {e}. Next step: "
                    "call archive.track(resource) for it."
                ) from e
            raise WriteError(f"{step_label('convert', 'tf_saved_model')} failed: {e}") from e
        meta_path = tmp / SAVED_MODEL_MANIFEST
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(metadata(archive, context).dumps())
        context.check_staged(tmp)  # before it is placed: a failed check places nothing
    if context.printer.on:
        _summary.print_summary("tf_saved_model", archive.endpoints, filepath, say=context.printer,
                               default=first if first != SERVING_DEFAULT else None)

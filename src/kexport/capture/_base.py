"""What every capture shares: variable bookkeeping, tables, names, outputs.

This module holds :class:`TracedEndpoint` and the :class:`Capture` base class;
the pieces it builds on live beside it: finding the layers an endpoint uses
(:mod:`kexport.capture._layers`), naming outputs and parameters
(:mod:`kexport.capture._naming`) and adopting endpoints that are
``tf.function`` already (:mod:`kexport.capture._tf_function`). The names other
modules import from here stay importable from here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kexport.capture._layers import _is_keras_layer, _lookup_tables, discover_layers, owner_model
from kexport.capture._naming import _check_positional, output_names
from kexport.capture._tf_function import _np_dtype, _to_plain, _traced_tf_function
from kexport.capture.endpoint import recipe_or_reason
from kexport.capture.precision import at_boundary, mixed_compute_dtype
from kexport.context import step_label
from kexport.errors import CaptureError, CaptureValueError, SignatureError, SignatureTypeError
from kexport.signature import Spec, flat_names, flatten_with_paths

__all__ = ["Capture", "TracedEndpoint", "discover_layers", "is_tf_variable", "owner_model",
           "output_names"]


def is_tf_variable(value: Any) -> bool:
    """Whether ``value`` is a ``tf.Variable`` (without importing TensorFlow for it)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.Variable)


@dataclass
class TracedEndpoint:
    """One endpoint after capture.

    Attributes:
        name: the endpoint's name (a signature key in a SavedModel).
        function: the ``tf.function`` with a fixed input signature.
        signature: one structure of :class:`Spec` per positional argument.
        input_names: one unique name per flat input.
        output_names: one unique name per flat output.
        output_specs: one :class:`Spec` per flat output.
    """

    name: str
    function: Any
    signature: list[Any]
    input_names: list[str]
    output_names: list[str] = field(default_factory=list)
    output_specs: list[Spec] = field(default_factory=list)
    owner: Any | None = None


class Capture:
    """Base class: trace endpoints into ``tf.function`` over ``tf.Variable`` state.

    Subclasses implement :meth:`_trace` (and may override :meth:`_variables_of`)
    for their backend. The archive calls :meth:`track`, :meth:`trace`,
    :meth:`collection` and reads :meth:`trackables`.
    """

    backend: str = ""

    def __init__(self) -> None:
        self._tracked_layers: list[Any] = []
        self._resources: list[Any] = []  # non-variable TF trackables (tables)
        self._tracked_resources: list[Any] = []  # those tracked explicitly, not via a layer
        self._variables: dict[int, Any] = {}  # id(tf var) -> tf var
        # endpoint name -> (EndpointRecipe, or why it is none; the live function)
        self._described: dict[str, tuple[Any, Callable[..., Any]]] = {}
        # endpoint name -> its signature as a capture refined it (bounds it found)
        self._refined: dict[str, list[Any]] = {}

    # -- tracking -------------------------------------------------------------
    def track(self, resource: Any) -> None:
        """Track a Keras layer/model or a TensorFlow trackable resource."""
        import tensorflow as tf

        if _is_keras_layer(resource):
            if self._is_tracked(resource):
                return
            self._tracked_layers.append(resource)
            for v in self._variables_of(resource):
                self._variables[id(v)] = v
            for table in _lookup_tables(resource):
                self._add_resource(table)
            return
        if isinstance(resource, tf.__internal__.tracking.Trackable):
            self._add_resource(resource)
            if all(resource is not r for r in self._tracked_resources):
                self._tracked_resources.append(resource)
            return
        raise CaptureValueError(
            "Expected a Keras layer/model or a TensorFlow trackable resource "
            f"(e.g. tf.lookup.StaticHashTable). Received: {type(resource).__name__}"
        )

    def _is_tracked(self, layer: Any) -> bool:
        """Whether ``layer`` is tracked already; refuses layers that are not built."""
        if any(layer is t for t in self._tracked_layers):
            return True
        if not layer.built:
            raise CaptureValueError(
                f"Expected a built layer or model. Received: {type(layer).__name__} "
                f"'{layer.name}' which is not built; call it on data (or build it) "
                "before tracking it."
            )
        return False

    def _add_resource(self, resource: Any) -> None:
        if all(resource is not r for r in self._resources):
            self._resources.append(resource)

    def _variables_of(self, layer: Any) -> list[Any]:
        """The ``tf.Variable`` objects that hold ``layer``'s state."""
        return [self._held(v) for v in layer.variables]

    def _held(self, variable: Any) -> Any:
        """What the artifact holds for a Keras variable (a ``tf.Variable`` here)."""
        raise NotImplementedError

    def collection(self, variables: Any) -> list[Any]:
        """The ``tf.Variable`` objects behind Keras ``variables``."""
        raise NotImplementedError

    def _exposed(self, variable: Any) -> Any:
        """What ``ExportArchive.variables`` lists for a Keras variable of a tracked
        layer: the variable itself, where the artifact's state is that variable."""
        return variable

    def tracked_variables(self, held: bool = False) -> dict[str, list[Any]]:
        """``variables``, ``trainable_variables`` and ``non_trainable_variables`` of
        the tracked layers and models, in tracking order, each variable once.

        A layer's split is its own (a frozen layer's variables are non-trainable,
        whatever the flag of the ``tf.Variable`` behind them says); each variable
        is shown as :meth:`_exposed` makes it, or as the artifact holds it
        (:meth:`_held`) when ``held``.
        """
        show = self._held if held else self._exposed
        out: dict[str, list[Any]] = {"variables": [], "trainable_variables": [],
                                     "non_trainable_variables": []}
        seen: dict[str, set[int]] = {k: set() for k in out}
        for layer in self._tracked_layers:
            for key in out:
                for v in getattr(layer, key):
                    if id(v) not in seen[key]:
                        seen[key].add(id(v))
                        out[key].append(show(v))
        return out

    def described(self) -> dict[str, tuple[Any, Callable[..., Any]]]:
        """Each endpoint as data: ``name -> (EndpointRecipe or why not, live function)``.

        Formats this capture cannot write in-process are written by re-hosting
        the archive (:func:`kexport.rehost.write_archive_rehosted`),
        which needs every endpoint described; recipes index the tracked layers.
        """
        return dict(self._described)

    def _options_problem(self, options: dict[str, Any]) -> str:
        """Why capture ``options`` given to ``add_endpoint`` cannot be re-hosted, or ``""``."""
        return f"it was added with capture options {sorted(options)}" if options else ""

    def save_context(self) -> contextlib.AbstractContextManager[None]:
        """A context that writers enter while serialising traced functions."""
        return contextlib.nullcontext()

    def trackables(self) -> dict[str, Any]:
        """What the written artifact must hold for its functions to run."""
        split = self.tracked_variables(held=True)  # a layer inside a tracked model: once
        return {
            "variables": list(self._variables.values()),
            "resources": list(self._resources),
            "tracked": split["variables"],
            "tracked_trainable": split["trainable_variables"],
            "tracked_non_trainable": split["non_trainable_variables"],
            "tracked_layers": list(self._tracked_layers),
            "tracked_resources": list(self._tracked_resources),
        }

    # -- tracing --------------------------------------------------------------
    def trace(self, name: str, fn: Callable[..., Any], signature: list[Any] | None,
              **kwargs: Any) -> TracedEndpoint:
        """Trace ``fn`` into a ``tf.function`` for the endpoint ``name``."""
        import tensorflow as tf

        owner = owner_model(fn)
        for layer in discover_layers(fn):
            self.track(layer) if layer.built else None
        if isinstance(fn, tf.types.experimental.PolymorphicFunction) or hasattr(
                fn, "get_concrete_function"):
            if kwargs:
                raise SignatureTypeError(
                    f"Endpoint '{name}' is a tf.function; extra arguments "
                    f"{sorted(kwargs)} cannot be applied to it."
                )
            function, signature = _traced_tf_function(name, fn, signature)
        else:
            if signature is None:
                raise SignatureError(
                    f"Endpoint '{name}': the shapes and dtypes of the inputs of "
                    "`fn` are unknown. Expected `input_signature=` (a list with "
                    "one spec per positional argument) or a tf.function that "
                    "was called at least once. Received: input_signature=None"
                )
            _check_positional(name, fn, signature)
            mixed = any(mixed_compute_dtype(layer) for layer in discover_layers(fn))
            function = self._trace(name, at_boundary(fn) if mixed else fn, signature, **kwargs)
            signature = self._refined.pop(name, signature)
        try:
            concrete = function.get_concrete_function()
        except Exception as e:
            raise CaptureError(
                f"{step_label('capture', f'{self.backend} backend')}: tracing endpoint "
                f"'{name}' failed: {type(e).__name__}: {e}"
            ) from e
        for v in concrete.variables:
            self._variables.setdefault(id(v), v)
        outputs = concrete.structured_outputs
        endpoint = TracedEndpoint(
            name=name,
            function=function,
            signature=signature,
            input_names=flat_names(signature),
            owner=owner,
        )
        endpoint.output_names = output_names(outputs, owner)
        endpoint.output_specs = [
            Spec(tuple(t.shape.as_list()), _np_dtype(t.dtype), n)
            for (_, t), n in zip(flatten_with_paths(_to_plain(outputs)), endpoint.output_names)
        ]
        self._describe(name, fn, endpoint.signature, kwargs)
        return endpoint

    def _describe(self, name: str, fn: Callable[..., Any], signature: list[Any],
                  options: dict[str, Any]) -> None:
        """Record ``fn`` as data too (best-effort, no tracing; see :meth:`described`)."""
        recipe: Any = self._options_problem(options)
        if not recipe:
            try:
                recipe = recipe_or_reason(name, fn, self._tracked_layers, signature)
            except Exception as e:  # recording must never break in-process formats
                recipe = f"describing it failed ({type(e).__name__}: {e})"
        self._described[name] = (recipe, fn)

    def _trace(self, name: str, fn: Callable[..., Any], signature: list[Any],
               **kwargs: Any) -> Any:
        raise NotImplementedError

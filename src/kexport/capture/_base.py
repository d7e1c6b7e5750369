"""What every capture shares: variable bookkeeping, tables, names, outputs."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kexport.capture.endpoint import recipe_or_reason
from kexport.capture.precision import at_boundary, mixed_compute_dtype
from kexport.errors import CaptureError, CaptureValueError, SignatureError, SignatureTypeError
from kexport.signature import (
    Spec,
    _dtype_name,
    _to_spec,
    flat_names,
    flatten_with_paths,
    map_structure,
    pack_as,
    sanitize_name,
    unique_name,
)

__all__ = ["Capture", "TracedEndpoint", "discover_layers", "is_tf_variable", "owner_model",
           "output_names"]


def is_tf_variable(value: Any) -> bool:
    """Whether ``value`` is a ``tf.Variable`` (without importing TensorFlow for it)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, tf.Variable)


def _is_keras_layer(obj: Any) -> bool:
    import keras

    return isinstance(obj, keras.layers.Layer)


def discover_layers(fn: Callable[..., Any]) -> list[Any]:
    """Keras layers that ``fn`` uses: its bound ``self``, closure cells, globals.

    This is how endpoints "track automatically" the models they call, e.g.
    ``model.call`` or ``lambda x: model(x, training=True)``.
    """
    found: list[Any] = []

    def add(obj: Any) -> None:
        if _is_keras_layer(obj) and all(obj is not f for f in found):
            found.append(obj)

    seen: set[int] = set()

    def visit(f: Any, depth: int = 0) -> None:
        if f is None or id(f) in seen or depth > 3:
            return
        seen.add(id(f))
        if _is_keras_layer(f):
            add(f)
            return
        if isinstance(f, functools.partial):
            visit(f.func, depth + 1)
            return
        add(getattr(f, "__self__", None))
        f = getattr(f, "python_function", f)  # tf.function
        f = getattr(f, "__func__", f)
        for cell in getattr(f, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if callable(value) and not _is_keras_layer(value):
                visit(value, depth + 1)
            add(value)
        code = getattr(f, "__code__", None)
        glb = getattr(f, "__globals__", {})
        if code is not None:
            for name in code.co_names:
                value = glb.get(name)
                add(value)

    visit(fn)
    return found


def owner_model(fn: Callable[..., Any]) -> Any | None:
    """The single Keras model/layer ``fn`` calls, when there is exactly one."""
    layers = discover_layers(fn)
    return layers[0] if len(layers) == 1 else None


def _model_output_names(model: Any, count: int) -> list[str] | None:
    names = getattr(model, "output_names", None)
    if names is None and getattr(model, "_functional", None) is not None:
        layers = getattr(model, "layers", None)
        names = [layers[-1].name] if layers else None
    if names is not None and len(names) == count:
        return [str(n) for n in names]
    return None


def output_names(structure: Any, owner: Any | None) -> list[str]:
    """Names for the flat outputs of an endpoint.

    Dict outputs are named by their keys; a Functional or Sequential model's
    outputs by their output layers' names; anything else ``output_{i}``.
    """
    pairs = flatten_with_paths(structure)
    names: list[str] = []
    if pairs and all(any(isinstance(p, str) for p in path) for path, _ in pairs):
        names = ["_".join(str(p) for p in path if isinstance(p, str)) for path, _ in pairs]
    elif owner is not None:
        names = _model_output_names(owner, len(pairs)) or []
    if not names:
        names = [f"output_{i}" for i in range(len(pairs))]
    out, seen = [], set()
    for base in names:
        out.append(unique_name(sanitize_name(base), seen))
    return out


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
                f"Step 2/3 (capture, {self.backend} backend): tracing endpoint "
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


def _to_plain(structure: Any) -> Any:
    """Turn TF's wrapped dict/list outputs into plain Python containers."""
    from collections.abc import Mapping

    if isinstance(structure, Mapping):
        return {k: _to_plain(v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_to_plain(v) for v in structure]
    return structure


def _np_dtype(dtype: Any) -> str:
    return _dtype_name(dtype)


def tf_specs(signature: list[Any], names: list[str]) -> list[Any]:
    """``tf.TensorSpec`` structures for ``signature``, named by ``names``."""
    import tensorflow as tf


    flat = [spec for _, spec in flatten_with_paths(signature)]
    ordered = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n) for s, n in zip(flat, names)]
    return pack_as(list(signature), ordered)


def _from_tf_spec(spec: Any) -> Spec:
    return _to_spec(spec)


def _traced_tf_function(name: str, fn: Any, signature: list[Any] | None) -> tuple[Any, list[Any]]:
    """Use an existing ``tf.function``: with its own signature or a traced one."""

    own = getattr(fn, "input_signature", None)
    if signature is not None:
        names = flat_names(signature)
        specs = tf_specs(signature, names)
        if own is None:
            concrete = fn.get_concrete_function(*specs)
        else:  # the tf.function fixes its signature: the given one must fit inside it
            _check_fits(name, signature, own)
            concrete = fn.get_concrete_function()
        return _as_function(concrete, specs, fn), signature
    concretes = fn._list_all_concrete_functions()  # a declared signature is listed too
    if not concretes:
        raise SignatureError(
            f"Endpoint '{name}' is a tf.function that was never called, so its "
            "input shapes are unknown. Call it once on sample data, or pass "
            "`input_signature=`."
        )
    concrete = concretes[0]
    args, _ = concrete.structured_input_signature
    if getattr(fn, "input_signature", None) is None:
        # Traced once on a sample: serve any batch size, like every other endpoint.
        relaxed = [map_structure(_relax_batch, a) for a in args]
        try:
            concrete = fn.get_concrete_function(*relaxed)
            args = relaxed
        except Exception:
            pass
    signature = [map_structure(_from_tf_spec, a) for a in args]
    return _as_function(concrete, list(args), fn), signature


def _check_fits(name: str, signature: list[Any], own: Any) -> None:
    """Refuse an ``input_signature`` that a ``tf.function``'s own one does not accept.

    Every given input must have the dtype and rank of the function's, and each
    dimension the function fixes must be fixed to the same size (a dimension
    the function leaves dynamic may be anything).
    """
    import tensorflow as tf

    given = [spec for _, spec in flatten_with_paths(signature)]
    declared = [_from_tf_spec(s) for s in tf.nest.flatten(list(own))]

    def fits(g: Spec, d: Spec) -> bool:
        return g.dtype == d.dtype and len(g.shape) == len(d.shape) and all(
            dd is None or gd == dd for gd, dd in zip(g.shape, d.shape))

    if len(given) != len(declared) or not all(map(fits, given, declared)):
        show = ", ".join(f"{s.shape} {s.dtype}" for s in declared)
        got = ", ".join(f"{s.shape} {s.dtype}" for s in given)
        raise SignatureTypeError(
            f"Endpoint '{name}': `fn` is a tf.function with its own input_signature, "
            f"which does not accept the `input_signature` given. Expected inputs that fit "
            f"[{show}]. Received: [{got}]. Next step: pass no `input_signature` (the "
            "function's own is used) or one that fits it."
        )


def _relax_batch(spec: Any) -> Any:
    import tensorflow as tf

    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    if not shape:
        return spec
    return tf.TensorSpec([None] + shape[1:], spec.dtype, name=spec.name)


def _as_function(concrete: Any, specs: list[Any], fn: Any = None) -> Any:
    import tensorflow as tf

    def endpoint(*args: Any) -> Any:
        return concrete(*args)

    return tf.function(named_like(fn, len(specs), endpoint), input_signature=specs,
                       autograph=False)


def parameter_names(fn: Callable[..., Any], count: int) -> list[str] | None:
    """The names of the first ``count`` positional parameters of ``fn``.

    ``None`` when ``fn`` takes ``*args`` there or its signature cannot be read:
    the traced function then names its arguments ``args_0``, ``args_1``, ...
    as TensorFlow does for ``*args``.
    """
    fn = getattr(fn, "python_function", fn)  # a tf.function: its Python function
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        positional.append(p.name)
    if len(positional) < count:
        return None
    return positional[:count]


def named_like(fn: Callable[..., Any], count: int,
               body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` (which takes ``count`` positional tensors) named as ``fn`` names them.

    A ``tf.function`` over a Python function takes its arguments by position
    or by the function's parameter names, and so does the reloaded SavedModel
    function (``serve(query=..., value=...)``). Captures that trace a wrapper
    rather than ``fn`` itself (JAX: the ``jax2tf`` call) wrap it with this, so
    the artifact's function takes ``fn``'s names on every backend.
    """
    names = parameter_names(fn, count)
    if names is None:
        return body

    @functools.wraps(body)
    def named(*args: Any) -> Any:
        return body(*args)

    named.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return named


def _check_positional(name: str, fn: Callable[..., Any], signature: list[Any]) -> None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    # `training` and `mask` are Keras call options, never serving inputs.
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in ("training", "mask")]
    required = [p for p in positional if p.default is p.empty]
    if not (len(required) <= len(signature) <= len(positional)):
        raise SignatureTypeError(
            f"Endpoint '{name}': expected `input_signature` to hold one entry per "
            f"positional argument of `fn` ({', '.join(p.name for p in positional)}). "
            f"Received {len(signature)} entries."
        )


def lookup_layers(layer: Any) -> list[Any]:
    """Keras lookup layers (which hold TensorFlow tables) inside ``layer``."""
    import keras

    kinds = (keras.layers.StringLookup, keras.layers.IntegerLookup,
             keras.layers.TextVectorization)
    sublayers = [layer] + list(layer._flatten_layers(include_self=False))
    return [sub for sub in sublayers if isinstance(sub, kinds)]


def _lookup_tables(layer: Any) -> list[Any]:
    """TensorFlow lookup tables held by Keras lookup layers inside ``layer``."""
    tables = []
    for sub in lookup_layers(layer):
        inner = getattr(sub, "_lookup_layer", sub)
        table = getattr(inner, "lookup_table", None)
        if table is not None:
            tables.append(table)
    return tables

"""JAX backend: endpoints become stateless JAX functions, converted by ``jax2tf``.

The model's state lives in ``tf.Variable`` copies of its Keras variables. A
traced endpoint reads them, calls the ``jax2tf``-converted stateless function
and, unless ``is_static=True``, writes updated non-trainable state (seed
generator counters, for instance) back, so the artifact behaves like the live
model call after call.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kexport._dims import largest_size, with_bounds
from kexport._inference import stateless_run
from kexport.capture._base import Capture, TracedEndpoint, is_tf_variable
from kexport.capture._jax_shapes import fit_polymorphic_shapes
from kexport.capture._layers import lookup_layers
from kexport.capture._naming import named_like
from kexport.capture._tf_function import tf_specs
from kexport.context import step_label
from kexport.errors import CaptureError, SignatureError, SignatureTypeError
from kexport.signature import Spec, flat_names, flatten, map_structure

__all__ = ["JaxCapture", "polymorphic_constraints_for", "polymorphic_shapes_for"]


def polymorphic_shapes_for(signature: list[Any]) -> list[Any]:
    """``jax2tf`` polymorphic shape strings for each positional argument.

    Each dynamic axis is named by its symbol in the signature's dimension plan
    (:mod:`kexport._dims`): ``batch`` on axis 0 of every input (so inputs that
    are combined along the batch agree), one symbol per group of axes the
    model forces equal (``d<k>``, shared across inputs at the same position,
    where nothing was planned). Pass ``jax2tf_kwargs={"polymorphic_shapes":
    ...}`` to name them yourself.
    """

    def one(spec: Spec) -> str:
        dims = []
        for axis, d in enumerate(spec.shape):
            dims.append(spec.symbol(axis) if d is None else str(d))
        return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")

    return [map_structure(one, arg) for arg in signature]


def polymorphic_constraints_for(signature: list[Any]) -> list[str]:
    """``"<symbol> <= <max>"`` for every bounded symbol of ``signature``."""
    out: list[str] = []
    for spec in flatten(signature):
        for axis in spec.dynamic_axes:
            bound = spec.bound(axis)
            text = f"{spec.symbol(axis)} <= {bound}"
            if bound is not None and text not in out:
                out.append(text)
    return out


_NUMBER = re.compile(r"'?(-?\d+)'?")


def _find_bounds(fn: Callable[..., Any], stateless: Callable[..., Any], signature: list[Any],
                 state: tuple[list[Any], list[Any]]) -> list[Any]:
    """``signature`` with the bounds the model implies, found where JAX's shape
    polymorphism cannot decide a comparison (``d1 <= 64`` for a position
    embedding of 64 rows): the symbol the message names gets the largest size
    the live model runs at (the message's number checked first,
    :func:`kexport._dims.largest_size`). One abstract trace per bound; nothing
    compiles."""
    import jax
    import numpy as np

    symbols = {spec.symbol(a) for spec in flatten(signature) for a in spec.dynamic_axes}
    for _ in range(len(symbols)):
        scope = jax.export.SymbolicScope(polymorphic_constraints_for(signature))
        args = [map_structure(lambda spec, scope=scope: jax.ShapeDtypeStruct(
            jax.export.symbolic_shape(polymorphic_shapes_for([spec])[0], scope=scope),
            np.dtype(spec.dtype)), arg) for arg in signature]
        try:
            jax.eval_shape(stateless, *state, *args)
            return signature
        except Exception as e:
            text = str(e)
            if "inconclusive" not in text.lower():
                return signature  # not a bound: jax2tf reports it as it is
            named = [s for s in sorted(symbols, key=text.find)
                     if s != "batch" and re.search(rf"\b{re.escape(s)}\b", text)
                     and text.find(s) >= 0]
            if not named:
                return signature
            numbers = [int(n) for n in _NUMBER.findall(text.split(named[0], 1)[1])][:1]
            bound = largest_size(fn, signature, named[0], hint=numbers[0] if numbers else None)
            if bound is None:
                return signature
            signature = with_bounds(signature, {named[0]: bound})
    return signature


class _SourcePathsOff:
    """Reference-counted: jax's source-path regex is ``.*`` while anyone holds it.

    ``jax.config`` is process-wide, so one count for the process: the setting
    stays on while any thread is inside :func:`_no_source_paths` and the
    user's previous value comes back when the last one leaves.
    """

    _KEY = "jax_hlo_source_file_canonicalization_regex"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._previous: Any = None

    def acquire(self) -> None:
        import jax

        with self._lock:
            if self._users == 0:
                self._previous = getattr(jax.config, self._KEY)
                jax.config.update(self._KEY, ".*")
            self._users += 1

    def release(self) -> None:
        import jax

        with self._lock:
            self._users -= 1
            if self._users == 0:
                jax.config.update(self._KEY, self._previous)


# One for the process: it mirrors jax.config, a process-wide setting of JAX's.
_SOURCE_PATHS_OFF = _SourcePathsOff()


@contextlib.contextmanager
def _no_source_paths() -> Iterator[None]:
    """Keep local source paths out of the serialized StableHLO module.

    ``jax2tf`` native serialization records each op's Python source location
    (``loc("/home/user/project/model.py":12:3)``) inside the SavedModel. JAX
    strips whatever matches ``jax_hlo_source_file_canonicalization_regex``
    from those file names; matching everything drops them, leaving function
    names only. The setting is process-wide, so it is reference-counted: it
    stays on while any thread is inside this context and the user's previous
    value comes back when the last one leaves.
    """
    _SOURCE_PATHS_OFF.acquire()
    try:
        yield
    finally:
        _SOURCE_PATHS_OFF.release()


def tf_only_layers(model: Any) -> list[Any]:
    """Layers inside ``model`` that hold TensorFlow lookup tables.

    ``StringLookup``, ``IntegerLookup`` and ``TextVectorization`` run their
    tables in TensorFlow even on the JAX backend, so ``jax2tf`` cannot trace
    them.
    """

    return lookup_layers(model)


def native_problem(model: Any) -> str:
    """Why the native JAX route cannot export ``model``; ``""`` when it can."""
    layers = tf_only_layers(model) if model is not None else []
    if not layers:
        return ""
    names = ", ".join(f"'{layer.name}' ({type(layer).__name__})" for layer in layers)
    return (f"jax2tf cannot trace the TensorFlow lookup tables of layer(s) {names}; "
            "export such models with KERAS_BACKEND=tensorflow")


def written_with_jax2tf(fn: Any, depth: int = 0) -> bool:
    """Whether ``fn`` is, or calls, a function returned by ``jax2tf.convert``.

    Such a function takes and returns TensorFlow tensors: an endpoint written
    with it (``lambda x: converted(params, x)``, as JAX users write for
    TensorFlow serving) is TensorFlow code already. Looks through
    ``functools.partial``, bound methods, ``__wrapped__``, closure cells and the
    globals ``fn``'s code names, a few levels deep.
    """
    from jax.experimental import jax2tf

    if fn is None or depth > 3:
        return False
    if getattr(fn, "__module__", None) == jax2tf.convert.__module__ and getattr(
            fn, "__qualname__", "").startswith(jax2tf.convert.__qualname__ + ".<locals>"):
        return True
    inner = [getattr(fn, "func", None), getattr(fn, "__wrapped__", None),
             getattr(fn, "python_function", None), getattr(fn, "__func__", None)]
    code = getattr(fn, "__code__", None)
    if code is not None:
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):
                inner.append(cell.cell_contents)
        glb = getattr(fn, "__globals__", {})
        inner += [glb.get(n) for n in code.co_names]
    return any(callable(f) and f is not fn and written_with_jax2tf(f, depth + 1)
               for f in inner)


class JaxCapture(Capture):
    """Converts Keras functions on the JAX backend with ``jax2tf``."""

    backend = "jax"

    def save_context(self) -> contextlib.AbstractContextManager[None]:
        """Lowerings done while saving (e.g. gradients) also drop source paths."""
        return _no_source_paths()

    def __init__(self) -> None:
        super().__init__()
        self._by_keras_id: dict[int, Any] = {}  # id(keras var) -> tf.Variable
        self._keras_vars: dict[int, Any] = {}  # id(keras var) -> keras var

    def _tf_var(self, v: Any) -> Any:
        import numpy as np
        import tensorflow as tf

        key = id(v)
        if key not in self._by_keras_id:
            value = np.asarray(v.value)
            self._by_keras_id[key] = tf.Variable(
                value, dtype=tf.as_dtype(value.dtype), trainable=bool(v.trainable),
                name=v.path.replace("/", "_") if getattr(v, "path", None) else None,
            )
            self._keras_vars[key] = v
        return self._by_keras_id[key]

    def _held(self, variable: Any) -> Any:
        return self._tf_var(variable)

    def _exposed(self, variable: Any) -> Any:
        """The ``tf.Variable`` copy the artifact holds (JAX arrays cannot be saved)."""
        return self._tf_var(variable)

    def _options_problem(self, options: dict[str, Any]) -> str:
        """``is_static`` only concerns this capture's state write-back, so it does not
        stop re-hosting; ``jax2tf_kwargs`` shape the jax2tf conversion, which a
        re-hosted archive does not use, so such an endpoint is not re-hosted."""
        if options.get("jax2tf_kwargs"):
            return ("it was added with jax2tf_kwargs, which only apply to the jax2tf "
                    "capture")
        return super()._options_problem({k: v for k, v in options.items()
                                         if k not in ("is_static", "jax2tf_kwargs")})

    def trace(self, name: str, fn: Callable[..., Any], signature: list[Any] | None,
              **kwargs: Any) -> TracedEndpoint:
        """As :meth:`Capture.trace`; the user's ``polymorphic_shapes`` are fitted to the
        signature first (:func:`kexport.capture._jax_shapes.fit_polymorphic_shapes`)."""
        options = kwargs.get("jax2tf_kwargs")
        if (signature is not None and isinstance(options, dict)
                and options.get("polymorphic_shapes") is not None
                and not hasattr(fn, "get_concrete_function")):
            poly, signature = fit_polymorphic_shapes(
                name, options["polymorphic_shapes"], signature,
                polymorphic_shapes_for(signature))
            kwargs["jax2tf_kwargs"] = {**options, "polymorphic_shapes": poly}
        return super().trace(name, fn, signature, **kwargs)

    def collection(self, variables: Any) -> list[Any]:
        """``tf.Variable`` copies of Keras variables; a ``tf.Variable`` given stays itself."""
        return [v if is_tf_variable(v) else self._tf_var(v) for v in variables]

    def _trace(self, name: str, fn: Callable[..., Any], signature: list[Any],
               is_static: bool = False, jax2tf_kwargs: dict[str, Any] | None = None,
               **kwargs: Any) -> Any:
        import tensorflow as tf
        from jax.experimental import jax2tf

        if kwargs:
            raise SignatureTypeError(
                f"Endpoint '{name}': unexpected keyword arguments {sorted(kwargs)}. "
                "Expected only `is_static` and `jax2tf_kwargs` on the JAX backend."
            )
        if not isinstance(is_static, bool):
            raise SignatureTypeError(
                f"Expected `is_static` to be a bool. Received: is_static={is_static!r}"
            )
        if written_with_jax2tf(fn):
            # Already TensorFlow (the user converted it with jax2tf): traced as it is.
            if jax2tf_kwargs is not None:
                raise SignatureTypeError(
                    f"Endpoint '{name}': `fn` calls a function converted with "
                    "jax2tf.convert already, so `jax2tf_kwargs` cannot apply to it. "
                    "Expected them in your own jax2tf.convert(...) call. Received: "
                    f"jax2tf_kwargs={jax2tf_kwargs!r}"
                )
            return tf.function(fn, input_signature=tf_specs(signature, flat_names(signature)),
                               autograph=False)
        for layer in self._tracked_layers:
            problem = native_problem(layer)
            if problem:
                raise CaptureError(f"{step_label('capture', 'jax backend')}, endpoint '{name}': "
                                   f"{problem}.")
        if not self._tracked_layers:
            raise CaptureError(
                f"Endpoint '{name}': no Keras layer or model is tracked and none "
                "could be found in `fn`. Call archive.track(model) first."
            )
        keras_vars = []
        for layer in self._tracked_layers:
            for v in layer.variables:
                if all(v is not k for k in keras_vars):
                    keras_vars.append(v)
        trainable = [v for v in keras_vars if v.trainable]
        frozen = [v for v in keras_vars if not v.trainable]
        tf_trainable = [self._tf_var(v) for v in trainable]
        tf_frozen = [self._tf_var(v) for v in frozen]

        def stateless(trainable_values: list[Any], frozen_values: list[Any], *args: Any) -> Any:
            outputs, updated = stateless_run(fn, trainable, frozen, trainable_values,
                                             frozen_values, *args)
            return outputs if is_static else (outputs, updated)

        if jax2tf_kwargs is not None and not isinstance(jax2tf_kwargs, dict):
            raise SignatureTypeError(
                f"Expected `jax2tf_kwargs` to be a dict. Received: {jax2tf_kwargs!r}"
            )
        options = dict(jax2tf_kwargs or {})
        user_shapes = options.pop("polymorphic_shapes", None)
        if not user_shapes:
            if any(a > 0 for spec in flatten(signature) for a in spec.dynamic_axes):
                state = ([v.value for v in trainable], [v.value for v in frozen])
                signature = _find_bounds(fn, stateless, signature, state)
                self._refined[name] = signature
            constraints = polymorphic_constraints_for(signature)
            if constraints:
                options["polymorphic_constraints"] = (
                    *options.get("polymorphic_constraints", ()), *constraints)
        poly = [None, None] + list(user_shapes or polymorphic_shapes_for(signature))
        options.setdefault("native_serialization", True)
        if options.get("native_serialization") is False:
            raise SignatureError(
                "jax2tf in this JAX version only supports native serialization. "
                "Expected jax2tf_kwargs['native_serialization'] to be True or "
                "unset. Received: False"
            )
        options.pop("native_serialization")  # the only mode left; passing it warns
        # Serving artifacts need no gradients; skipping them halves export work.
        options.setdefault("with_gradient", False)
        try:
            converted = jax2tf.convert(stateless, polymorphic_shapes=poly, **options)
        except TypeError as e:
            raise SignatureTypeError(f"Endpoint '{name}': invalid jax2tf_kwargs: {e}") from e
        specs = tf_specs(signature, flat_names(signature))

        def endpoint(*args: Any) -> Any:
            with _no_source_paths():
                values = converted([v.read_value() for v in tf_trainable],
                                   [v.read_value() for v in tf_frozen], *args)
            if is_static:
                return values
            outputs, updated = values
            for var, new in zip(tf_frozen, updated):
                var.assign(new)
            return outputs

        endpoint.__name__ = name
        # The reloaded function takes fn's parameter names, as on TensorFlow.
        return tf.function(named_like(fn, len(signature), endpoint), input_signature=specs,
                           autograph=False)


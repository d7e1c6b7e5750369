"""Models that travel to a re-host child by value, whatever their classes.

A model re-hosted onto another backend is rebuilt in a child process. Its
Keras config (JSON) is the first way there, but it needs every class to be
importable by name and to have a ``get_config`` returning every constructor
argument: a subclassed model defined in a notebook cell or a test, or one
whose constructor takes a list of layers, has neither. This module is the
second way, which does not depend on the classes at all:

* **parent** (:func:`describe_model`): the model is pickled with
  ``cloudpickle`` (classes that are not importable travel by value) through a
  pickler that turns every backend object into a backend-neutral recipe:

  - a Keras built-in layer (``keras.*`` class, e.g. a Functional model)
    becomes its Keras config, in which each custom layer it holds stands as a
    token that resolves to that layer travelling by value (below);
  - any other layer becomes its *state*: its class, the Keras base class it
    derives from and that base's constructor arguments (name, dtype policy,
    trainable), and its own attributes (numbers, functions, sub-layers, lists
    of layers, ...) -- everything its ``__init__`` and ``build`` left on it,
    so neither its constructor arguments nor a ``get_config`` are needed;
  - a variable becomes its shape, dtype, name and path (values travel
    separately, see :func:`variable_values`); a seed generator its seed and
    name; a tensor of the source backend a NumPy array.

* **child** (:func:`rebuild_model`): unpickling re-creates each layer under
  the child's backend: ``cls.__new__`` plus the Keras base's ``__init__``,
  then its attributes set again (so Keras tracks its sub-layers and
  variables), variables re-created under the name scopes of their original
  paths. :func:`kexport.rehost.pairing.assign_values` then assigns the source values **by path**
  (:func:`~kexport.rehost.pairing.pair_by_path`: the longest path suffix that is unique on both
  sides, then what paths cannot tell apart in order, shapes equal), never by
  position alone: a rebuilt model may list its variables in another order; a
  variable without a partner is a :class:`~kexport.errors.RouteRefused`.

Tensors and arrays that layers hold outside variables are carried by
:mod:`kexport.rehost.state` (a rebuild from a config loses what was
set after construction). What cannot travel is an attribute that cannot be pickled (an open file, a
lock, a generator ...): :func:`describe_model` raises
:class:`~kexport.errors.UnsupportedRouteError` naming the layer and the
attribute.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import pickle
from collections.abc import Iterator
from typing import Any

from kexport.errors import UnsupportedRouteError

__all__ = ["describe_model", "rebuild_model"]

# Keras sets these on a model lazily (training, compiling, the TensorFlow
# tracking machinery, PyTorch's parameter dict): they are the backend's and
# the trainer's state, not the model's own attributes, and are not carried.
_LAZY_KERAS_STATE = frozenset({
    "_torch_params", "_compile_config", "_compiled_trainable_state", "_eval_epoch_iterator",
    "_predict_epoch_iterator", "_jax_state", "_jax_state_synced", "history", "optimizer",
    "stop_training", "compiled_loss", "compiled_metrics",
})
_LAZY_PREFIXES = ("_self_", "_torch_", "_kexport_")


def _is_keras_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "keras"


def _keras_base(cls: type) -> type:
    """The first Keras class in ``cls``'s method resolution order."""
    return next(c for c in cls.__mro__ if _is_keras_class(c))


def _is_plain_base(base: type) -> bool:
    import keras

    return base in (keras.layers.Layer, keras.Model)


def _base_kwargs(layer: Any, base: type) -> dict[str, Any]:
    """Arguments of ``base.__init__`` that re-create the Keras part of ``layer``."""
    if _is_plain_base(base):
        return {"name": layer.name, "trainable": layer.trainable, "dtype": layer.dtype_policy}
    # a user subclass of a configurable Keras layer (e.g. of Dense): that layer's own config
    return dict(base.get_config(layer))


@functools.cache
def _plain_base_keys(base: type, backend: str) -> frozenset[str]:
    del backend  # part of the cache key only
    return _probe_keys(base, {"name": "kexport_probe"})


def _probe_keys(base: type, kwargs: dict[str, Any]) -> frozenset[str]:
    """Attribute names that ``base.__init__(**kwargs)`` sets on this backend."""
    probe = base.__new__(base)
    base.__init__(probe, **kwargs)
    return frozenset(vars(probe)) | frozenset(getattr(probe, "_modules", None) or {})


def _own_state(layer: Any, base: type) -> dict[str, Any]:
    """The attributes ``layer``'s own classes set (constructor and ``build``)."""
    import keras

    skip = (_plain_base_keys(base, keras.backend.backend()) if _is_plain_base(base)
            else _probe_keys(base, _base_kwargs(layer, base)))
    state: dict[str, Any] = {}
    names = list(vars(layer)) + list(getattr(layer, "_modules", None) or {})
    for name in names:
        if name in skip or name in _LAZY_KERAS_STATE or name.startswith(_LAZY_PREFIXES):
            continue
        state[name] = vars(layer)[name] if name in vars(layer) else getattr(layer, name)
    return state


def _scope_of(path: str, tail: int) -> list[str]:
    """The name scopes of ``path`` without its last ``tail`` segments."""
    parts = [p for p in path.split("/") if p]
    return parts[:-tail] if tail and len(parts) > tail else []


@contextlib.contextmanager
def _name_scopes(parts: list[str]) -> Iterator[None]:
    import keras

    with contextlib.ExitStack() as stack:
        for part in parts:
            stack.enter_context(keras.name_scope(part))
        yield


# -- child side: what the pickle calls ---------------------------------------------------------
def _from_config(config_json: str, classes: dict[str, type], scope: list[str]) -> Any:
    import keras

    # The config was produced by kexport from a live in-process model, not
    # read from an untrusted file, so Lambda layers may be rebuilt.
    with _name_scopes(scope):
        return keras.saving.deserialize_keras_object(
            json.loads(config_json), custom_objects=classes, safe_mode=False)


def _new_lambda(function: Any, output_shape: Any, mask: Any, arguments: Any, name: str,
                dtype: str, scope: list[str]) -> Any:
    """A ``Lambda`` layer again: its function by value (cloudpickle keeps the names it
    uses, which a Keras config loses), its output shape as the source graph knew it."""
    import keras

    with _name_scopes(scope):
        return keras.layers.Lambda(function, output_shape=output_shape, mask=mask,
                                   arguments=arguments, name=name, dtype=dtype)


def _output_shape(layer: Any) -> Any:
    """A ``Lambda``'s ``output_shape`` (without the batch axis), the one it was given or
    the one the source graph computed when it was called; ``None`` when neither is
    known (called more than once, or never)."""
    given = getattr(layer, "_output_shape", None)
    if given is not None:
        return given
    shapes = [[tuple(t.shape)[1:] for t in node.outputs]
              for node in getattr(layer, "_inbound_nodes", None) or []]
    if len(shapes) != 1 or not shapes[0]:
        return None
    return shapes[0][0] if len(shapes[0]) == 1 else shapes[0]


def _new_layer(cls: type, base: type, kwargs: dict[str, Any]) -> Any:
    layer = cls.__new__(cls)
    base.__init__(layer, **kwargs)
    return layer


def _set_layer_state(layer: Any, state: dict[str, Any]) -> None:
    for name, value in state["attributes"].items():
        setattr(layer, name, value)
    layer._build_shapes_dict = state["build_shapes"]
    layer.built = state["built"]


def _new_variable(shape: tuple[int, ...], dtype: str, trainable: bool, name: str,
                  scope: list[str], autocast: bool, aggregation: str) -> Any:
    import keras

    with _name_scopes(scope):
        return keras.Variable(keras.initializers.Zeros(), shape=shape, dtype=dtype,
                              trainable=trainable, autocast=autocast,
                              aggregation=aggregation, name=name)


def _new_seed_generator(seed: Any, name: str, scope: list[str]) -> Any:
    import keras

    with _name_scopes(scope):
        return keras.random.SeedGenerator(seed, name=name)


# -- parent side: the pickler ------------------------------------------------------------------
class _Unpicklable(Exception):
    pass


def _pickler_class() -> type:
    import cloudpickle
    import keras
    import numpy as np
    from keras.src.utils import tracking

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle, with Keras objects turned into backend-neutral recipes."""

        def __init__(self, file: Any) -> None:
            super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
            self.where: list[str] = []

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, keras.layers.Layer):
                return self._layer(obj)
            if isinstance(obj, keras.Variable):
                return (_new_variable, (
                    tuple(int(d) for d in obj.shape), str(obj.dtype), bool(obj.trainable),
                    obj.name, _scope_of(obj.path, 1), bool(getattr(obj, "_autocast", True)),
                    str(getattr(obj, "aggregation", "none"))))
            if isinstance(obj, keras.random.SeedGenerator):
                return (_new_seed_generator, (
                    obj._initial_seed, obj.name, _scope_of(obj.state.path, 2)))
            if isinstance(obj, tracking.TrackedList):
                return (list, (list(obj),))
            if isinstance(obj, tracking.TrackedDict):
                return (dict, (dict(obj),))
            if isinstance(obj, tracking.TrackedSet):
                return (set, (list(obj),))
            if not isinstance(obj, (np.ndarray, np.generic)) and keras.ops.is_tensor(obj):
                return (np.asarray, (np.asarray(keras.ops.convert_to_numpy(obj)),))
            return super().reducer_override(obj)

        def _layer(self, layer: Any) -> Any:
            cls = type(layer)
            scope = _scope_of(getattr(layer, "path", "") or layer.name, 1)
            if isinstance(layer, keras.layers.Lambda):
                return (_new_lambda, (layer.function, _output_shape(layer), layer.mask,
                                      layer.arguments, layer.name, layer.dtype_policy.name,
                                      scope))
            if _is_keras_class(cls):
                return (_from_config, _keras_config(layer, scope))
            base = _keras_base(cls)
            state = {"attributes": _own_state(layer, base),
                     "build_shapes": getattr(layer, "_build_shapes_dict", None),
                     "built": bool(layer.built)}
            for name, value in state["attributes"].items():
                try:
                    cloudpickle.dumps(value) if _simple(value) else None
                except Exception as e:
                    raise _Unpicklable(
                        f"attribute '{name}' of layer '{layer.name}' (class "
                        f"{cls.__qualname__}) cannot be pickled: {type(e).__name__}: {e}"
                    ) from e
            return (_new_layer, (cls, base, _base_kwargs(layer, base)), state, None, None,
                    _set_layer_state)

    return Pickler


class _ByValue:
    """Stands for a custom layer in a Keras config: ``from_config`` gives the layer
    itself, rebuilt by value (its own config may be missing or incomplete)."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def from_config(self, config: dict[str, Any]) -> Any:
        del config
        return self.layer


def _keras_config(layer: Any, scope: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    """A Keras built-in layer (e.g. a Functional model) as its config, in which each
    custom layer stands as a :class:`_ByValue` token that travels by value."""
    import keras

    customs = [sub for sub in layer._flatten_layers(include_self=False)
               if not _is_keras_class(type(sub)) or isinstance(sub, keras.layers.Lambda)]
    tokens = {(type(sub).__name__, sub.name): f"kexport_by_value_{k}"
              for k, sub in enumerate(customs)}
    stubbed = [sub for sub in customs if "get_config" not in vars(sub)]
    for sub in stubbed:  # their own get_config may fail: only the name is needed here
        vars(sub)["get_config"] = functools.partial(
            dict, name=sub.name, trainable=sub.trainable)
    try:
        config = keras.saving.serialize_keras_object(layer)
    finally:
        for sub in stubbed:
            del vars(sub)["get_config"]

    def swap(x: Any) -> Any:
        if isinstance(x, list):
            return [swap(v) for v in x]
        if not isinstance(x, dict):
            return x
        x = {k: swap(v) for k, v in x.items()}
        inner = x.get("config")
        token = tokens.get((x.get("class_name"), inner.get("name") if isinstance(inner, dict)
                            else None))
        if token is not None:
            x.update(class_name=token, registered_name=token, module=None)
        return x

    by_value = {f"kexport_by_value_{k}": _ByValue(sub) for k, sub in enumerate(customs)}
    return json.dumps(swap(config)), by_value, scope


def _simple(value: Any) -> bool:
    """Whether ``value`` holds no Keras object (then it can be test-pickled on its own)."""
    import keras

    stack, seen = [value], 0
    while stack and seen < 10_000:
        seen += 1
        x = stack.pop()
        if isinstance(x, (keras.layers.Layer, keras.Variable, keras.random.SeedGenerator)):
            return False
        if isinstance(x, (list, tuple, set)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return True


def describe_model(model: Any) -> bytes:
    """``model`` as bytes that :func:`rebuild_model` turns into the same model on any backend.

    Raises:
        UnsupportedRouteError: an attribute of a layer cannot be pickled; the
            message names the layer, the attribute and why.
    """
    buffer = io.BytesIO()
    try:
        pickler = _pickler_class()
    except ModuleNotFoundError as e:
        raise UnsupportedRouteError(
            f"model '{model.name}' would travel to the child process by value, which needs "
            f"{e.name}: pip install cloudpickle") from e
    try:
        pickler(buffer).dump(model)
    except _Unpicklable as e:
        raise UnsupportedRouteError(f"{e}. Next step: keep only values that can be pickled "
                                    "on layers (or build such objects inside call()).") from e
    except Exception as e:
        raise UnsupportedRouteError(
            f"model '{model.name}' cannot be pickled to travel to the child process: "
            f"{type(e).__name__}: {e}") from e
    return buffer.getvalue()


def rebuild_model(blob: bytes) -> Any:
    """The model :func:`describe_model` described, rebuilt on the current backend.

    The blob is written by kexport itself in the parent process and read only
    by kexport's own child process, from a private (0700) temporary folder:
    it is never read from a file a user or a third party handed over.
    """
    # kexport's own pickle (see above): the only unpickling in kexport, allowed by
    # name in tests/test_reliability.py::test_no_unpickling_anywhere_in_kexport.
    return pickle.loads(blob)

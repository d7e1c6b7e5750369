"""State a re-host carries besides variables: tensors and arrays that layers hold.

A rebuilt model gets its variables by path (:mod:`kexport.rehost.pairing`),
but layers also compute with tensors that are not Keras variables: a
``Normalization`` layer's ``mean``/``variance`` (given to the constructor, or
derived from ``adapt()``), a tensor a user's layer keeps as an attribute after
construction (statistics computed from data, a mask, a lookup array). A
rebuild from a config re-runs the constructor and loses what was set later; a
rebuild by value carries the attribute as a NumPy array, not as a tensor of
the new backend.

So the parent lists, for every layer of the model, every attribute that holds
a tensor or a NumPy array that is not a Keras variable (directly, or as an item
of a list, tuple or dict attribute), with its value as NumPy
(:func:`layer_state`). The child, once variables are assigned and layers have
recomputed what they derive from them (``finalize_state``), pairs its layers
with the source's by path (the names from the model down to the layer, with
equal classes; :func:`~kexport.rehost.pairing.pair_by_path`) and sets
each attribute to the source value, as a tensor of its own backend where the
source held a tensor (:func:`restore_layer_state`).

What cannot be carried is refused with
:class:`~kexport.errors.RouteRefused` (so a further route of the cell runs),
naming the layer path and the attribute: a value that has no NumPy form, a
layer the rebuilt model does not have, an attribute that holds another shape
or a variable or layer once rebuilt, a value the new backend cannot hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kexport.errors import RouteRefused
from kexport.rehost.pairing import pair_by_path

__all__ = ["layer_state", "restore_layer_state"]

# Keras's own bookkeeping of a call (losses added by ``add_loss``), and the
# backends' tracking attributes: not state a model computes with.
_NOT_STATE = frozenset({"_losses", "_loss_ids", "_losses_override", "_jax_state",
                        "_parameters", "_modules"})
_NOT_STATE_PREFIXES = ("_self_", "_torch_", "_kexport_", "_tracker")


def layer_keys(model: Any) -> list[tuple[str, Any]]:
    """Every layer of ``model`` (itself first) with its path: the layer names from
    the model down to it, e.g. ``"net/block_0/norm"``."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, key: str) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        out.append((key, layer))
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            walk(sub, f"{key}/{sub.name}")

    walk(model, model.name)
    return out


def _is_array(x: Any) -> bool:
    import keras
    import numpy as np

    if isinstance(x, (keras.Variable, keras.layers.Layer)):
        return False
    if isinstance(x, np.ndarray):
        return True
    try:
        return bool(keras.ops.is_tensor(x))
    except Exception:
        return False


def _arrays(layer: Any) -> Iterator[tuple[str, Any, Any]]:
    """``(attribute, item, value)`` for each tensor or array ``layer`` holds outside
    variables; ``item`` is ``None``, a list/tuple index or a dict key."""
    for name, value in list(vars(layer).items()):
        if name in _NOT_STATE or name.startswith(_NOT_STATE_PREFIXES):
            continue
        if _is_array(value):
            yield name, None, value
        elif isinstance(value, (list, tuple)):
            for i, x in enumerate(value):
                if _is_array(x):
                    yield name, i, x
        elif isinstance(value, dict):
            for k, x in value.items():
                if isinstance(k, (str, int)) and _is_array(x):
                    yield name, k, x


def _where(entry: dict[str, Any]) -> str:
    item = entry["item"]
    attribute = entry["attribute"] + ("" if item is None else f"[{item!r}]")
    return f"attribute '{attribute}' of layer '{entry['layer']}' (class {entry['class']})"


def layer_state(model: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The non-variable tensors and arrays of every layer of ``model``.

    Returns the entries (layer path, class, attribute, item, whether it was a
    tensor, dtype, shape; JSON-able) and their values as NumPy arrays, keyed
    ``s<index>``.

    Raises:
        RouteRefused: a value has no NumPy form (e.g. a ragged or sparse
            tensor); the message names the layer path and the attribute.
    """
    import keras
    import numpy as np

    entries: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    for key, layer in layer_keys(model):
        for name, item, value in _arrays(layer):
            entry = {"layer": key, "class": type(layer).__name__, "attribute": name,
                     "item": item, "tensor": not isinstance(value, np.ndarray)}
            try:
                array = np.asarray(value if isinstance(value, np.ndarray)
                                   else keras.ops.convert_to_numpy(value))
            except Exception as e:
                raise RouteRefused(
                    f"{_where(entry)} holds a {type(value).__name__} that cannot travel to the "
                    f"re-host child process as an array ({type(e).__name__}: {e}). Next "
                    "step: keep it in a Keras variable (layer.add_weight(trainable=False)) "
                    "or a NumPy array.") from e
            if array.dtype == object:
                raise RouteRefused(
                    f"{_where(entry)} holds an array of Python objects (dtype=object), "
                    "which cannot travel to the re-host child process. Next step: keep "
                    "numbers there, or build it inside call().")
            entry.update(dtype=str(array.dtype), shape=list(array.shape))
            values[f"s{len(entries)}"] = array
            entries.append(entry)
    return entries, values


def _current(layer: Any, entry: dict[str, Any]) -> Any:
    value = vars(layer).get(entry["attribute"])
    item = entry["item"]
    if item is None or value is None:
        return value
    try:
        return value[item]
    except (IndexError, KeyError, TypeError):
        return None


def _put(layer: Any, entry: dict[str, Any], new: Any) -> None:
    name, item = entry["attribute"], entry["item"]
    if item is None:
        setattr(layer, name, new)
        return
    holder = vars(layer).get(name)
    if isinstance(holder, tuple):
        items = [new if i == item else x for i, x in enumerate(holder)]
        setattr(layer, name, type(holder)(*items) if hasattr(holder, "_fields") else tuple(items))
    elif isinstance(holder, dict) or (
            isinstance(holder, list) and isinstance(item, int) and item < len(holder)):
        holder[item] = new
    else:
        raise RouteRefused(
            f"{_where(entry)} holds an array on the source backend, but the rebuilt layer "
            f"has no such item (it holds {type(holder).__name__}): it cannot be carried. "
            "Next step: keep the array in a Keras variable (layer.add_weight(trainable="
            "False)) or set the whole attribute.")


def restore_layer_state(model: Any, entries: list[dict[str, Any]],
                        values: dict[str, Any]) -> int:
    """Set on the rebuilt ``model`` every tensor and array of the source's layers.

    Layers are paired by path with equal classes; each attribute is set to the
    source's value (a tensor of this backend where the source held a tensor).
    Returns how many values were set.

    Raises:
        RouteRefused: a layer holding such state has no rebuilt counterpart,
            or its attribute holds a variable, a layer or another shape once
            rebuilt, or this backend cannot hold the value; the message names
            the layer path and the attribute.
    """
    import keras
    import numpy as np

    if not entries:
        return 0
    ours = layer_keys(model)
    theirs: list[str] = []
    classes: list[str] = []
    for entry in entries:
        if entry["layer"] not in theirs:
            theirs.append(entry["layer"])
            classes.append(entry["class"])
    pairs = pair_by_path(theirs, [k for k, _ in ours],
                         lambda i, j: type(ours[j][1]).__name__ == classes[i])
    for n, entry in enumerate(entries):
        i = theirs.index(entry["layer"])
        if i not in pairs:
            raise RouteRefused(
                f"{_where(entry)} holds an array of shape {tuple(entry['shape'])} on the "
                f"source backend, and the model rebuilt on {keras.backend.backend()} has no "
                f"layer of class {entry['class']} at that path: the state cannot be carried.")
        layer = ours[pairs[i]][1]
        value = np.asarray(values[f"s{n}"])
        now = _current(layer, entry)
        if isinstance(now, (keras.Variable, keras.layers.Layer)):
            raise RouteRefused(
                f"{_where(entry)} holds an array on the source backend and a "
                f"{type(now).__name__} once rebuilt on {keras.backend.backend()}: the state "
                "cannot be carried.")
        if _is_array(now) and tuple(np.shape(now)) != value.shape:
            raise RouteRefused(
                f"{_where(entry)} has shape {tuple(np.shape(now))} once rebuilt on "
                f"{keras.backend.backend()} and {value.shape} on the source backend: the "
                "rebuilt layer was built for other inputs; the state cannot be carried.")
        new: Any = value
        if entry["tensor"]:
            try:
                new = keras.ops.convert_to_tensor(value, dtype=entry["dtype"])
            except Exception as e:
                raise RouteRefused(
                    f"{_where(entry)}: a {entry['dtype']} tensor of shape {value.shape} "
                    f"cannot be held on the {keras.backend.backend()} backend "
                    f"({type(e).__name__}: {e}); the state cannot be carried.") from e
        _put(layer, entry, new)
    return len(entries)

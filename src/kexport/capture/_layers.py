"""Finding the Keras layers an endpoint uses, and the TensorFlow tables they hold.

An endpoint tracks the models it calls automatically: :func:`discover_layers`
looks through its bound ``self``, closure cells and globals, and
:func:`owner_model` picks the one model an endpoint is named after. Keras
lookup layers keep TensorFlow tables, which a capture must track as resources
(:func:`lookup_layers`, :func:`_lookup_tables`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["discover_layers", "lookup_layers", "owner_model"]


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

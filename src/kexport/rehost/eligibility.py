"""Can a model be re-hosted? Whether a child process can rebuild it, and why not.

A model travels by its Keras config when every class is importable and
configurable (:func:`config_json`), otherwise by value
(:mod:`kexport.rehost.recipe`); only a layer attribute that cannot be pickled
stops both (:func:`rehost_problem` names the layer and the attribute).
"""

from __future__ import annotations

import json
from typing import Any

from kexport.errors import UnsupportedRouteError
from kexport.rehost.recipe import describe_model

__all__ = ["check_rehostable", "config_json", "rehost_problem"]


def _unimportable(model: Any) -> list[str]:
    """The custom classes of ``model`` that a new process cannot import by name."""
    out = []
    for layer in model._flatten_layers(include_self=True):
        cls = type(layer)
        if cls.__module__.split(".")[0] == "keras":
            continue
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            out.append(f"{cls.__module__}.{cls.__qualname__}")
    return out


def config_json(model: Any) -> tuple[str | None, str]:
    """``model``'s Keras config as JSON, or ``None`` and why it cannot be the way there."""
    import keras

    local = _unimportable(model)
    if local:
        return None, f"class {local[0]} cannot be imported by name in another process"
    lambdas = [layer.name for layer in model._flatten_layers(include_self=True)
               if isinstance(layer, keras.layers.Lambda)]
    if lambdas:  # travels by value (kexport.rehost.recipe)
        return None, (f"Lambda layer '{lambdas[0]}': a config keeps its function's code, "
                      "not the names the function uses")
    try:
        return json.dumps(keras.saving.serialize_keras_object(model)), ""
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def rehost_problem(model: Any) -> str:
    """Why ``model`` cannot be rebuilt in a child process, or ``""`` when it can.

    A model travels by its Keras config when every class is importable and
    configurable, otherwise by value (:mod:`kexport.rehost.recipe`:
    classes pickled by value, layers by their state), so only a layer
    attribute that cannot be pickled (a lock, an open file, ...) stops it;
    the message names the layer and the attribute.
    """
    try:
        describe_model(model)
        return ""
    except UnsupportedRouteError as e:
        if config_json(model)[0] is not None:
            return ""
        return str(e)


def check_rehostable(models: list[Any], host: str) -> None:
    for m in models:
        problem = rehost_problem(m)
        if problem:
            raise UnsupportedRouteError(
                f"Cannot re-host model '{m.name}' onto the {host} backend: {problem}"
            )

"""What an endpoint's outputs and parameters are called.

:func:`output_names` names the flat outputs (dict keys, a model's output
layers, or ``output_{i}``); :func:`parameter_names` and :func:`named_like`
give a traced wrapper the parameter names of the user's function;
:func:`_check_positional` refuses an ``input_signature`` whose length does
not fit the function's positional parameters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from kexport.errors import SignatureTypeError
from kexport.signature import flatten_with_paths, sanitize_name, unique_name

__all__ = ["named_like", "output_names", "parameter_names"]


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

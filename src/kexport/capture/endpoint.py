"""Endpoints as data: what an endpoint function amounts to, as a typed record.

An :class:`EndpointRecipe` says which tracked model an endpoint calls, which
method, with which constant keyword arguments (``training=False``) and which
input signature. It is what a process that rebuilds the models needs to
re-create the endpoint (re-hosting, :mod:`kexport.rehost`), and it is
declared here, on the capture side, because every capture records it when an
endpoint is added.

A model, one of its bound methods and ``functools.partial`` of one are
described directly; plain functions and lambdas are matched by reading their
bytecode (``lambda x: model(x, training=False)``), as a fallback.
"""

from __future__ import annotations

import dis
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kexport.errors import CaptureError, UnsupportedRouteError, describe
from kexport.signature import specs_to_json

__all__ = ["DESCRIBES_AS", "EndpointRecipe", "describe_endpoint", "is_layer", "not_described_error",
           "recipe_or_reason"]


@dataclass(frozen=True)
class EndpointRecipe:
    """An endpoint described as data, so another process can re-create it.

    Attributes:
        name: the endpoint's name.
        model: index of the tracked model it calls.
        method: the method of that model it calls (``"__call__"``, ``"call"``, ...).
        kwargs: constant keyword arguments, e.g. ``{"training": False}``.
        signature: one :class:`Spec` structure per positional argument.
    """

    name: str
    model: int
    method: str
    kwargs: dict[str, Any]
    signature: list[Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (see :func:`kexport.signature.specs_to_json`)."""
        return {"name": self.name, "model": self.model, "method": self.method,
                "kwargs": dict(self.kwargs), "signature": specs_to_json(self.signature)}


_NOISE_OPS = {"RESUME", "PUSH_NULL", "PRECALL", "CACHE", "NOP", "COPY_FREE_VARS", "MAKE_CELL",
              "EXTENDED_ARG"}
_LOAD_OBJ = {"LOAD_GLOBAL", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_NAME", "LOAD_FAST"}
_CONST_TYPES = (bool, int, float, str, type(None))


#: The attribute of a function that computes what the function it holds computes, its
#: outputs cast (re-host children): it is described as that function.
DESCRIBES_AS = "_kexport_describes_as"


def is_layer(obj: Any) -> bool:
    import keras

    return isinstance(obj, keras.layers.Layer)


def _resolve_name(fn: Any, name: str) -> Any:
    """The object a name in ``fn``'s code refers to (closure cell, then globals)."""
    code = fn.__code__
    cells = dict(zip(code.co_freevars, fn.__closure__ or (), strict=False))
    if name in cells:
        try:
            return cells[name].cell_contents
        except ValueError:
            return None
    glb = getattr(fn, "__globals__", {})
    if name in glb:
        return glb[name]
    return getattr(glb.get("__builtins__", {}), name, None)


def _describe_code(fn: Any) -> tuple[Any, str, dict[str, Any]] | str:
    """Match ``fn``'s bytecode against ``obj[.method](*params, k=const, ...)``.

    Returns:
        ``(obj, method, kwargs)`` when ``fn`` only forwards its positional
        parameters to one method of one object with constant keyword
        arguments; otherwise a short reason why it does not.
    """
    code = fn.__code__
    params = list(code.co_varnames[:code.co_argcount])
    star = code.co_varnames[code.co_argcount + code.co_kwonlyargcount] \
        if code.co_flags & inspect.CO_VARARGS else None
    ops = [i for i in dis.get_instructions(fn) if i.opname not in _NOISE_OPS]
    pos = 0

    def take(*names: str) -> Any | None:
        nonlocal pos
        if pos < len(ops) and ops[pos].opname in names:
            pos += 1
            return ops[pos - 1]
        return None

    first = take(*_LOAD_OBJ)
    if first is None:
        return "it does not start by loading a model"
    if first.opname == "LOAD_FAST":
        return f"it calls its own argument '{first.argval}', not a tracked model"
    obj = _resolve_name(fn, first.argval)
    method = "__call__"
    attr = take("LOAD_ATTR", "LOAD_METHOD")
    if attr is not None:
        method = str(attr.argval)
    if star is not None and not params:
        if take("LOAD_FAST") is None or ops[pos - 1].argval != star:
            return f"it does not pass *{star} on unchanged"
        kwargs: dict[str, Any] = {}
        if pos < len(ops) and ops[pos].opname == "LOAD_CONST":
            values = []
            while (c := take("LOAD_CONST")) is not None:
                values.append(c.argval)
            build = take("BUILD_MAP")
            if build is None or len(values) != 2 * build.argval:
                return "its keyword arguments are not constants"
            kwargs = dict(zip(values[::2], values[1::2], strict=False))
        call = take("CALL_FUNCTION_EX")
        if call is None:
            return "it does more than one call"
    else:
        for p in params:
            load = take("LOAD_FAST")
            if load is None or load.argval != p:
                return ("it does not pass its arguments "
                        f"({', '.join(params)}) on unchanged and in order")
        consts = []
        while (c := take("LOAD_CONST")) is not None:
            consts.append(c.argval)
        kw = take("KW_NAMES")
        names = tuple(code.co_consts[kw.arg]) if kw is not None else ()
        if len(names) != len(consts):
            return "it passes extra positional values that are not its arguments"
        kwargs = dict(zip(names, consts, strict=False))
        if take("CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW") is None:
            return "it does more than one call"
    if take("RETURN_VALUE") is None or pos != len(ops):
        return "it does more than return the result of one call"
    if not all(isinstance(v, _CONST_TYPES) for v in kwargs.values()):
        return "its keyword arguments are not plain constants"
    return obj, method, kwargs


def _describe(fn: Callable[..., Any]) -> tuple[Any, str, dict[str, Any]] | str:
    """``(layer, method, constant kwargs)`` that ``fn`` amounts to, or why it is not one."""
    obj: Any = None
    method = "__call__"
    kwargs: dict[str, Any] = {}
    inner = getattr(fn, DESCRIBES_AS, None)
    if inner is not None:  # a function that only changes output dtypes (kexport.rehost.dtypes)
        return _describe(inner)
    if isinstance(fn, functools.partial):  # partial(model.call, training=False)
        if fn.args:
            return "it is a functools.partial with positional arguments"
        if not all(isinstance(v, _CONST_TYPES) for v in fn.keywords.values()):
            return "its keyword arguments are not plain constants"
        found = _describe(fn.func)
        if isinstance(found, str):
            return found
        obj, method, kwargs = found
        return obj, method, {**kwargs, **fn.keywords}
    if is_layer(fn):
        obj = fn
    elif inspect.ismethod(fn) and is_layer(fn.__self__):
        obj, method = fn.__self__, fn.__func__.__name__
    elif inspect.isfunction(fn):
        found = _describe_code(fn)
        if isinstance(found, str):
            return found
        obj, method, kwargs = found
        if not is_layer(obj):
            return f"it calls {describe(obj)}, which is not a Keras layer or model"
    else:
        return f"it is a {type(fn).__name__}, not a model method or a plain function"
    if not callable(getattr(obj, method, None)):
        return f"{type(obj).__name__} has no method '{method}'"
    return obj, method, kwargs


def not_described_error(name: str, fn: Any, why: str, lead: str,
                        host: str) -> UnsupportedRouteError:
    """The error for endpoint ``name`` that cannot be described as data.

    Args:
        name: the endpoint.
        fn: its function, for the message.
        why: why it cannot be described (from :func:`recipe_or_reason`).
        lead: what re-hosts it, e.g. "on the torch backend, ExportArchive
            endpoints are re-hosted onto the tensorflow backend".
        host: the backend that writes the archive (the next step names it).
    """
    return UnsupportedRouteError(
        f"Endpoint '{name}': {lead}, so they must be described as data. "
        "Expected a model method (model.call, model.__call__, model.some_method) or a "
        "lambda/function that passes its arguments to one tracked model's method "
        "with constant keyword arguments (lambda x: model(x, training=False)). "
        f"Received: {describe(fn)}, which cannot be described because {why}. "
        "Next step: use such an endpoint (move extra computation into a method of a custom "
        "model registered with @keras.saving.register_keras_serializable() in an importable "
        f"module), or build the archive with KERAS_BACKEND={host}."
    )


def recipe_or_reason(name: str, fn: Callable[..., Any], models: list[Any],
                     signature: list[Any]) -> EndpointRecipe | str:
    """Describe endpoint ``fn`` over the tracked ``models``, or say why it cannot be.

    Best-effort and cheap (bytecode inspection, no tracing): captures that
    write in-process record this for every endpoint, so that formats they
    cannot write themselves can re-host the archive later. Unlike
    :func:`describe_endpoint` it never raises and never tracks new models.
    """
    found = _describe(fn)
    if isinstance(found, str):
        return found
    obj, method, kwargs = found
    if not obj.built:
        return f"it calls {type(obj).__name__} '{obj.name}', which is not built"
    index = next((i for i, m in enumerate(models) if m is obj), None)
    if index is None:
        return (f"it calls {type(obj).__name__} '{obj.name}', which is not tracked "
                "(archive.track() it first)")
    return EndpointRecipe(name, index, method, kwargs, signature)


def describe_endpoint(name: str, fn: Callable[..., Any], models: list[Any],
                      signature: list[Any], backend: str, host: str) -> EndpointRecipe:
    """Describe endpoint ``fn`` as an :class:`EndpointRecipe`.

    ``fn`` may be a Keras layer/model, one of its bound methods
    (``model.call``, ``model.__call__``, ``model.encode``), a function or
    lambda that forwards its arguments to one such method with constant
    keyword arguments (``lambda x: model(x, training=False)``), or a
    ``functools.partial`` of one of those with constant keyword arguments
    only (``partial(model.call, training=False)``). Models not in
    ``models`` yet are appended to it (tracked automatically).

    Raises:
        UnsupportedRouteError: when ``fn`` is anything else, e.g. a closure
            with extra computation; the message says how to make it fit.
    """
    found = _describe(fn)
    if isinstance(found, str):
        raise not_described_error(
            name, fn, found, f"on the {backend} backend, ExportArchive endpoints are "
            f"re-hosted onto the {host} backend", host)
    obj, method, kwargs = found
    if not obj.built:
        raise CaptureError(
            f"Endpoint '{name}': expected a built layer or model. Received: "
            f"{type(obj).__name__} '{obj.name}' which is not built; call it on data first."
        )
    index = next((i for i, m in enumerate(models) if m is obj), None)
    if index is None:
        models.append(obj)
        index = len(models) - 1
    return EndpointRecipe(name, index, method, kwargs, signature)

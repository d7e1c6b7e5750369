"""The signature of an endpoint: given by the user (normalised) or inferred from the model."""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Mapping
from typing import Any

from kexport.errors import SignatureError, SignatureTypeError, describe
from kexport.signature._first_call import refine_first_call
from kexport.signature._spec import Spec, _dtype_name, _to_spec
from kexport.signature._structure import _is_leaf, flatten_with_paths, map_structure, pack_as


def normalize(input_signature: Any) -> list[Any]:
    """Normalise a user signature into a list of positional-argument structures.

    Args:
        input_signature: a single spec, or a list/tuple with one entry per
            positional argument, each a spec or a nested list/tuple/dict of
            specs.

    Returns:
        A list with one structure of :class:`Spec` per positional argument.

    Raises:
        SignatureError: when a leaf is not a spec or the signature is empty.
    """
    if input_signature is None:
        raise SignatureError("Expected an input signature. Received: None")
    if _is_leaf(input_signature) or isinstance(input_signature, Mapping):
        input_signature = [input_signature]
    if len(input_signature) == 0:
        raise SignatureError(
            "Expected a non-empty `input_signature` (one entry per positional "
            f"argument). Received: {describe(input_signature)}"
        )
    for _, leaf in flatten_with_paths(list(input_signature)):
        if leaf is None:
            raise SignatureTypeError(
                "Expected every leaf of `input_signature` to be a spec. "
                f"Received None inside: {describe(input_signature)}"
            )
    return [map_structure(_to_spec, arg) for arg in input_signature]


def _same_structure(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping)
                and set(a) == set(b) and all(_same_structure(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b) and all(_same_structure(x, y) for x, y in zip(a, b)))
    return True


def _functional(model: Any) -> Any | None:
    """The Functional graph behind a Functional or built Sequential model."""
    if hasattr(model, "_inputs_struct") and hasattr(model, "_outputs_struct"):
        return model
    inner = getattr(model, "_functional", None)
    if inner is not None and hasattr(inner, "_inputs_struct"):
        return inner
    return None


def _name_of_input(path: tuple, tensor: Any) -> str | None:
    if path and isinstance(path[-1], str):
        return path[-1]
    name = getattr(tensor, "name", None)
    if name and not str(name).startswith("keras_tensor"):
        return str(name)
    return None


def infer_model_signature(model: Any) -> list[Any]:
    """Compute the signature of ``model.__call__`` from the model itself.

    Functional and Sequential models use their ``Input`` tensors (named by
    their ``Input`` names, or dict keys); other layers and subclassed models
    use the shapes of their first call. The batch axis is always dynamic.

    Raises:
        SignatureError: when the model was never built or called.
    """
    func = _functional(model)
    if func is not None:
        struct = func._inputs_struct

        def spec_of(path: tuple, t: Any) -> Spec:
            shape = tuple(t.shape)
            if shape:
                shape = (None,) + tuple(shape[1:])
            return Spec(shape, _dtype_name(t.dtype), _name_of_input(path, t))

        pairs = flatten_with_paths(struct)
        specs = [spec_of(p, t) for p, t in pairs]
        return [pack_as(struct, specs)]
    shapes = getattr(model, "_build_shapes_dict", None)
    if not shapes:
        raise SignatureError(
            f"Cannot infer the input signature of {type(model).__name__} "
            f"'{getattr(model, 'name', '?')}': it was never called or built. "
            "Expected a Functional/Sequential model with Inputs, a model called "
            "at least once, or an explicit `input_signature=`."
        )
    if getattr(model, "_called", True) is False and _is_model(model):
        raise SignatureError(
            f"Cannot infer the input signature of {type(model).__name__} "
            f"'{getattr(model, 'name', '?')}': it was built but never called. Expected a "
            "subclassed model called at least once (on data like what it serves) before "
            "export, or an explicit `input_signature=`.")
    specs = [_specs_from_shapes(shape, key.removesuffix("_shape"), _boundary_dtype(model))
             for key, shape in shapes.items()]
    _check_call_arity(model, len(specs))
    key = repr(shapes)
    cached = _REFINED.get(model)
    if cached is None or cached[0] != key:
        cached = (key, refine_first_call(model, specs))
        with contextlib.suppress(TypeError):  # not weakly referenceable: probed again
            _REFINED[model] = cached
    return copy.deepcopy(cached[1])


#: the probed signature of a subclassed model, per model and recorded shapes (probing
#: calls the model; every stage of one export asks for the same signature)
_REFINED: weakref.WeakKeyDictionary[Any, tuple[str, list[Any]]] = weakref.WeakKeyDictionary()


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _boundary_dtype(model: Any) -> str:
    """The float dtype of a subclassed model's inputs: the dtype its variables are
    stored in (``float32`` under ``mixed_bfloat16``: a client sends float32), else
    the dtype its layers cast inputs to."""
    policy = getattr(model, "dtype_policy", None)
    stored = getattr(policy, "variable_dtype", None)
    if stored and _dtype_name(stored).startswith("float"):
        return _dtype_name(stored)
    return _dtype_name(getattr(model, "input_dtype", None) or "float32")


def _is_shape(value: Any) -> bool:
    """Whether ``value`` is one tensor's shape (ints and ``None``), not a structure."""
    return isinstance(value, (list, tuple)) and not hasattr(value, "_fields") and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in value)


def _specs_from_shapes(shapes: Any, arg: str, dtype: str) -> Any:
    """The specs of one argument, nested exactly as the first call nested its tensors.

    Keras records the shapes of a call's tensors in the structure the user
    passed (a tuple stays a tuple, a list a list, a dict a dict), so the
    endpoint takes that structure back. A leaf is named by its dict key, else
    by the argument and its position (``input_0``, ``input_1`` in a tuple).
    """
    def build(s: Any, path: tuple) -> Any:
        if _is_shape(s):
            s = tuple(s)
            keys = [str(p) for p in path if isinstance(p, str)]
            name = keys[-1] if keys else "_".join([arg, *map(str, path)])
            return Spec((None,) + s[1:] if s else s, dtype, name)
        if isinstance(s, Mapping):
            return {k: build(v, path + (k,)) for k, v in s.items()}
        if isinstance(s, (list, tuple)):
            items = [build(v, path + (i,)) for i, v in enumerate(s)]
            return type(s)(*items) if hasattr(s, "_fields") else (
                tuple(items) if isinstance(s, tuple) else items)
        raise SignatureError(
            f"Cannot infer the input signature: the recorded shape of argument "
            f"'{arg}' is {describe(s)}. Pass an explicit `input_signature=`.")

    return build(shapes, ())


def _check_call_arity(model: Any, given: int) -> None:
    """Refuse to guess when ``call`` needs more tensors than were recorded."""
    import inspect

    try:
        params = inspect.signature(model.call).parameters.values()
    except (TypeError, ValueError):
        return
    required = [p for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    if len(required) > given:
        raise SignatureError(
            f"Cannot infer the input signature of {type(model).__name__}: its "
            f"`call` takes {len(required)} positional tensors "
            f"({', '.join(p.name for p in required)}) but only the shape of "
            f"{given} was recorded at its first call. Pass input_signature=[spec "
            "for each positional argument]."
        )


def normalize_for_model(model: Any, input_signature: Any | None) -> list[Any]:
    """The signature of ``model.__call__``: given by the user or inferred.

    A Functional model takes one positional argument (its inputs structure);
    a user who writes ``[spec_a, spec_b]`` for a two-input Functional model
    means that structure, not two positional arguments, so it is wrapped.

    Raises:
        SignatureError: when the given signature does not fit the model.
    """
    if input_signature is None:
        return infer_model_signature(model)
    sig = normalize(input_signature)
    func = _functional(model)
    if func is None:
        return sig
    expected = func._inputs_struct
    if len(sig) == 1 and _same_structure(sig[0], expected):
        return _name_from_model(sig, expected)
    if _same_structure(sig, expected):
        return _name_from_model([sig], expected)
    if (isinstance(expected, (list, tuple)) and len(expected) == 1
            and len(sig) == 1 and isinstance(sig[0], Spec)):
        return _name_from_model([[sig[0]]], expected)
    raise SignatureError(
        f"Expected `input_signature` to match the inputs of model "
        f"'{model.name}': {_describe_structure(expected)}. Received: "
        f"{_describe_structure(sig)}"
    )


def _name_from_model(sig: list[Any], expected: Any) -> list[Any]:
    """Give unnamed specs the name of the model input at the same place."""
    exp = flatten_with_paths(expected)
    got = flatten_with_paths(sig[0])
    named = []
    for (path, tensor), (_, spec) in zip(exp, got):
        name = spec.name or _name_of_input(path, tensor)
        named.append(Spec(spec.shape, spec.dtype, name, spec.symbols, spec.bounds))
    return [pack_as(sig[0], named)]


def _describe_structure(structure: Any) -> str:
    def leaf(x: Any) -> str:
        shape = getattr(x, "shape", None)
        return f"<{tuple(shape) if shape is not None else '?'}>"

    if isinstance(structure, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe_structure(v)}"
                               for k, v in structure.items()) + "}"
    if isinstance(structure, (list, tuple)):
        inner = ", ".join(_describe_structure(v) for v in structure)
        return f"[{inner}]" if isinstance(structure, list) else f"({inner})"
    return leaf(structure)



"""Input signatures: what goes into an endpoint, with names and dynamic dims.

A signature is a list with one entry per positional argument of the endpoint
function; each entry is a :class:`Spec` or a (nested) list, tuple or dict of
them. Everything kexport accepts as a spec (``keras.InputSpec``,
``tf.TensorSpec``, ``keras.KerasTensor``, backend tensors, NumPy arrays) is
normalised to :class:`Spec` here, so the later stages see one plain type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kexport.errors import SignatureError, SignatureTypeError, describe

__all__ = [
    "specs_from_json",
    "specs_to_json",
    "Spec",
    "default_symbol",
    "flatten",
    "flat_names",
    "infer_model_signature",
    "normalize",
    "normalize_for_model",
    "sanitize_name",
    "structure_of",
    "unique_name",
]

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]")
_SYMBOL_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def default_symbol(axis: int) -> str:
    """The symbol of dynamic axis ``axis`` when no plan names it: ``batch`` for
    axis 0, ``d<axis>`` otherwise (the same axis of every input shares it)."""
    return "batch" if axis == 0 else f"d{axis}"


@dataclass(frozen=True)
class Spec:
    """Shape, dtype and optional name of one input tensor.

    Attributes:
        shape: one entry per axis; ``None`` marks a dynamic dimension.
        dtype: a NumPy-style dtype name such as ``"float32"``.
        name: the input's name, or ``None`` to derive one from its position.
        symbols: the symbol naming each dynamic axis (``None`` at static
            axes), or ``None`` when no plan named them (then
            :func:`default_symbol`). Axes that share a symbol always have
            the same size; see :mod:`kexport._dims`.
        bounds: the largest size each dynamic axis takes (``None`` where
            unbounded), or ``None`` for no bound at all.
    """

    shape: tuple[int | None, ...]
    dtype: str = "float32"
    name: str | None = None
    symbols: tuple[str | None, ...] | None = None
    bounds: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        for dim in self.shape:
            if dim is not None and (not isinstance(dim, int) or dim < 0):
                raise SignatureError(
                    "Expected every dimension of a shape to be a non-negative "
                    f"int or None. Received: shape={self.shape!r}"
                )
        if self.symbols is not None:
            object.__setattr__(self, "symbols", tuple(self.symbols))
            if len(self.symbols) != len(self.shape) or any(
                    (s is None) != (d is not None) or (s is not None and not (
                        isinstance(s, str) and _SYMBOL_OK.fullmatch(s)))
                    for s, d in zip(self.symbols, self.shape)):
                raise SignatureError(
                    "Expected `symbols` to hold one identifier per dynamic axis and None "
                    f"per static axis of shape={self.shape!r}. Received: "
                    f"symbols={self.symbols!r}")
        if self.bounds is not None:
            object.__setattr__(self, "bounds", tuple(self.bounds))
            if len(self.bounds) != len(self.shape) or any(
                    b is not None and (d is not None or isinstance(b, bool)
                                       or not isinstance(b, int) or b < 1)
                    for b, d in zip(self.bounds, self.shape)):
                raise SignatureError(
                    "Expected `bounds` to hold a positive int or None per dynamic axis and "
                    f"None per static axis of shape={self.shape!r}. Received: "
                    f"bounds={self.bounds!r}")

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Positions of the dynamic (``None``) dimensions."""
        return tuple(i for i, d in enumerate(self.shape) if d is None)

    def symbol(self, axis: int) -> str:
        """The symbol of dynamic axis ``axis`` (planned, else :func:`default_symbol`)."""
        if self.symbols is not None and self.symbols[axis] is not None:
            return self.symbols[axis]  # type: ignore[return-value]
        return default_symbol(axis)

    def bound(self, axis: int) -> int | None:
        """The largest size of dynamic axis ``axis``, or ``None``."""
        return None if self.bounds is None else self.bounds[axis]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (used in manifests and reports); ``symbols`` and
        ``bounds`` appear only when known."""
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape),
                               "dtype": self.dtype}
        if self.symbols is not None:
            out["symbols"] = list(self.symbols)
        if self.bounds is not None and any(b is not None for b in self.bounds):
            out["bounds"] = list(self.bounds)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spec:
        """Inverse of :meth:`to_json` (a manifest without symbols or bounds reads too)."""
        symbols, bounds = data.get("symbols"), data.get("bounds")
        return cls(tuple(data["shape"]), data["dtype"], data.get("name"),
                   None if symbols is None else tuple(symbols),
                   None if bounds is None else tuple(bounds))


def sanitize_name(name: str) -> str:
    """Make ``name`` usable as a tensor name in every format.

    TensorFlow signature keys and ONNX value names accept letters, digits,
    ``_``, ``.`` and ``-``; anything else becomes ``_``.
    """
    name = _NAME_OK.sub("_", str(name)) or "input"
    if not name[0].isalnum():
        name = "x" + name
    return name


def _dtype_name(dtype: Any) -> str:
    import numpy as np

    if hasattr(dtype, "as_numpy_dtype"):  # tf.DType
        if dtype.name == "string":
            return "string"
        return np.dtype(dtype.as_numpy_dtype).name
    if isinstance(dtype, str):
        if dtype in ("string", "str"):
            return "string"
        try:
            return np.dtype(dtype).name
        except TypeError:
            pass
    text = str(dtype)  # torch.float32, jnp dtypes
    text = text.removeprefix("torch.")
    if text in ("string", "str", "object"):
        return "string"
    try:
        return np.dtype(text).name
    except TypeError as e:
        raise SignatureError(
            f"Expected a tensor dtype. Received: dtype={describe(dtype)}"
        ) from e


def _shape_tuple(shape: Any) -> tuple[int | None, ...]:
    if shape is None:
        raise SignatureError(
            "Expected a spec with a known rank. Received a spec whose shape is "
            "None; give the full shape, using None for dynamic dimensions."
        )
    if hasattr(shape, "as_list"):  # tf.TensorShape
        if shape.rank is None:
            raise SignatureError(
                "Expected a spec with a known rank. Received: shape=<unknown rank>"
            )
        shape = shape.as_list()
    return tuple(None if d is None else int(d) for d in shape)


def _to_spec(value: Any) -> Spec:
    """Convert one leaf of a user signature into a :class:`Spec`."""
    if isinstance(value, Spec):
        return value
    cls = type(value)
    qualname = f"{cls.__module__}.{cls.__name__}"
    if cls.__name__ == "InputSpec" and hasattr(value, "ndim"):  # keras.InputSpec
        if value.shape is None:
            raise SignatureError(
                "Expected keras.InputSpec with a full `shape`. Received: "
                f"{describe(value)}. Pass keras.InputSpec(shape=(None, ...), dtype=...)."
            )
        return Spec(_shape_tuple(value.shape), _dtype_name(value.dtype or "float32"),
                    getattr(value, "name", None))
    if cls.__name__ == "TensorSpec" and "tensorflow" in qualname:
        return Spec(_shape_tuple(value.shape), _dtype_name(value.dtype), value.name)
    if cls.__name__ == "KerasTensor":
        name = getattr(value, "name", None)
        if name and name.startswith("keras_tensor"):
            name = None
        return Spec(_shape_tuple(value.shape), _dtype_name(value.dtype), name)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        # NumPy arrays, tf/jax/torch tensors: a concrete example, batch made dynamic.
        shape = _shape_tuple(tuple(value.shape))
        if shape:
            shape = (None,) + shape[1:]
        return Spec(shape, _dtype_name(value.dtype))
    raise SignatureTypeError(
        "Expected each leaf of `input_signature` to be a keras.InputSpec, "
        "tf.TensorSpec, keras.KerasTensor or a tensor. Received: "
        f"{describe(value)}"
    )


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, (list, tuple, Mapping))


def map_structure(fn: Callable[[Any], Any], structure: Any) -> Any:
    """Apply ``fn`` to every leaf of a list/tuple/dict structure."""
    if isinstance(structure, Mapping):
        return {k: map_structure(fn, v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_structure(fn, v) for v in structure) \
            if not hasattr(structure, "_fields") else type(structure)(
                *(map_structure(fn, v) for v in structure))
    return fn(structure)


def flatten_with_paths(structure: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """Leaves of ``structure`` with their paths, dict keys in sorted order.

    Sorted keys match ``tf.nest``, ``jax.tree_util`` and Keras's ``tree``, so
    every backend agrees on the flat order.
    """
    if isinstance(structure, Mapping):
        out: list[tuple[tuple, Any]] = []
        for k in sorted(structure):
            out.extend(flatten_with_paths(structure[k], prefix + (k,)))
        return out
    if isinstance(structure, (list, tuple)):
        out = []
        for i, v in enumerate(structure):
            out.extend(flatten_with_paths(v, prefix + (i,)))
        return out
    return [(prefix, structure)]


def flatten(structure: Any) -> list[Any]:
    """Leaves of ``structure`` in the canonical flat order."""
    return [leaf for _, leaf in flatten_with_paths(structure)]


def pack_as(structure: Any, flat: Sequence[Any]) -> Any:
    """Inverse of :func:`flatten`: rebuild ``structure`` from ``flat`` leaves."""
    it = iter(flat)

    def build(s: Any) -> Any:
        if isinstance(s, Mapping):
            vals = {k: build(s[k]) for k in sorted(s)}
            return {k: vals[k] for k in s}
        if isinstance(s, (list, tuple)):
            return type(s)(build(v) for v in s)
        return next(it)

    return build(structure)


def structure_of(structure: Any) -> Any:
    """The same structure with every leaf replaced by ``None``."""
    return map_structure(lambda _: None, structure)


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
    dtype = _dtype_name(getattr(model, "input_dtype", None) or "float32")
    specs = [_specs_from_shapes(shape, key.removesuffix("_shape"), dtype)
             for key, shape in shapes.items()]
    _check_call_arity(model, len(specs))
    return specs


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


def flat_names(signature: list[Any], prefix: str = "input") -> list[str]:
    """One unique, sanitised name per flat input of ``signature``.

    Names come from the spec's ``name``, else from the dict keys on its path,
    else ``{prefix}_{i}``. Duplicates get a numeric suffix.
    """
    names: list[str] = []
    seen: set[str] = set()
    for i, (path, spec) in enumerate(flatten_with_paths(signature)):
        keys = [str(p) for p in path[1:] if isinstance(p, str)]
        base = spec.name or ("_".join(keys) if keys else f"{prefix}_{i}")
        names.append(unique_name(sanitize_name(base), seen))
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (added to it)."""
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def specs_to_json(structure: Any) -> Any:
    """A JSON-able form of a :class:`Spec` structure (tuples, lists and dicts kept apart)."""
    if isinstance(structure, Spec):
        return {"__spec__": structure.to_json()}
    if isinstance(structure, Mapping):
        return {"__dict__": [[k, specs_to_json(v)] for k, v in structure.items()]}
    if isinstance(structure, tuple):
        return {"__tuple__": [specs_to_json(v) for v in structure]}
    if isinstance(structure, list):
        return [specs_to_json(v) for v in structure]
    raise SignatureError(f"Expected a Spec structure. Received: {describe(structure)}")


def specs_from_json(data: Any) -> Any:
    """Inverse of :func:`specs_to_json`."""
    if isinstance(data, list):
        return [specs_from_json(v) for v in data]
    if "__spec__" in data:
        return Spec.from_json(data["__spec__"])
    if "__tuple__" in data:
        return tuple(specs_from_json(v) for v in data["__tuple__"])
    return {k: specs_from_json(v) for k, v in data["__dict__"]}

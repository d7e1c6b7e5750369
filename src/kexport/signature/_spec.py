"""The :class:`Spec` of one input tensor, dtype and shape normalisation, and names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexport.errors import SignatureError, SignatureTypeError, describe

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



"""The user's ``jax2tf_kwargs["polymorphic_shapes"]``, made to fit the input signature.

``jax2tf`` reads each input's shape from the ``tf.TensorSpec`` the endpoint is
traced with, and a dimension that spec leaves dynamic (``None``) must be named
by a symbol in the polymorphic shape. Users write their strings for the model
("``(b, n, n)``" where the model forces two axes equal, "``(b, t, 8)``" and
"``(b, s, 8)``" where they are free), but also the shorthands ``jax2tf`` allows
(one string for every argument, ``None`` for an argument, ``_`` and ``...``
for dimensions to take from the spec) and constants where their
``input_signature`` says ``None``. Traced as given, the last three fail (a
dynamic dimension has no symbol; a constant contradicts the unknown spec
dimension), and a constant left dynamic in the ``tf.function`` signature
accepts calls the artifact then fails on at run time.

:func:`fit_polymorphic_shapes` keeps every symbol and constant the user wrote,
fills what the user left to be read from the spec with kexport's default
symbol for that axis (axis 0 named as the user names the batch of the other
inputs, when they name it one way), and fixes the signature's dimension to a constant the
user gave, so the reloaded function refuses other sizes up front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kexport.errors import SignatureError, SignatureTypeError
from kexport.signature import Spec, map_structure

__all__ = ["fit_polymorphic_shapes"]


def _is_leaf_entry(entry: Any) -> bool:
    """A string, ``None`` or a ``jax2tf.PolyShape``: one shape for a whole subtree."""
    return entry is None or isinstance(entry, str) or type(entry).__name__ == "PolyShape"


def _dims(entry: Any) -> list[str]:
    """The dimension tokens of one shape: ``"(b, n, n)"`` -> ``["b", "n", "n"]``."""
    if not isinstance(entry, str):  # a PolyShape: a tuple of dims
        return ["..." if d is Ellipsis else str(d).strip() for d in entry]
    text = entry.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    dims, depth, current = [], 0, ""
    for ch in text:  # split on top-level commas ("max(a, b)" is one dimension)
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            dims.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        dims.append(current.strip())
    return dims


def _shape_str(dims: list[str]) -> str:
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _fit_leaf(name: str, where: str, entry: Any, spec: Spec, default: str) -> tuple[str, Spec]:
    if entry is None:
        return default, spec
    dims = _dims(entry)
    rank = len(spec.shape)
    if dims.count("...") > 1:
        raise SignatureError(
            f"Endpoint '{name}', {where}: expected at most one '...' in a polymorphic "
            f"shape. Received: {entry!r}")
    if "..." in dims:
        at = dims.index("...")
        fill = rank - (len(dims) - 1)
        dims = dims[:at] + ["_"] * max(fill, 0) + dims[at + 1:]
    if len(dims) != rank:
        raise SignatureError(
            f"Endpoint '{name}', {where}: expected a polymorphic shape with {rank} "
            f"dimension(s), as its input_signature shape {spec.shape}. Received: {entry!r}")
    fallback = _dims(default)
    shape = list(spec.shape)
    for axis, (dim, size) in enumerate(zip(dims, spec.shape)):
        if dim == "_":
            dims[axis] = fallback[axis]  # read from the spec: its size, or kexport's symbol
        elif dim.isdigit():
            if size is None:
                shape[axis] = int(dim)  # the user's constant: the signature says so too
            elif size != int(dim):
                raise SignatureError(
                    f"Endpoint '{name}', {where}: the polymorphic shape {entry!r} gives "
                    f"axis {axis} size {dim}, the input_signature {size}. Expected the "
                    "same size, or None in the input_signature.")
    # the user's symbols name the spec's dynamic axes too, so the check's inputs give
    # axes that share a symbol one size (an expression such as "2*n" keeps kexport's)
    symbols = tuple(None if size is not None else
                    (dim if dim.isidentifier() else spec.symbol(axis))
                    for axis, (dim, size) in enumerate(zip(dims, shape)))
    return _shape_str(dims), dataclasses.replace(spec, shape=tuple(shape), symbols=symbols)


def _fit(name: str, where: str, entry: Any, spec: Any, default: Any) -> tuple[Any, Any]:
    """``(polymorphic shapes, specs)`` for one argument structure."""
    if isinstance(spec, Spec):
        if not _is_leaf_entry(entry):
            raise SignatureError(
                f"Endpoint '{name}', {where}: expected one polymorphic shape (a string) "
                f"for this input. Received: {entry!r}")
        return _fit_leaf(name, where, entry, spec, default)
    if _is_leaf_entry(entry):  # one shape for every input of the structure
        entry = map_structure(lambda _: entry, spec)
    if isinstance(spec, Mapping):
        if not isinstance(entry, Mapping) or set(entry) != set(spec):
            raise SignatureError(
                f"Endpoint '{name}', {where}: expected polymorphic shapes for the keys "
                f"{sorted(spec)}, as in the input_signature. Received: {entry!r}")
        pairs = {k: _fit(name, f"{where}['{k}']", entry[k], spec[k], default[k]) for k in spec}
        return ({k: p for k, (p, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()})
    if not isinstance(entry, (list, tuple)) or len(entry) != len(spec):
        raise SignatureError(
            f"Endpoint '{name}', {where}: expected {len(spec)} polymorphic shapes, as the "
            f"input_signature's {type(spec).__name__}. Received: {entry!r}")
    fitted = [_fit(name, f"{where}[{i}]", e, s, d)
              for i, (e, s, d) in enumerate(zip(entry, spec, default))]
    return (type(spec)(p for p, _ in fitted), type(spec)(s for _, s in fitted))


def fit_polymorphic_shapes(name: str, given: Any, signature: list[Any],
                           defaults: list[Any]) -> tuple[list[Any], list[Any]]:
    """Fit the user's ``polymorphic_shapes`` to ``signature`` (see the module doc).

    Args:
        name: the endpoint, for messages.
        given: ``jax2tf_kwargs["polymorphic_shapes"]``: one entry per positional
            argument (a string, ``None``, a ``jax2tf.PolyShape``, or a
            list/tuple/dict of those shaped as the argument), or one string or
            ``PolyShape`` for every argument, as ``jax2tf.convert`` takes it.
        signature: one :class:`Spec` structure per positional argument.
        defaults: kexport's polymorphic shapes for ``signature``, used for what
            the user leaves to be read from the spec.

    Returns:
        ``(polymorphic shapes, signature)``: one string structure per argument,
        and the signature with the user's constants fixed.

    Raises:
        SignatureTypeError: ``given`` is not a string, ``PolyShape``, list or tuple.
        SignatureError: ``given`` does not fit ``signature`` (number of
            arguments, structure, rank, a constant that contradicts a size).
    """
    if _is_leaf_entry(given) and given is not None:
        given = [given] * len(signature)  # one shape for every argument, as jax2tf reads it
    if not isinstance(given, (list, tuple)):
        raise SignatureTypeError(
            f"Endpoint '{name}': expected jax2tf_kwargs['polymorphic_shapes'] to be a "
            "string or a list with one entry per positional argument. Received: "
            f"{given!r}")
    if len(given) != len(signature):
        raise SignatureError(
            f"Endpoint '{name}': expected jax2tf_kwargs['polymorphic_shapes'] to hold one "
            f"entry per positional argument of `fn` ({len(signature)}, as the "
            f"input_signature). Received {len(given)}: {list(given)!r}")
    batch = _batch_symbol(given)
    if batch is not None:  # inputs the user left to kexport share the user's batch symbol
        defaults = [map_structure(lambda d: _rename_batch(d, batch), d) for d in defaults]
    fitted = [_fit(name, f"argument {i}", e, s, d)
              for i, (e, s, d) in enumerate(zip(given, signature, defaults))]
    return [p for p, _ in fitted], [s for _, s in fitted]


def _batch_symbol(given: Any) -> str | None:
    """The symbol the user gives axis 0 of every input where they name it, if one."""
    found: set[str] = set()

    def visit(entry: Any) -> None:
        if entry is None:
            return
        if _is_leaf_entry(entry):
            dims = _dims(entry)
            if dims and dims[0].isidentifier() and dims[0] != "_":
                found.add(dims[0])
        elif isinstance(entry, Mapping):
            for v in entry.values():
                visit(v)
        elif isinstance(entry, (list, tuple)):
            for v in entry:
                visit(v)

    visit(given)
    return found.pop() if len(found) == 1 else None


def _rename_batch(default: str, batch: str) -> str:
    dims = _dims(default)
    if dims and dims[0] == "batch":
        dims[0] = batch
    return _shape_str(dims)

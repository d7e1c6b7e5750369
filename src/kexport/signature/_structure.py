"""Nested structures of specs or tensors: map, flatten in the canonical order, pack, JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kexport.errors import SignatureError, describe
from kexport.signature._spec import Spec, sanitize_name


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

"""Dimension symbols found from the model: which dynamic axes share a size, and bounds.

Every route names the dynamic axes of an endpoint's inputs with symbols
(``torch.export.Dim``, ``jax2tf`` polymorphic shapes, ONNX ``dim_param``).
Two axes that share a symbol are promised to have the same size; two that do
not are promised to be independent. A wrong promise breaks the artifact
either way: an encoder and a decoder length that share one symbol make ONNX
Runtime reuse buffers of the wrong size, and a token id and mask length that
do not make ``jax2tf`` refuse a ``dot_general`` (``got (d2,) and (d1,)``).

So the plan is found from the live model, not assumed (:func:`plan_signature`):

- the batch (axis 0) of every input is one symbol, ``batch``;
- the other dynamic axes are probed with *cut queries*: the model is called
  in inference mode with the axes of a set ``S`` of size ``A`` and all other
  ones of size ``B`` (``A != B``, both small and above 1). The call runs
  exactly when no axis of ``S`` is forced equal to an axis outside it, so the
  smallest ``S`` holding an axis that runs is the set of axes forced equal to
  it: they share one symbol; an axis alone in its set gets its own. At most
  :data:`MAX_PROBES` calls are made; axes still unresolved then (or all of
  them, when the model does not run at sizes ``A`` and ``B`` at all) fall
  back to one symbol per axis position (``d1``, ``d2``, ...), and the export
  says so;
- a symbol's upper bound (a position embedding of 64 rows) is given by the
  user, or found when a converter says it needs one: :func:`largest_size`
  checks the converter's suggestion, or searches, on the live model.

The plan lives on the signature (:attr:`kexport.signature.Spec.symbols` and
:attr:`~kexport.signature.Spec.bounds`), so it reaches every route, the
manifest and the check's sample sizes. A signature whose specs already carry
symbols (given by the user as :class:`~kexport.signature.Spec`, or recorded by
a re-host's parent process) is not probed again.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kexport.signature import (
    Spec,
    default_symbol,
    flat_names,
    flatten,
    map_structure,
    pack_as,
    unique_name,
)

__all__ = ["MAX_PROBES", "largest_size", "plan_signature", "symbol_sizes", "with_bounds"]

#: The most model calls :func:`plan_signature` makes to group dynamic axes.
MAX_PROBES = 24
#: (A, B) sizes of a cut query, tried in order until the model runs at both.
_CUT_SIZES = ((3, 5), (4, 8), (2, 3))
_PROBE_BATCH = 2
#: :func:`largest_size` does not look beyond this size.
SEARCH_LIMIT = 4096

Axis = tuple[int, int]  # (flat input index, axis)


def _value(spec: Spec, shape: tuple[int, ...]) -> Any:
    """A valid-looking input: ones for ids and masks (an id every vocabulary has),
    normal floats."""
    import numpy as np

    kind = np.dtype(spec.dtype).kind
    if kind == "f":
        return np.random.default_rng(0).standard_normal(shape).astype(spec.dtype)
    if kind == "b":
        return np.ones(shape, bool)
    return np.ones(shape, spec.dtype)


def _runner(fn: Callable[..., Any], signature: list[Any]) -> Callable[[Mapping[Axis, int], int],
                                                                      bool]:
    """``runs(sizes, batch)``: whether ``fn`` runs on inputs of those sizes."""
    import keras

    flat = flatten(signature)

    def runs(sizes: Mapping[Axis, int], batch: int) -> bool:
        arrays = []
        for i, spec in enumerate(flat):
            shape = tuple(d if d is not None else (batch if a == 0 else sizes[(i, a)])
                          for a, d in enumerate(spec.shape))
            arrays.append(keras.ops.convert_to_tensor(_value(spec, shape)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(*pack_as(list(signature), arrays))
        except Exception:  # any refusal of these sizes is the answer
            return False
        return True

    return runs


def _identifier(text: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text)
    return out if out and (out[0].isalpha() or out[0] == "_") else "x" + out


def _names(classes: list[list[Axis]], input_names: list[str]) -> list[str]:
    """``d<axis>`` for a class that is the only one on its single axis position,
    else ``<first input>_d<axis>``; unique, never ``batch``."""
    per_axis: dict[int, int] = {}
    for members in classes:
        for a in {a for _, a in members}:
            per_axis[a] = per_axis.get(a, 0) + 1
    taken = {"batch"}
    names = []
    for members in classes:
        axes = {a for _, a in members}
        i, a = members[0]
        base = (default_symbol(a) if len(axes) == 1 and per_axis[a] == 1
                else f"{_identifier(input_names[i])}_d{a}")
        names.append(unique_name(base, taken))
    return names


def _classes(runs: Callable[[Mapping[Axis, int], int], bool], free: list[Axis],
             max_probes: int) -> tuple[list[list[Axis]], list[Axis], str]:
    """(classes found, axes left unresolved, why they were left)."""
    probes = 0
    sizes = None
    for a, b in _CUT_SIZES:
        probes += 2
        if runs(dict.fromkeys(free, a), _PROBE_BATCH) and runs(dict.fromkeys(free, b),
                                                               _PROBE_BATCH):
            sizes = (a, b)
            break
    if sizes is None:
        return [], free, ("the model did not run with its dynamic dims all of one size "
                          f"({', '.join(str(a) for a, _ in _CUT_SIZES)})")
    small, other = sizes
    classes: list[list[Axis]] = []
    remaining = list(free)
    while remaining:
        first = remaining[0]
        # the same axis position first: that is where equal dims usually are
        others = sorted(remaining[1:], key=lambda f: f[1] != first[1])
        found: list[Axis] | None = None
        for k in range(len(others) + 1):
            if k == len(others):  # the rest as a whole is always closed
                found = remaining
                break
            for combo in itertools.combinations(others, k):
                if probes >= max_probes:
                    return classes, remaining, f"{max_probes} model calls did not settle them"
                probes += 1
                chosen = {first, *combo}
                if runs({f: small if f in chosen else other for f in free}, _PROBE_BATCH):
                    found = [f for f in remaining if f in chosen]
                    break
            if found is not None:
                break
        assert found is not None
        classes.append(found)
        remaining = [f for f in remaining if f not in found]
    return classes, [], ""


def plan_signature(fn: Callable[..., Any], signature: list[Any], *,
                   say: Callable[[str], None] | None = None,
                   max_probes: int = MAX_PROBES) -> list[Any]:
    """``signature`` with every dynamic axis named by the symbol the model implies.

    Args:
        fn: the live endpoint, called eagerly in inference mode on probes
            (e.g. :func:`kexport._inference.inference_fn` of the model).
        signature: one structure of :class:`Spec` per positional argument.
        say: where to tell that some dims fell back to one symbol per axis
            position (``None``: silent).
        max_probes: the most calls of ``fn``.

    Returns:
        The same structure, each spec with :attr:`Spec.symbols` set. A
        signature where some spec already has symbols is kept as it is
        (axes without one take :func:`default_symbol`).
    """
    flat = flatten(signature)
    if any(s.symbols is not None for s in flat):
        return signature
    free = [(i, a) for i, s in enumerate(flat) for a in s.dynamic_axes if a > 0]
    if len(free) <= 1 or any(s.dtype == "string" for s in flat):
        classes = [[f] for f in free] if len(free) <= 1 else []
        unresolved = [] if len(free) <= 1 else free
        why = "string inputs cannot be made up to call the model with"
    else:
        classes, unresolved, why = _classes(_runner(fn, signature), free, max_probes)
    if unresolved:
        by_axis: dict[int, list[Axis]] = {}
        for f in unresolved:
            by_axis.setdefault(f[1], []).append(f)
        classes = classes + list(by_axis.values())
    names = flat_names(signature)
    symbol_of = {f: name for members, name in zip(classes, _names(classes, names),
                                                   strict=True) for f in members}
    if unresolved and say is not None:
        where = ", ".join(f"{names[i]}[{a}]" for i, a in unresolved)
        say(f"kexport: could not tell which dynamic dims the model forces equal ({where}): "
            f"{why}; each axis position shares one symbol there "
            f"({', '.join(sorted({symbol_of[f] for f in unresolved}))}). Pass "
            "kexport.signature.Spec(..., symbols=...) to say it.")

    def with_symbols(spec: Spec, i: int) -> Spec:
        symbols = tuple(None if d is not None else ("batch" if a == 0 else symbol_of[(i, a)])
                        for a, d in enumerate(spec.shape))
        return Spec(spec.shape, spec.dtype, spec.name, symbols, spec.bounds)

    return pack_as(list(signature), [with_symbols(s, i) for i, s in enumerate(flat)])


def with_bounds(signature: list[Any], bounds: Mapping[str, int]) -> list[Any]:
    """``signature`` with every axis of a symbol in ``bounds`` bounded by it."""
    if not bounds:
        return signature

    def one(spec: Spec) -> Spec:
        new = tuple(bounds.get(spec.symbol(a), spec.bound(a)) if d is None else None
                    for a, d in enumerate(spec.shape))
        return Spec(spec.shape, spec.dtype, spec.name, spec.symbols,
                    new if any(b is not None for b in new) else spec.bounds)

    return map_structure(one, signature)


def symbol_sizes(specs: Iterable[Any], size: int) -> dict[str, int]:
    """Distinct sizes for the non-batch symbols of ``specs`` in the case of size
    ``size``, so that axes that share a symbol share a size and others do not.

    An unplanned axis ``k`` (symbol ``d<k>``) keeps ``size + k + 1``; every other
    symbol takes the smallest free size from ``size + 2`` on, in order of first
    appearance. A symbol that any of its axes bounds takes at most that bound.
    ``specs`` are :class:`Spec` or anything with ``shape`` (and optionally
    ``symbols`` and ``bounds``).
    """
    order: list[str] = []
    bound: dict[str, int] = {}
    for spec in specs:
        bounds = getattr(spec, "bounds", None)
        for a, d in enumerate(spec.shape):
            name = symbol_at(spec, a) if d is None and a > 0 else None
            if name is not None and name not in order:
                order.append(name)
            if name is not None and bounds is not None and bounds[a] is not None:
                bound[name] = min(bound.get(name, bounds[a]), bounds[a])
    out: dict[str, int] = {}
    for name in order:
        if _DEFAULT.fullmatch(name):
            out[name] = size + int(name[1:]) + 1
    taken = set(out.values())
    value = size + 2
    for name in order:
        if name not in out:
            while value in taken:
                value += 1
            out[name] = value
            taken.add(value)
    return {name: min(value, bound.get(name, value)) for name, value in out.items()}


_DEFAULT = re.compile(r"d[1-9][0-9]*")


def symbol_at(spec: Any, axis: int) -> str:
    """The symbol of ``spec``'s dynamic axis ``axis`` (``spec`` need not be a Spec)."""
    symbols = getattr(spec, "symbols", None)
    if symbols is not None and symbols[axis] is not None:
        return symbols[axis]
    return default_symbol(axis)


def largest_size(fn: Callable[..., Any], signature: list[Any], symbol: str, *,
                 hint: int | None = None, limit: int = SEARCH_LIMIT) -> int | None:
    """The largest size of ``symbol``'s axes at which ``fn`` still runs, or
    ``None`` when it runs up to ``limit`` (or not even at a small size).

    ``hint`` (a converter's suggestion, e.g. the ``64`` of ``d1 <= 64``) is
    checked first: when ``fn`` runs at ``hint`` and not at ``hint + 1`` it is
    the answer; otherwise the size is searched (doubling, then bisection).
    Other symbols keep small distinct sizes; the batch is 1.
    """
    flat = flatten(signature)
    axes = [(i, a) for i, s in enumerate(flat) for a in s.dynamic_axes if a > 0]
    fixed = symbol_sizes(flat, 1)
    runs = _runner(fn, signature)

    def at(n: int) -> bool:
        return runs({(i, a): n if symbol_at(flat[i], a) == symbol else fixed[
            symbol_at(flat[i], a)] for i, a in axes}, 1)

    if hint is not None and 1 < hint < limit and at(hint) and not at(hint + 1):
        return hint
    low = 2
    if not at(low):
        return None
    high = low * 2
    while at(high):
        low, high = high, high * 2
        if low >= limit:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if at(mid) else (low, mid)
    return low

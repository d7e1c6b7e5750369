"""Variables and layers of a rebuilt model paired with the source's, by path.

A rebuilt model may list its variables (and layers) in another order than the
source: build order can depend on the backend or on sub-layers built lazily.
So a re-host never pairs them by position alone: :func:`pair_by_path` pairs
by the longest path suffix unique on both sides, then in order among what
paths cannot tell apart; :func:`assign_values` assigns the source values to
the rebuilt variables so paired (:class:`~kexport.errors.RouteRefused` for a
variable without a partner).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kexport.errors import RouteRefused

__all__ = ["assign_values", "match_variables", "pair_by_path", "variable_paths"]


def variable_paths(model: Any) -> list[str]:
    """The path of each of ``model.variables``, in order."""
    return [str(getattr(v, "path", v.name)) for v in model.variables]


def _suffix(path: str, k: int) -> str:
    return "/".join(path.split("/")[-k:])


def pair_by_path(theirs: list[str], ours: list[str],
                 fits: Callable[[int, int], bool]) -> dict[int, int]:
    """Pair source items (``theirs``) with rebuilt ones (``ours``) by path.

    The longest path suffix that is unique on both sides pairs first (the
    full path, then shorter ones, so a model renamed at the top still
    matches), where ``fits(i, j)`` (equal shapes, equal classes...). Only what
    is left -- paths that are ambiguous or that the rebuild named differently
    (auto-generated layer names) -- is paired in order, each source item with
    the next rebuilt one that fits. Returns ``{source index: rebuilt index}``;
    an unpaired index is missing on the other side.
    """
    pairs: dict[int, int] = {}
    depth = max([len(p.split("/")) for p in theirs + ours] or [1])
    for k in range(depth, 0, -1):
        taken = set(pairs.values())
        mine: dict[str, list[int]] = {}
        other: dict[str, list[int]] = {}
        for i in range(len(theirs)):
            if i not in pairs:
                mine.setdefault(_suffix(theirs[i], k), []).append(i)
        for j in range(len(ours)):
            if j not in taken:
                other.setdefault(_suffix(ours[j], k), []).append(j)
        for key, (i, *more) in mine.items():
            if not more and len(other.get(key, ())) == 1 and fits(i, other[key][0]):
                pairs[i] = other[key][0]
    # then in order among items whose paths differ only by auto-numbering
    # ("seed_generator_16" here, "seed_generator_3" once rebuilt), then in order
    # among all that is left
    for key in (_unnumbered, lambda path: ""):
        taken = set(pairs.values())
        groups: dict[str, list[int]] = {}
        for j in range(len(ours)):
            if j not in taken:
                groups.setdefault(key(ours[j]), []).append(j)
        at: dict[str, int] = {}
        for i in range(len(theirs)):
            if i in pairs:
                continue
            free, start = groups.get(key(theirs[i]), []), at.get(key(theirs[i]), 0)
            n = next((n for n in range(start, len(free)) if fits(i, free[n])), None)
            if n is not None:
                pairs[i], at[key(theirs[i])] = free[n], n + 1
    return pairs


_NUMBERED = re.compile(r"_[0-9]+(?=/|$)")


def _unnumbered(path: str) -> str:
    """``path`` without the ``_<n>`` suffixes Keras adds to repeated auto names."""
    return _NUMBERED.sub("", path)


def match_variables(paths: list[str], shapes: list[tuple[int, ...]],
                    variables: list[Any], model_name: str) -> list[Any]:
    """For each source variable (``paths``, ``shapes``), the rebuilt variable that receives it.

    Paired by path with equal shapes (:func:`pair_by_path`), never by position
    alone: a rebuilt model may list its variables in another order (build
    order can depend on the backend or on sub-layers built lazily).

    Raises:
        RouteRefused: a variable on either side has no partner; the message
            names every one, with its shape, on both sides.
    """
    own = [str(getattr(v, "path", v.name)) for v in variables]
    pairs = pair_by_path(paths, own, lambda i, j: tuple(variables[j].shape) == tuple(shapes[i]))
    if len(pairs) != len(paths) or len(own) != len(paths):
        taken = set(pairs.values())
        missing = ", ".join(f"'{paths[i]}' {tuple(shapes[i])}" for i in range(len(paths))
                            if i not in pairs) or "none"
        extra = ", ".join(f"'{own[j]}' {tuple(variables[j].shape)}" for j in range(len(own))
                          if j not in taken) or "none"
        raise RouteRefused(
            f"model '{model_name}' rebuilt with {len(own)} variables for {len(paths)} on the "
            f"source backend (matched by path and shape); source variables without a rebuilt "
            f"one: {missing}; rebuilt variables without a source one: {extra}")
    return [variables[pairs[i]] for i in range(len(paths))]


def assign_values(model: Any, paths: list[str], values: list[Any]) -> list[Any]:
    """Assign the source ``values`` to ``model``'s variables by path; return them in source order."""
    matched = match_variables(paths, [tuple(v.shape) for v in values], list(model.variables),
                              model.name)
    for v, value in zip(matched, values, strict=True):
        v.assign(value)
    return matched

"""Dynamic dimensions of a ``torch.export`` program: the ``Dim`` objects of a
signature's dimension plan, the retry with ``torch.export``'s suggested fixes,
the bounds a program found, and the axes a program specialised although the
signature declares them dynamic (a ``.pt2`` is never written with such a lie).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kexport.errors import DynamicAxisError
from kexport.signature import Spec, flatten

__all__ = ["dynamic_shapes_for", "export_refined", "program_bounds", "refuse_specialised",
           "sample_sizes", "specialised_axes"]

_SAMPLE_SIZES = (3, 5, 7, 11, 13, 17)  # sample size per dynamic axis position (>= 2)

def sample_sizes(specs: list[Spec], sizes: tuple[int, ...] = _SAMPLE_SIZES) -> dict[str, int]:
    """A trace size per symbol: distinct (so ``torch.export`` unifies nothing the
    plan keeps apart), at least 2, within the symbol's bound."""
    out: dict[str, int] = {}
    for spec in specs:
        for axis in spec.dynamic_axes:
            name = spec.symbol(axis)
            if name not in out:
                size = sizes[min(len(out), len(sizes) - 1)]
                bound = spec.bound(axis)
                out[name] = size if bound is None else max(2, min(size, bound))
    return out


def dynamic_shapes_for(specs: list[Spec], **dim_options: Any) -> list[dict[int, Any] | None]:
    """One ``{axis: torch.export.Dim}`` per flat input (``None`` without dynamic
    axes): one ``Dim`` per symbol of the plan, bounded where the plan bounds it."""
    import torch

    dims: dict[str, Any] = {}
    out: list[dict[int, Any] | None] = []
    for spec in specs:
        axes = {}
        for axis in spec.dynamic_axes:
            name = spec.symbol(axis)
            if name not in dims:
                options = dict(dim_options)
                if spec.bound(axis) is not None:
                    options["max"] = spec.bound(axis)
                dims[name] = torch.export.Dim(name, **options)
            axes[axis] = dims[name]
        out.append(axes or None)
    return out


def _dynamic_shapes(signature: list[Any], params: list[str]) -> dict[str, Any]:
    return dict(zip(params, dynamic_shapes_for(flatten(signature)), strict=True))


def _in_chain(error: BaseException, text: str) -> list[BaseException]:
    """The exceptions of ``error``'s cause/context chain whose message holds ``text``."""
    out, seen = [], set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if text in str(cause):
            out.append(cause)
        cause = cause.__cause__ or cause.__context__
    return out


def _suggested(error: BaseException, dynamic_shapes: Any) -> Any | None:
    """``dynamic_shapes`` with the fixes ``torch.export`` suggests in ``error``
    applied, or ``None`` when it suggests none it can read back."""
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    for cause in _in_chain(error, "Suggested fixes"):
        try:
            return refine_dynamic_shapes_from_suggested_fixes(str(cause), dynamic_shapes)
        except Exception:  # not a message torch can read back: the next one, or give up
            continue
    return None


def export_refined(export: Callable[[Any], Any], dynamic_shapes: Any, tries: int = 3, *,
                   deferring: Callable[[Any], Any] | None = None,
                   keep_dynamic: bool = False) -> Any:
    """``export(dynamic_shapes)``; when ``torch.export`` reports constraints the
    model implies (``d1 <= 16``, ``d2 == d1``), retry with its suggested fixes
    applied (``refine_dynamic_shapes_from_suggested_fixes``), at most ``tries``
    times.

    A constraint can be violated with no fix to suggest: a guard that a
    ``Dim`` (a range, or a linear relation to another ``Dim``) cannot state,
    such as ``1 % ((d1 - 1) // 2 + 1) != 0`` (the frame count after a
    stride-2 convolution is not 1), which ``torch.export`` cannot prove over
    the range even where it always holds. Then, where given, the export is
    retried once as ``deferring(dynamic_shapes)``: ``torch.export`` with
    ``prefer_deferred_runtime_asserts_over_guards=True``, which keeps such
    guards as runtime assertions in the program (a size that fails one is
    refused when the program runs, never computed wrongly) while the ranges
    found stay range constraints (:func:`program_bounds`).

    With ``keep_dynamic`` a suggested fix that makes a dynamic axis a constant
    (``batch = 3``) is not applied: the error is raised, for the caller to
    refuse (:func:`kexport.formats.torch_program._dynamic.specialised_axes`).
    """
    run, refined_times = export, 0
    while True:
        try:
            return run(dynamic_shapes)
        except Exception as e:
            refined = _suggested(e, dynamic_shapes) if refined_times < tries else None
            if keep_dynamic and refined is not None and _specialises(refined):
                refined = None
            if refined is not None and refined != dynamic_shapes:
                dynamic_shapes, refined_times = refined, refined_times + 1
                continue
            if deferring is not None and run is export and _in_chain(e, "Constraints violated"):
                run = deferring
                continue
            raise


def _specialises(dynamic_shapes: Any) -> bool:
    """Whether a refined ``dynamic_shapes`` fixes an axis to a constant (an int)."""
    leaves = dynamic_shapes.values() if isinstance(dynamic_shapes, dict) else dynamic_shapes
    return any(isinstance(dim, int) for axes in leaves if isinstance(axes, dict)
               for dim in axes.values())


def program_bounds(program: Any, specs: list[Spec]) -> dict[str, int]:
    """The max that ``program``'s range constraints put on each symbol of ``specs``."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind.name == "USER_INPUT"]
    by_name = {n.name: n for n in inputs}
    out: dict[str, int] = {}
    for spec, name in zip(specs, user, strict=False):
        val = by_name[name].meta.get("val") if name in by_name else None
        if val is None:
            continue
        for axis in spec.dynamic_axes:
            dim = val.shape[axis]
            expr = getattr(getattr(dim, "node", None), "expr", None)
            found = program.range_constraints.get(expr) if expr is not None else None
            upper = getattr(found, "upper", None)
            if upper is None or getattr(upper, "is_finite", True) is False:
                continue  # no max (int_oo)
            try:
                bound = int(upper)
            except Exception:  # a symbolic upper we cannot read as a number
                continue
            if bound < 2**31 - 2:  # torch's "no max" is int_oo or a huge int
                out[spec.symbol(axis)] = bound
    return out




def specialised_axes(program: Any, specs: list[Spec], names: list[str]) -> list[tuple[str, int, int]]:
    """``(input name, axis, size)`` of every axis that ``specs`` declare dynamic
    and ``program`` holds as a constant (its placeholder's size is an int)."""
    import torch

    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind.name == "USER_INPUT"]
    values = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for spec, placeholder, name in zip(specs, user, names, strict=False):
        shape = getattr(values.get(placeholder), "shape", None)
        if shape is None:
            continue
        for axis in spec.dynamic_axes:
            if axis < len(shape) and not isinstance(shape[axis], torch.SymInt):
                out.append((name, axis, int(shape[axis])))
    return out


def refuse_specialised(program: Any, specs: list[Spec], names: list[str], endpoint: str) -> None:
    """Raise :class:`DynamicAxisError` when ``program`` fixes an axis that
    ``specs`` declare dynamic: its declaration would not be true.

    Raises:
        DynamicAxisError: naming the endpoint, input, axis and the size the
            program fixed.
    """
    found = specialised_axes(program, specs, names)
    if not found:
        return
    axes = ", ".join(f"input '{n}' axis {a} (fixed to {size})" for n, a, size in found)
    raise DynamicAxisError(
        f"Expected a torch.export program of endpoint '{endpoint}' whose dynamic axes stay "
        f"dynamic, as the signature declares them. Received a program that specialises "
        f"{axes}: it would only accept that size. Nothing was written. Next step: declare "
        "those axes static in `input_signature` (e.g. keras.InputSpec(shape=(3, 5, 8))) if "
        "one size is what you serve, or export to another format.",
        axes=[(n, a) for n, a, _ in found])

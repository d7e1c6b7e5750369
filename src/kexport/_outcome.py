"""What a step that may refuse gives back: what it made, or why it cannot serve the model.

A route of the route table (:meth:`kexport.routing.Route.run`), an archive
writer tried in process before a re-host and an ONNX strategy
(:class:`kexport.formats.onnx._graph.Attempt`, an :class:`Outcome` whose value
is the raw graph) each return an :class:`Outcome`; the caller tries the next
one while they refuse, and when every one has refused raises
:func:`every_refusal`: the last refusal's own typed error, its message
naming each refusal before it.

Inside a route, a refusal found deep down (a variable without a partner, an
axis ``torch.export`` fixed, layers a graph cannot name) is raised as a
:class:`~kexport.errors.RouteRefused` and becomes the route's outcome at the
route's boundary (:func:`attempt`), as a strategy's
``NotTraceable`` becomes its ``Attempt``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kexport.errors import RouteRefused

__all__ = ["Outcome", "attempt", "every_refusal"]

T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    """What one route or strategy gave: its value, or the reason it refused.

    Attributes:
        by: who gave it (a :class:`~kexport.routing.Route`, an ONNX strategy).
        value: what it made (a route's report or ``None``; a strategy's raw
            graph); meaningless once refused.
        refused: why it cannot serve the model, as the typed error the caller
            raises when no one else serves it; ``None``: it served.
    """

    by: Any
    value: T | None = None
    refused: Exception | None = None

    @property
    def ok(self) -> bool:
        """Whether it served the model."""
        return self.refused is None

    @property
    def reason(self) -> str:
        """The first line of why it refused, ``""`` when it served."""
        if self.refused is None:
            return ""
        return next((line for line in str(self.refused).splitlines() if line.strip()), "")


def attempt(by: Any, run: Callable[..., T], *args: Any, **kwargs: Any) -> Outcome[T]:
    """``run(*args, **kwargs)`` as an :class:`Outcome`: a
    :class:`~kexport.errors.RouteRefused` it raises is held as the refusal
    (nothing was written); any other error is a real failure and propagates."""
    try:
        return Outcome(by, value=run(*args, **kwargs))
    except RouteRefused as refused:
        return Outcome(by, refused=refused)


def every_refusal(outcomes: Sequence[Outcome[Any]], name: Callable[[Any], str] = str
                  ) -> Exception:
    """The error to raise when every one of ``outcomes`` refused: the last refusal's
    own error (its type is what the caller catches: ``RouteRefused``,
    ``LayerMappingError``, ``DynamicAxisError``...), its message followed by
    each earlier refusal's reason, ``name(outcome.by)`` first."""
    assert outcomes and not any(o.ok for o in outcomes), "only refusals have a reason"
    last = outcomes[-1].refused
    assert last is not None
    if len(outcomes) > 1 and last.args and isinstance(last.args[0], str):
        earlier = "; ".join(f"{name(o.by)}: {o.reason}" for o in outcomes[:-1])
        last.args = (f"{last.args[0]}\nRefused before it: {earlier}", *last.args[1:])
    return last

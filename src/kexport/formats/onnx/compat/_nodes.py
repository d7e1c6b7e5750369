"""Walking an ONNX graph's nodes, subgraphs included (for the workarounds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["all_nodes"]


def all_nodes(graph: Any) -> list[Any]:
    """Every node of ``graph`` and of its subgraphs."""
    return list(_all_nodes(graph))


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)

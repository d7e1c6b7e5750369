"""A workaround of jax2onnx 0.17 (:func:`linear_output_binding`).

jax2onnx checks after every equation that its outputs are connected to the
graph by scanning every input, initializer and node output (quadratic in the
model's size: 40% of a 3-block Transformer's conversion). Within the context a
value produced by a node of the graph being built is recognised in O(1);
every other case still runs jax2onnx's own scan, so the answers are the same.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["linear_output_binding"]


def linear_output_binding() -> contextlib.AbstractContextManager[None]:
    """Make jax2onnx's per-equation "is this output connected" check O(1) while inside.

    Reference-counted and thread-safe (:func:`kexport._patch.scoped_patch`);
    outside the context jax2onnx behaves as shipped. A no-op when the private
    function is not where jax2onnx 0.17 keeps it.
    """
    try:
        from jax2onnx.converter import output_binding
    except ImportError:
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        def connected(ctx: Any, value: Any) -> bool:
            producer = getattr(value, "producer", None)
            node = producer() if callable(producer) else None
            graph = getattr(getattr(ctx, "builder", None), "nodes", None)
            if node is not None and graph is not None and getattr(node, "graph", None) is graph:
                return True  # jax2onnx's scan would find ``node`` among the graph's nodes
            return shipped(ctx, value)

        return connected

    return scoped_patch(output_binding, "_value_is_graph_connected", make)

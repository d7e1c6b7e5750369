"""A workaround of onnxscript's optimizer (0.7), used by the finishing step.

:func:`one_optimizer_at_a_time`: ``onnxscript.optimizer.optimize_ir``'s rewrite
rules are module-level objects that keep the state of the match in progress,
so two graphs optimised at once in two threads corrupt each other's matches
(seen: ``_FuseMinMaxBase.check() missing 2 required positional arguments``
when two TensorFlow -> ONNX exports finished together). kexport's calls of
the optimizer take turns; everything else in an export still runs in
parallel.
"""

from __future__ import annotations

import threading

__all__ = ["one_optimizer_at_a_time"]

_optimizer_turn = threading.Lock()


def one_optimizer_at_a_time() -> threading.Lock:
    """The lock every kexport call of onnxscript's optimizer holds while it runs."""
    return _optimizer_turn

"""Workarounds of ``torch.onnx`` (torch 2.x).

- :func:`quiet_torchscript_log`: the TorchScript exporter turns its C++ log
  on for good on every export, so a failed traced strategy dumps the whole
  Torch IR graph; kept off inside kexport.
- :func:`cached_torchlib_registry`: the dynamo exporter rebuilds its
  ATen -> ONNX registry on every call (``ONNXRegistry.from_torchlib`` reads the
  source of ~500 onnxscript functions, ~1.8 s each export). Within the
  context the registry is built once per opset and each call gets a copy (so
  a caller's custom ops never leak into later exports).
- :func:`tracer_warnings_to`: the traced strategy reads the tracer's
  warnings of its own thread (``warnings.filters``/``showwarning``, scoped).
- :func:`scoped_node_names`: the ``torch.export`` exporter keeps a node's
  module path only in its metadata; it is put in the node's name.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kexport._patch import scoped_patch
from kexport.formats.onnx.compat._nodes import all_nodes

if TYPE_CHECKING:
    import onnx

__all__ = ["cached_torchlib_registry", "quiet_torchscript_log", "scoped_node_names",
           "tracer_warnings_to"]


def quiet_torchscript_log() -> contextlib.AbstractContextManager[None]:
    """Keep ``torch.onnx``'s TorchScript exporter log off while inside.

    Peer-library workaround (torch 2.13): ``setup_onnx_logging`` tests
    ``_C._jit_is_onnx_log_enabled`` without calling it, so every export turns
    the C++ log on and leaves it on for the rest of the process; a traced
    strategy that fails then prints the whole Torch IR graph ("Torch IR graph
    at exception: ...", thousands of lines) although kexport moves on to the
    next strategy. Inside, the log is on only for ``verbose=True`` (kexport
    never asks) and its previous state is restored on exit.
    """
    import torch

    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(torch._C, "_jit_set_onnx_log_enabled"):
        return contextlib.nullcontext()

    def make(shipped: Any) -> Any:
        @contextlib.contextmanager
        def setup_onnx_logging(verbose: bool) -> Iterator[None]:
            before = bool(torch._C._jit_is_onnx_log_enabled())
            torch._C._jit_set_onnx_log_enabled(bool(verbose))
            try:
                yield
            finally:
                torch._C._jit_set_onnx_log_enabled(before)

        return setup_onnx_logging

    return scoped_patch(utils, "setup_onnx_logging", make)


_registry_lock = threading.Lock()
_registry_cache: dict[int, Any] = {}


def cached_torchlib_registry() -> contextlib.AbstractContextManager[None]:
    """Build ``torch.onnx``'s ATen -> ONNX registry once per opset while inside.

    Reference-counted and thread-safe (:func:`kexport._patch.scoped_patch`);
    outside the context ``torch.onnx`` behaves as shipped. A no-op when the
    private hook is not where torch 2.x keeps it.
    """
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return contextlib.nullcontext()
    cls = _registration.ONNXRegistry
    if not hasattr(cls, "from_torchlib") or not hasattr(cls(), "functions"):
        return contextlib.nullcontext()

    def make(original: Any) -> Any:
        def from_torchlib(klass: Any, opset_version: Any = None, **kw: Any) -> Any:
            build = original.__get__(None, klass)
            if kw or klass is not cls:
                return build(opset_version, **kw) if opset_version is not None \
                    else build(**kw)
            key = opset_version
            with _registry_lock:
                base = _registry_cache.get(key)
            if base is None:
                base = build(opset_version) if opset_version is not None else build()
                with _registry_lock:
                    _registry_cache[key] = base
            copy = cls()
            copy.__dict__.update(base.__dict__)
            copy.functions = {k: list(v) for k, v in base.functions.items()}
            return copy

        return classmethod(from_torchlib)

    return scoped_patch(cls, "from_torchlib", make)


class _WarningsTo:
    """``warnings.showwarning`` while a traced export runs: each warning goes to
    the collector of the thread that raised it (:func:`tracer_warnings_to`),
    every other thread's to the function it replaced."""

    def __init__(self, shipped: Any) -> None:
        self.shipped = shipped
        self.collectors = threading.local()

    def __call__(self, message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        collect = getattr(self.collectors, "collect", None)
        if collect is None:
            self.shipped(message, category, *args, **kwargs)
        else:
            collect(message, category)


@contextlib.contextmanager
def tracer_warnings_to(collect: Callable[[Any, type], None]) -> Iterator[None]:
    """Within the context every ``torch.jit.TracerWarning`` is shown, each time it
    is raised, and what this thread shows goes to ``collect(message, category)``.

    Workaround: the traced exporter reports what it could not trace faithfully
    only as warnings. ``warnings.filters`` (an ``"always"`` rule for the
    category in front of the filters in force) and ``warnings.showwarning`` are
    replaced through :func:`kexport._patch.scoped_patch`, not with
    ``warnings.catch_warnings`` (which saves and restores them per caller, so
    two exports in two threads would leave one's replacement installed for
    good): concurrent exports share them, other threads' warnings are shown
    as before, and the shipped values are back when the last export leaves.
    """
    import torch

    category = torch.jit.TracerWarning

    def with_tracer_rule(shipped: Any) -> Any:
        return [("always", None, category, None, 0), *shipped]

    with scoped_patch(warnings, "filters", with_tracer_rule), \
            scoped_patch(warnings, "showwarning", _WarningsTo):
        mutated = getattr(warnings, "_filters_mutated", None)
        if mutated is not None:  # earlier "once" records of these warnings are void
            mutated()
        target = warnings.showwarning
        local = target.collectors if isinstance(target, _WarningsTo) else None
        previous = getattr(local, "collect", None)
        if local is not None:
            local.collect = collect
        try:
            yield
        finally:
            if local is not None:
                local.collect = previous

def scoped_node_names(model: onnx.ModelProto) -> None:
    """Put each node's PyTorch module path in its name, in place.

    Workaround: ``torch.onnx``'s ``torch.export`` exporter names nodes
    ``node_matmul_1`` and keeps the module they came from only in the node's
    ``metadata_props["pkg.torch.onnx.name_scopes"]`` (``['', 'model',
    'model.block', 'model.block.inner', 'matmul_1']``), which
    the finishing step clears (it can hold local paths); the traced exporter
    writes the path in the name (``/model/block/inner/MatMul``). Nodes with
    that metadata get the traced form (``/model/block/inner/node_matmul_1``),
    so ``quantization_exclude`` finds their layer, before and after
    ``quant_pre_process``.
    """
    import ast

    for node in all_nodes(model.graph):
        meta = {p.key: p.value for p in node.metadata_props}
        text = meta.get("pkg.torch.onnx.name_scopes")
        if not text or not node.name or node.name.startswith("/"):
            continue
        try:
            scopes = [s for s in ast.literal_eval(text)[:-1] if isinstance(s, str) and s]
        except (ValueError, SyntaxError):
            continue
        if scopes:
            node.name = "/" + "/".join(scopes[-1].split(".")) + "/" + node.name

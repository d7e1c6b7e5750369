"""PyTorch -> ONNX helpers: a fast traced strategy and a ``torch.onnx`` workaround.

Two things live here so that :mod:`kexport.formats.onnx` keeps one capture
function per route:

* :func:`capture_traced` — the fast strategy tried first on the PyTorch
  backend. ``torch.onnx.export(dynamo=False)`` records the model by running it
  once (TorchScript tracing, ~0.1-1 s where ``torch.export`` + decomposition
  takes 2-7 s). Tracing can silently fix a dynamic dimension or a branch, so
  the graph is only used when (a) no ``TracerWarning`` (a tensor turned into
  a Python value) came from outside Keras's own ops or from Keras's control
  flow (``cond``, loops), and (b) ONNX Runtime reproduces the live model at
  two *other* sizes of every dynamic axis (batch 1 and 3, other axes too).
  Any doubt raises :class:`NotTraceable` (the check (b) runs on the finished
  graph, through ``RawGraph.accept``) and the ``torch.export`` strategy runs.
* :func:`quiet_torchscript_log` — peer-library workaround: the TorchScript
  exporter turns its C++ log on for good on every export, so a failed traced
  strategy dumps the whole Torch IR graph; kept off inside kexport.
* :func:`cached_torchlib_registry` — peer-library workaround: ``torch.onnx``'s
  dynamo exporter rebuilds its ATen -> ONNX registry on every call
  (``ONNXRegistry.from_torchlib`` reads the source of ~500 onnxscript
  functions, ~1.8 s each export). Within the context the registry is built
  once per opset and each call gets a copy (so a caller's custom ops never
  leak into later exports).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch
from kexport.capture._base import _to_plain
from kexport.formats.onnx._accept import Acceptance, NotTraceable, samples
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["NotTraceable", "cached_torchlib_registry", "capture_traced", "endpoint_module",
           "quiet_torchscript_log"]

_TRACE_SAMPLE_BATCH = 2


def endpoint_module(model: Any, signature: list[Any]) -> Any:
    """A ``torch.nn.Module`` taking the flat inputs and returning the flat outputs
    of ``model(..., training=False)``, in eval mode (what both exporters trace)."""
    import torch

    class _Endpoint(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *flat_inputs: Any) -> Any:
            args = pack_as(list(signature), list(flat_inputs))
            return tuple(flatten(self.model(*args, training=False)))

    return _Endpoint().eval()


def capture_traced(model: Any, signature: list[Any], opset: int,
                   route: str = "torch: torch.onnx (traced, verified)") -> Any:
    """The fast PyTorch strategy; returns a ``RawGraph`` or raises :class:`NotTraceable`."""
    import numpy as np
    import onnx
    import torch

    from kexport.capture._base import output_names
    from kexport.formats.onnx import RawGraph

    specs = flatten(signature)
    names = flat_names(signature)
    if any(s.dtype == "string" for s in specs) or not hasattr(torch.onnx, "export"):
        raise NotTraceable("string inputs")
    structure = signature

    def live(flat: list[Any]) -> list[Any]:
        with torch.no_grad():
            out = model(*pack_as(list(structure), [torch.as_tensor(a) for a in flat]),
                        training=False)
        return [np.asarray(t.detach().cpu().numpy()) for t in flatten(_to_plain(out))]

    sample = samples(specs, _TRACE_SAMPLE_BATCH, 0)
    with torch.no_grad():
        first = model(*pack_as(list(structure), [torch.as_tensor(a) for a in sample]),
                      training=False)
    outs = output_names(_to_plain(first), model)
    flat_first = flatten(_to_plain(first))
    out_specs = [Spec((None, *tuple(t.shape)[1:]) if t.ndim else (),
                      str(t.dtype).removeprefix("torch."), n)
                 for t, n in zip(flat_first, outs, strict=False)]
    dynamic_axes: dict[str, dict[int, str]] = {}
    for spec, name in zip(specs, names, strict=False):
        axes = {a: ("batch" if a == 0 else f"d{a}") for a in spec.dynamic_axes}
        if axes:
            dynamic_axes[name] = axes
    if any(0 in axes for axes in dynamic_axes.values()):
        for name, t in zip(outs, flat_first, strict=False):
            if t.ndim:
                dynamic_axes[name] = {0: "batch"}
    buffer = io.BytesIO()
    wrapper = endpoint_module(model, signature)
    doubts: list[str] = []

    def note(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, torch.jit.TracerWarning) and not _benign_trace_site():
            doubts.append(str(message))

    try:
        with warnings.catch_warnings(), torch.no_grad(), quiet_torchscript_log():
            warnings.simplefilter("always")
            warnings.showwarning = note
            torch.onnx.export(wrapper, tuple(torch.as_tensor(a) for a in sample), buffer,
                              dynamo=False, input_names=names, output_names=outs,
                              dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True, verbose=False)
    except Exception as e:  # the torch.export strategy reports real failures
        raise NotTraceable(f"{type(e).__name__}: {e}") from e
    if doubts:
        raise NotTraceable(f"tracer warning: {doubts[0]}")
    graph = onnx.ModelProto()
    with buffer.getbuffer() as view:  # parsed in place: no copy of the weights' bytes
        graph.ParseFromString(view)
    del buffer
    return RawGraph(graph, names, outs, out_specs, route,
                    accept=Acceptance(names, specs, live))


# Keras's own ops read static sizes as Python values (input checks, softmax
# over a size-1 axis) and turn Python constants into tensors; kexport's tests
# run those at varied sizes. Python control flow on tensor values is another
# matter: Keras's ``cond``/loops and anything in user code stay doubts.
_CONTROL_FLOW = {"cond", "switch", "while_loop", "fori_loop", "scan", "associative_scan",
                 "map", "vectorized_map"}


def _benign_trace_site() -> bool:
    """Whether the TracerWarning being raised comes from Keras's own ops."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" in path or path.endswith(("/warnings.py", "/onnx/_torch.py")):
            continue
        return "/keras/src/" in path and frame.name not in _CONTROL_FLOW
    return False



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

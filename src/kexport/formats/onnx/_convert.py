"""The one conversion of an endpoint to a finished ONNX graph, for every export.

A single-model export (:mod:`._export`) and an ``ExportArchive`` written as
ONNX (:mod:`._archive`) both call :func:`convert` for each endpoint: the
backend's strategies (:data:`STRATEGIES`) are tried in order, each returning
an :class:`~kexport.formats.onnx._graph.Attempt` that holds the graph or the
reason it was refused; the first graph is finished (:mod:`._finish`) and
handed to the caller's ``place`` (write one file; keep it for the folder).
A refusal, from the strategy or from ``place`` (a fast strategy's ONNX
Runtime check), moves on to the next strategy; when the last one refuses,
:class:`~kexport.errors.RouteRefused` lets the caller's route table run its
next route (a re-host on TensorFlow).
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from kexport.artifact.exclusion import check_naming
from kexport.context import ExportContext
from kexport.errors import CaptureError, LayerMappingError, RouteRefused
from kexport.formats.onnx._accept import NotTraceable
from kexport.formats.onnx._finish import finish
from kexport.formats.onnx._graph import Attempt, RawGraph, Source, Strategy
from kexport.formats.onnx._io import initializer_bytes
from kexport.formats.onnx._jax import Jax2Onnx
from kexport.formats.onnx._tensorflow import TensorFlowGraph
from kexport.formats.onnx._torch import TorchExport, TracedTorch
from kexport.signature import Spec, flatten

if TYPE_CHECKING:
    import onnx

__all__ = ["STRATEGIES", "Finished", "convert", "proto_route", "without_paths"]

#: Each backend's in-process strategies, in the order they are tried.
STRATEGIES: dict[str, tuple[Strategy, ...]] = {
    "tensorflow": (TensorFlowGraph(),),
    # the traced graph when ONNX Runtime confirms it, else torch.export
    "torch": (TracedTorch(), TorchExport()),
    "jax": (Jax2Onnx(),),
}

T = TypeVar("T")


@dataclass
class Finished:
    """A finished graph, for the caller to place.

    Attributes:
        proto: the finished graph (names, optimised, opset, metadata).
        accept: the fast strategy's ONNX Runtime check of what will be
            written (:class:`~kexport.formats.onnx._graph.RawGraph`), or ``None``.
        strategy: the strategy whose graph it is.
        summary: the endpoint as the printed summary shows it.
    """

    proto: onnx.ModelProto
    accept: Callable[[bytes | str], None] | None
    strategy: Strategy
    summary: SummaryEndpoint


def convert(source: Source, strategies: Sequence[Strategy], *, context: ExportContext,
            opset: int, backend: str, place: Callable[[Finished], T],
            layers: Sequence[Any] = ()) -> T:
    """``place`` applied to the first of ``strategies``' finished graphs it accepts.

    Args:
        source: the endpoint.
        strategies: tried in order.
        context: the export's context: the sample policy the acceptance draws
            under, whether it judges numbers, the backend a re-hosted model
            came from, the printer that says (in one line) why a strategy's
            graph was not used.
        opset: the opset of the finished graph.
        backend: recorded in the graph's metadata (the source backend in a
            re-host child).
        place: writes or keeps the graph; raising
            :class:`~kexport.formats.onnx._accept.NotTraceable` or
            :class:`~kexport.errors.LayerMappingError` refuses it (the next
            strategy runs).
        layers: layers of ``quantization_exclude``: a strategy whose graph
            cannot name them refuses before converting.

    Raises:
        RouteRefused: every strategy refused (``LayerMappingError`` as it is).
    """
    refused: Exception | None = None
    for number, strategy in enumerate(strategies, start=1):
        try:  # a graph that cannot say which nodes to keep is refused before converting
            check_naming(list(layers), strategy.naming, strategy.route)
            attempt = strategy(source, opset, context)
        except LayerMappingError as e:
            attempt = Attempt(strategy, refused=e)
        refused = attempt.refused
        if attempt.graph is not None:
            accept = attempt.graph.accept
            try:
                return place(_finish(attempt, source, opset, backend, context))
            except (NotTraceable, LayerMappingError) as e:
                refused = e
            finally:
                if accept is not None and hasattr(accept, "close"):
                    accept.close()  # no live reference call outlives its strategy
        context.printer(f"kexport: not using {strategy.description}: "
                        f"{without_paths(str(refused))}")
        if number == len(strategies):
            break
    if isinstance(refused, LayerMappingError):  # a refusal, and the user's error
        raise refused
    if isinstance(refused, CaptureError):  # the converter's own error, whole
        raise RouteRefused(str(refused)) from refused
    raise RouteRefused(f"Every in-process ONNX strategy of the {backend} backend "
                       f"refused the model; the last: {without_paths(str(refused))}"
                       ) from refused


def _finish(attempt: Attempt, source: Source, opset: int, backend: str,
            context: ExportContext) -> Finished:
    """Step 3 for the graph ``attempt`` holds (taken out of it, so that the
    converter's copy can be freed before placing)."""
    raw: RawGraph | None
    raw, attempt.graph = attempt.graph, None
    assert raw is not None
    accept = raw.accept
    where = context.source_backend
    graph_backend = backend
    if where is not None:  # writing in a re-host child: record where the model lives
        raw.route = f"re-host on {backend} (child process): {raw.route.partition(': ')[2]}"
        graph_backend = where
    proto = finish(raw, opset=opset, backend=graph_backend, endpoint=source.name,
                   input_specs=flatten(source.signature), recorded=context.recorded())
    del raw
    _release_converter_copy(proto)
    return Finished(proto, accept, attempt.strategy, SummaryEndpoint.of(proto, source.signature))


_DIRECTORIES = re.compile(  # an absolute path's folders (not URLs, not relative paths)
    r"(?<![\w.:/\\])(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,]+)+[\\/](?=[^\s\\/'\"():,]+)")


def without_paths(text: str, limit: int = 240) -> str:
    """``text``'s first line, each file path cut to its file name, at most
    ``limit`` characters: peer libraries' messages quote their source files,
    and kexport's output holds no local paths."""
    line = next((part for part in str(text).splitlines() if part.strip()), "")
    line = _DIRECTORIES.sub("", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


_COLLECT_ABOVE = 64 << 20


def _release_converter_copy(proto: onnx.ModelProto) -> None:
    """Free the converter's copy of the weights now, not when the collector runs.

    ``onnx_ir`` graphs are reference cycles (nodes, values and their graph),
    so the converter's graph and the weights it holds would outlive
    :func:`finish` until Python's cycle collector happened to run: one more
    copy of the weights at the export's peak (PyTorch: 3.0x -> 2.2x the
    weights, 256 MiB MLP). Collected only for large models, where it matters.
    """
    if initializer_bytes([proto]) >= _COLLECT_ABOVE:
        gc.collect()


def proto_route(proto: onnx.ModelProto) -> str:
    """The route recorded in a finished graph's metadata."""
    return next((p.value for p in proto.metadata_props if p.key == "kexport.route"), "?")


@dataclass
class SummaryEndpoint:
    """An endpoint as :func:`kexport._summary.print_summary` reads it."""

    name: str
    signature: list[Any]
    input_names: list[str]
    output_specs: list[Spec]

    @classmethod
    def of(cls, proto: onnx.ModelProto, signature: list[Any]) -> SummaryEndpoint:
        meta = {p.key: p.value for p in proto.metadata_props}
        outs = [Spec(tuple(o["shape"]), o["dtype"], o["name"])
                for o in json.loads(meta["kexport.outputs"])]
        return cls(meta["kexport.endpoint"], signature, [i.name for i in proto.graph.input], outs)

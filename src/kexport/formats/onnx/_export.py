"""One model to one ONNX file: each backend's in-process strategies, tried in order.

:data:`STRATEGIES` is the one place that orders them. The first strategy
whose graph is accepted (captured, finished and, for a fast converter,
reproduced by ONNX Runtime) is written; a refusal
(:class:`~kexport.formats.onnx._accept.NotTraceable`) is reported in one line
and the next strategy runs; when the last one refuses,
:class:`~kexport.errors.RouteRefused` lets the route table run the cell's next
route (on PyTorch and JAX: a re-host on TensorFlow in a child process, whose
options :func:`rehost_options` checks). Recurrent models go straight there
(:func:`in_process_problem`). Nothing is written before one of them succeeds.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._dims import plan_signature
from kexport._inference import inference_fn
from kexport.artifact import DEFAULT_ENDPOINT
from kexport.artifact.exclusion import check_naming, resolve_layers
from kexport.capture.source import rehost_source
from kexport.check.calibration import calibration_batches
from kexport.errors import CaptureError, LayerMappingError, RouteRefused
from kexport.formats.onnx._accept import NotTraceable
from kexport.formats.onnx._finish import finish
from kexport.formats.onnx._graph import Attempt, Strategy
from kexport.formats.onnx._io import initializer_bytes
from kexport.formats.onnx._jax import Jax2Onnx
from kexport.formats.onnx._options import _pop_options, _refuse_lookup_layers
from kexport.formats.onnx._quantize import Exclude, quantize_graph
from kexport.formats.onnx._tensorflow import TensorFlowGraph
from kexport.formats.onnx._torch import TorchExport, TracedTorch
from kexport.formats.onnx._write import write_model
from kexport.formats.onnx.strings import export_strings, has_string_layers
from kexport.signature import Spec, flat_names, flatten, normalize_for_model

if TYPE_CHECKING:
    import onnx

__all__ = ["REHOST_ROUTE", "STRATEGIES", "export_jax", "export_tensorflow", "export_torch",
           "in_process_problem", "rehost_options", "without_paths"]

#: Each backend's in-process strategies, in the order they are tried.
STRATEGIES: dict[str, tuple[Strategy, ...]] = {
    "tensorflow": (TensorFlowGraph(),),
    # the traced graph when ONNX Runtime confirms it, else torch.export
    "torch": (TracedTorch(), TorchExport()),
    "jax": (Jax2Onnx(),),
}
REHOST_ROUTE = "re-host on tensorflow (child process): tf.function -> tf2onnx"


def _export(model: Any, filepath: str | os.PathLike[str], verbose: bool | None,
            input_signature: Any, kwargs: dict[str, Any], backend: str,
            strategies: Sequence[Strategy]) -> None:
    """Capture, finish and write with the first of ``strategies`` whose graph is
    accepted; a refusal moves on to the next one (and is raised from the last)."""
    say = print if verbose is None or verbose else None
    signature = plan_signature(inference_fn(model), normalize_for_model(model, input_signature),
                               say=say)
    opts = _pop_options(kwargs, backend)
    if opts["calibration_data"] is not None:  # checked against the inputs before any work
        opts["calibration"] = calibration_batches(opts["calibration_data"], flatten(signature),
                                                  flat_names(signature))
    layers = resolve_layers(model, opts["exclude"]) if opts["exclude"] else ()
    for number, strategy in enumerate(strategies, start=1):
        opts["excluded"] = Exclude(model, layers, strategy.naming) if layers else None
        try:  # a graph that cannot say which nodes to keep is refused before converting
            check_naming(layers, strategy.naming, strategy.route)
            attempt = strategy(model, signature, opts["opset"])
        except LayerMappingError as e:
            attempt = Attempt(strategy, refused=e)
        refused = attempt.refused
        if attempt.graph is not None:
            accept = attempt.graph.accept
            try:
                summary = _finish_and_write(attempt, signature, opts, backend, filepath)
                break
            except (NotTraceable, LayerMappingError) as e:
                refused = e
            finally:
                if accept is not None and hasattr(accept, "close"):
                    accept.close()  # no live reference call outlives its strategy
        _say_not_used(verbose, strategy, refused)
        if number == len(strategies):
            if isinstance(refused, LayerMappingError):  # a refusal, and the user's error
                raise refused
            if isinstance(refused, CaptureError):  # the converter's own error, whole
                raise RouteRefused(str(refused)) from refused
            raise RouteRefused(f"Every in-process ONNX strategy of the {backend} backend "
                               f"refused the model; the last: {without_paths(str(refused))}"
                               ) from refused
    if verbose is None or verbose:
        _summary.print_summary("onnx", [summary], filepath)


def _finish_and_write(attempt: Attempt, signature: list[Any], opts: dict[str, Any],
                      backend: str, filepath: str | os.PathLike[str]) -> _SummaryEndpoint:
    """Steps 3 and 4 for the graph ``attempt`` holds (taken out of it, so that the
    converter's copy can be freed before writing)."""
    raw, attempt.graph = attempt.graph, None
    accept = raw.accept
    source = rehost_source()
    graph_backend = backend
    if source is not None:  # writing in a re-host child: record where the model lives
        raw.route = f"re-host on {backend} (child process): {raw.route.partition(': ')[2]}"
        graph_backend = source
    proto = finish(raw, opset=opts["opset"], backend=graph_backend,
                   endpoint=DEFAULT_ENDPOINT, input_specs=flatten(signature))
    del raw
    _release_converter_copy(proto)
    summary = _SummaryEndpoint.of(proto, signature)
    if opts["quantization"] is not None:
        # the fast strategy's acceptance checks the float graph, then it is quantized
        proto = quantize_graph(proto, opts["quantization"], opts.get("calibration"),
                               proto_route(proto), accept, opts.get("excluded"))
        accept = None
    write_model(proto, filepath, opts["threshold"], proto_route(proto), accept)
    return summary


_DIRECTORIES = re.compile(  # an absolute path's folders (not URLs, not relative paths)
    r"(?<![\w.:/\\])(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"():,]+)+[\\/](?=[^\s\\/'\"():,]+)")


def without_paths(text: str, limit: int = 240) -> str:
    """``text``'s first line, each file path cut to its file name, at most
    ``limit`` characters: peer libraries' messages quote their source files,
    and kexport's output holds no local paths."""
    line = next((part for part in str(text).splitlines() if part.strip()), "")
    line = _DIRECTORIES.sub("", line)
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _say_not_used(verbose: bool | None, strategy: Strategy, why: Exception) -> None:
    """Tell the user why a strategy's graph was not kept (the export goes on)."""
    if verbose is None or verbose:
        print(f"kexport: not using {strategy.description}: {without_paths(str(why))}")


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
class _SummaryEndpoint:
    name: str
    signature: list[Any]
    input_names: list[str]
    output_specs: list[Spec]

    @classmethod
    def of(cls, proto: onnx.ModelProto, signature: list[Any]) -> _SummaryEndpoint:
        meta = {p.key: p.value for p in proto.metadata_props}
        outs = [Spec(tuple(o["shape"]), o["dtype"], o["name"])
                for o in json.loads(meta["kexport.outputs"])]
        return cls(meta["kexport.endpoint"], signature, [i.name for i in proto.graph.input], outs)


def export_tensorflow(model: Any, filepath: str | os.PathLike[str], *,
                      verbose: bool | None = None, input_signature: Any | None = None,
                      **kwargs: Any) -> None:
    """TensorFlow backend -> ONNX (``tf.function`` + ``tf2onnx``, in process); string and
    lookup layers on the inputs through kexport's own lowering (:mod:`.strings`)."""
    if has_string_layers(model):
        return export_strings(model, filepath, verbose, input_signature, kwargs, lambda m, p, o:
                              _export(m, p, False, None, o, "tensorflow", STRATEGIES["tensorflow"]))
    _export(model, filepath, verbose, input_signature, kwargs, "tensorflow",
            STRATEGIES["tensorflow"])


def rehost_options(model: Any, input_signature: Any, options: dict[str, Any]
                   ) -> dict[str, Any]:
    """What a re-host to ONNX carries to the TensorFlow child: the checked
    ``opset_version``, ``external_data_threshold`` and ``quantization``, and
    the calibration batches as plain lists (bad options, calibration data that
    does not fit and lookup layers are refused here, before the child
    starts). A quantized artifact is compared with the live model at its
    precision's tolerances, on calibration batches when there are some."""
    import keras

    _refuse_lookup_layers(model, REHOST_ROUTE)
    opts = _pop_options(options, keras.backend.backend())
    carried: dict[str, Any] = {"opset_version": opts["opset"],
                               "external_data_threshold": opts["threshold"]}
    mode = opts["quantization"]
    if mode is None:
        return carried
    # judged by the mode's thresholds (kexport.check.tolerance.QUANTIZED)
    carried.update(quantization=mode, quantized=mode)
    if opts["exclude"]:  # by path: the child resolves them again in the rebuilt model
        carried["quantization_exclude"] = [
            layer.path for layer in resolve_layers(model, opts["exclude"])]
    if opts["calibration_data"] is not None:
        signature = normalize_for_model(model, input_signature)
        names = flat_names(signature)
        batches = calibration_batches(opts["calibration_data"], flatten(signature), names)
        carried["calibration_data"] = [{n: v.tolist() for n, v in b.items()} for b in batches]
        carried["sample_inputs"] = [list(b.values()) for b in batches[:2]]
    return carried


def export_jax(model: Any, filepath: str | os.PathLike[str], *,
               verbose: bool | None = None, input_signature: Any | None = None,
               **kwargs: Any) -> None:
    """JAX backend -> ONNX.

    ``jax2onnx`` in process when ONNX Runtime reproduces the live model at
    other sizes of every dynamic axis (:class:`~kexport.formats.onnx._jax.Jax2Onnx`),
    else the route table's next route (a re-host on TensorFlow; see
    :func:`rehost_options`) runs. Models with a recurrent layer go straight to
    the re-host route (:func:`in_process_problem`): tf2onnx writes one ONNX
    ``LSTM``/``GRU`` op where ``jax2onnx`` writes a ``Loop`` (2-2.5x slower in
    ONNX Runtime).
    """
    _refuse_lookup_layers(model, "jax: jax2onnx")
    _export(model, filepath, verbose, input_signature, kwargs, "jax", STRATEGIES["jax"])


def export_torch(model: Any, filepath: str | os.PathLike[str], *,
                 verbose: bool | None = None, input_signature: Any | None = None,
                 **kwargs: Any) -> None:
    """PyTorch backend -> ONNX.

    Strategies in order, in process: the traced ``torch.onnx`` exporter when
    ONNX Runtime reproduces the live model at other sizes of every dynamic
    axis (:class:`~kexport.formats.onnx._torch.TracedTorch`, fast), else
    ``torch.export`` + ``torch.onnx``. A model with a recurrent layer
    (both unroll Keras's Python RNN loop into a fixed number of steps), or one
    whose dynamic axis was fixed anyway, is re-hosted on TensorFlow instead
    (:func:`in_process_problem`; the route table's next route) so that the
    time axis stays symbolic.
    """
    _refuse_lookup_layers(model, "torch: torch.export -> torch.onnx")
    _export(model, filepath, verbose, input_signature, kwargs, "torch", STRATEGIES["torch"])


def in_process_problem(model: Any) -> str:
    """Why the in-process JAX/PyTorch ONNX strategies should not carry ``model``;
    ``""`` when they may try (the route table then re-hosts it instead).

    Keras on PyTorch runs RNNs as a Python loop: ``torch.export`` unrolls it,
    fixing a dynamic time axis, and even a fixed one gives a huge graph (an
    LSTM over 32 steps took 80 s to export); ``jax2onnx`` writes a ``Loop``
    where tf2onnx writes one ``LSTM``/``GRU`` op (2-2.5x slower in ONNX
    Runtime). Such models are re-hosted on TensorFlow.
    """
    import keras

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.RNN):
            return (f"recurrent layer '{layer.name}' ({type(layer).__name__}): re-hosted "
                    "on tensorflow, where the time axis stays symbolic")
    return ""

"""One model to one ONNX file: an archive of one default endpoint, written as a file.

The model's default endpoint (``model(..., training=False)``,
:meth:`~kexport.formats.onnx._graph.Source.of`) goes through the conversion
every ONNX export shares (:func:`kexport.formats.onnx._convert.convert`: the
backend's strategies tried in order, the first graph accepted is finished);
here it is quantized when asked and written to one ``.onnx`` file (weights
beside it above ``external_data_threshold``). When every strategy refuses,
:class:`~kexport.errors.RouteRefused` lets the route table run the cell's next
route (on PyTorch and JAX: a re-host on TensorFlow in a child process, whose
options :func:`rehost_options` checks). Recurrent models go straight there
(:func:`in_process_problem`). Nothing is written before one of them succeeds.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from kexport import _summary
from kexport._dims import plan_signature
from kexport._inference import inference_fn
from kexport.artifact.exclusion import resolve_layers
from kexport.check.calibration import calibration_batches
from kexport.context import ExportContext, Printer
from kexport.formats.onnx._convert import STRATEGIES, Finished, convert, proto_route, without_paths
from kexport.formats.onnx._graph import Source
from kexport.formats.onnx._options import OnnxOptions, _refuse_lookup_layers
from kexport.formats.onnx._quantize import Exclude, quantize_graph
from kexport.formats.onnx._write import write_model
from kexport.formats.onnx.strings import export_strings, has_string_layers
from kexport.signature import flat_names, flatten, normalize_for_model

__all__ = ["REHOST_ROUTE", "STRATEGIES", "export_jax", "export_tensorflow", "export_torch",
           "in_process_problem", "rehost_options", "without_paths"]

REHOST_ROUTE = "re-host on tensorflow (child process): tf.function -> tf2onnx"


def _export(model: Any, filepath: str | os.PathLike[str], input_signature: Any,
            kwargs: dict[str, Any], backend: str, context: ExportContext) -> None:
    """Convert the model's default endpoint with the backend's strategies, then
    quantize (when asked) and write the first graph accepted."""
    signature = plan_signature(inference_fn(model), normalize_for_model(model, input_signature),
                               say=context.printer.say)
    opts = options_of(context, kwargs, backend)
    calibration = None
    if opts.calibration_data is not None:  # checked against the inputs before any work
        calibration = calibration_batches(opts.calibration_data, flatten(signature),
                                          flat_names(signature))
    layers = resolve_layers(model, opts.quantization_exclude) if opts.quantization_exclude else ()

    def place(finished: Finished) -> Finished:
        proto, accept = finished.proto, finished.accept
        if opts.quantization is not None:
            # the fast strategy's acceptance checks the float graph, then it is quantized
            excluded = Exclude(model, layers, finished.strategy.naming) if layers else None
            proto = quantize_graph(proto, opts.quantization, calibration,
                                   proto_route(proto), accept, excluded)
            accept = None
        # the acceptance of a fast strategy's float graph is its check; others are checked
        write_model(proto, filepath, opts.external_data_threshold, proto_route(proto), accept,
                    overwrite=context.overwrite,
                    check=context.check_staged if accept is None else None)
        return finished

    finished = convert(Source.of(model, signature), STRATEGIES[backend], context=context,
                       opset=opts.opset_version, backend=backend, place=place, layers=layers)
    if context.printer.on:
        _summary.print_summary("onnx", [finished.summary], filepath, say=context.printer)


def options_of(context: ExportContext, kwargs: dict[str, Any], backend: str) -> OnnxOptions:
    """The export's typed ONNX options: ``context.options``, parsed where the call
    entered (``export_model``); a caller that built its context without them
    (a localiser probe) has its keyword arguments parsed by the same declaration."""
    if isinstance(context.options, OnnxOptions):
        return context.options
    return OnnxOptions.parse(kwargs, backend=backend, entry="export_model")


def export_tensorflow(model: Any, filepath: str | os.PathLike[str], *, context: ExportContext,
                      input_signature: Any | None = None, **kwargs: Any) -> None:
    """TensorFlow backend -> ONNX (``tf.function`` + ``tf2onnx``, in process); string and
    lookup layers on the inputs through kexport's own lowering (:mod:`.strings`)."""
    if has_string_layers(model):
        # the rest of the model goes to a private folder, then into the merged graph, which
        # its acceptance checks against the whole model (the rest alone is not the model)
        inner = replace(context, overwrite=True, check=None, printer=Printer(on=False))
        return export_strings(model, filepath, context.printer.on, input_signature, kwargs,
                              lambda m, p, o: _export(m, p, None, o, "tensorflow", inner),
                              context)
    _export(model, filepath, input_signature, kwargs, "tensorflow", context)


def rehost_options(model: Any, input_signature: Any, options: dict[str, Any],
                   context: ExportContext | None = None) -> dict[str, Any]:
    """What a re-host to ONNX carries to the TensorFlow child: the checked
    ``opset_version``, ``external_data_threshold`` and ``quantization``, and
    the calibration batches as plain lists (bad options, calibration data that
    does not fit and lookup layers are refused here, before the child
    starts). A quantized artifact is compared with the live model at its
    precision's tolerances, on calibration batches when there are some."""
    import keras

    _refuse_lookup_layers(model, REHOST_ROUTE)
    opts = options_of(context or ExportContext(), options, keras.backend.backend())
    carried: dict[str, Any] = {"opset_version": opts.opset_version,
                               "external_data_threshold": opts.external_data_threshold}
    mode = opts.quantization
    if mode is None:
        return carried
    # judged by the mode's thresholds (kexport.check.tolerance.QUANTIZED)
    carried.update(quantization=mode, quantized=mode)
    if opts.quantization_exclude:  # by path: the child resolves them again in the rebuilt model
        carried["quantization_exclude"] = [
            layer.path for layer in resolve_layers(model, opts.quantization_exclude)]
    if opts.calibration_data is not None:
        signature = normalize_for_model(model, input_signature)
        names = flat_names(signature)
        batches = calibration_batches(opts.calibration_data, flatten(signature), names)
        carried["calibration_data"] = [{n: v.tolist() for n, v in b.items()} for b in batches]
        carried["sample_inputs"] = [list(b.values()) for b in batches[:2]]
    return carried


def export_jax(model: Any, filepath: str | os.PathLike[str], *, context: ExportContext,
               input_signature: Any | None = None, **kwargs: Any) -> None:
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
    _export(model, filepath, input_signature, kwargs, "jax", context)


def export_torch(model: Any, filepath: str | os.PathLike[str], *, context: ExportContext,
                 input_signature: Any | None = None, **kwargs: Any) -> None:
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
    _export(model, filepath, input_signature, kwargs, "torch", context)


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

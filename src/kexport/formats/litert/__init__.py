"""LiteRT (TensorFlow Lite) writer: one ``.tflite`` flatbuffer, one signature per endpoint.

What we write:

- one *named signature* per endpoint (the endpoint's name is the signature
  key), whose inputs are keyed by the Keras input names and whose outputs are
  keyed by the Keras output names, so a runtime calls
  ``interpreter.get_signature_runner("serve")(x=...)`` and never has to guess
  an input order;
- builtin TFLite operators only, unless the caller passes ``allow_flex=True``
  (Select-TF ops need the larger Flex runtime on the device). Recurrent layers
  with a known number of time steps are unrolled while tracing (see
  :func:`_rnn_unrolled`) so that LSTM/GRU/SimpleRNN become builtin ops with a
  dynamic batch, instead of ``TensorList`` ops that only Flex runs;
- a dynamic batch: the signature's ``shape_signature`` keeps ``-1`` wherever
  the Keras signature has ``None``, and the signature runner resizes inputs on
  the fly;
- the kexport manifest (producer, versions, endpoints, quantization) as the
  flatbuffer metadata entry ``kexport.json``. It holds no local path.

Quantization (``quantization=``, the mode names every format shares, see
:mod:`kexport.artifact.quantization`): ``"dynamic_int8"`` (int8 weights, float
activations), ``"float16"`` (float16 weights) and ``"int8"`` (full integer,
calibrated on ``calibration_data``, also accepted under its former name
``representative_dataset``; inputs and outputs stay float32). ``"bfloat16"``
is refused with a :class:`~kexport.errors.QuantizationError`. A quantized
artifact is judged like every format's, by its mode's thresholds on SQNR,
cosine and top-k agreement (``kexport.check.tolerance.QUANTIZED``).

The conversion goes through a private temporary SavedModel holding the
signature functions (the converter's multi-signature path, which also freezes
the variables); nothing of it stays on disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target
from kexport.artifact import (
    LITERT_METADATA,
    Manifest,
)
from kexport.artifact.extensions import TENSORFLOW_TEXT, load_extension
from kexport.check.calibration import calibration_batches
from kexport.context import ExportContext, step_label
from kexport.errors import (
    CaptureError,
    KexportError,
    QuantizationError,
    WriteError,
)
from kexport.formats.litert._lowering import (
    concrete_signature,
    recurrent_layers,
    signature_function,
)
from kexport.formats.litert._options import LiteRTOptions, calibration_option, rehost_options
from kexport.signature import flatten

_signature_function = signature_function  # the OpenVINO writer traces endpoints the same way

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint
    from kexport.formats._writer import EndpointArchive

__all__ = [
    "LiteRTOptions",
    "calibration_option",
    "rehost_options",
    "write_archive",
]

_PRECISION = {None: "float32", "float16": "float16", "dynamic_int8": "int8", "int8": "int8"}


def _calibration(options: LiteRTOptions, endpoints: list[TracedEndpoint]) -> Callable[[], Any]:
    """The converter's ``representative_dataset``: ``(signature_key, {name: array})``.

    The batches are read (and checked against every endpoint's inputs) now, by
    the reader every format shares (:func:`kexport.check.calibration.calibration_batches`:
    input names or ``arr_0``, ``arr_1``, ... in input order, an array, a
    tuple/list, a ``tf.data.Dataset``).

    Raises:
        QuantizationError: a batch that does not fit an endpoint's inputs.
    """
    data = options.representative_dataset
    given = data() if callable(data) else data
    if isinstance(given, Iterator):  # one pass: read once for every endpoint
        given = list(given)
    batches: dict[str, list[dict[str, Any]]] = {}
    for e in endpoints:
        try:
            batches[e.name] = calibration_batches(given, flatten(e.signature), e.input_names)
        except QuantizationError as error:
            raise QuantizationError(f"Endpoint '{e.name}': {error}") from error

    def gen() -> Iterator[tuple[str, dict[str, Any]]]:
        for number in range(max(len(b) for b in batches.values())):
            for name, own in batches.items():
                if number < len(own):
                    yield name, own[number]

    return gen


def _configure(converter: Any, options: LiteRTOptions, endpoints: list[TracedEndpoint]) -> None:
    import tensorflow as tf

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if options.allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    q = options.quantization
    if q is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if q == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if q == "int8":
        converter.representative_dataset = _calibration(options, endpoints)
        if not options.allow_flex:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.target_spec.supported_ops = ops


def _op_names(model_obj: Any) -> list[str]:
    from tensorflow.lite.tools import flatbuffer_utils

    names = []
    for code in model_obj.operatorCodes or []:
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) \
            else code.customCode
        names.append(custom or flatbuffer_utils.opcode_to_name(model_obj, len(names)))
    return names


def _with_metadata(flatbuffer: bytes, meta: Manifest) -> tuple[bytes, list[str]]:
    """Add ``meta`` as the flatbuffer metadata entry ``kexport.json``; return the ops too."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model_obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    ops = _op_names(model_obj)
    meta = meta.with_extras(operators=sorted(set(ops)))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.dumps(indent=None).encode(), dtype=np.uint8)
    model_obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = LITERT_METADATA
    entry.buffer = len(model_obj.buffers) - 1
    model_obj.metadata = [*(model_obj.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj)), ops


def _metadata(archive: EndpointArchive, options: LiteRTOptions, context: ExportContext
              ) -> Manifest:
    return Manifest.build(
        archive.endpoints, format="litert", backend=archive.backend,
        quantization=options.quantization,
        # the compute precision kexport.verify picks tolerances by
        precision=_PRECISION[options.quantization], allow_flex=options.allow_flex,
        **context.recorded())


def convert(archive: EndpointArchive, options: LiteRTOptions) -> tuple[bytes, bool]:
    """Convert every endpoint of ``archive`` into one ``.tflite`` flatbuffer (bytes), and
    whether it holds TF Text's custom ops (TF Text's TFLite kernels, which its registrar
    adds at run time: the converter lets custom ops through only then).

    Raises:
        CaptureError: when an endpoint needs operators outside the allowed set
            (the message names them and suggests ``allow_flex=True``).
        WriteError: when the converter fails otherwise.
    """
    import tensorflow as tf

    state = archive.trackables()
    layers = list(state["tracked_layers"])
    endpoints = archive.endpoints
    root = tf.__internal__.tracking.AutoTrackable()
    root._kexport_all_variables = list(state["variables"])
    root._kexport_resources = list(state["resources"])
    try:
        signatures = {e.name: concrete_signature(e, layers) for e in endpoints}
    except KexportError:
        raise
    except Exception as e:
        raise CaptureError(
            f"{step_label('capture', 'for litert')}: tracing the endpoints failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    custom = _text_ops(signatures)
    with tempfile.TemporaryDirectory(prefix="kexport-litert-") as tmp:
        try:
            tf.saved_model.save(root, tmp, signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                tmp, signature_keys=[e.name for e in endpoints])
            _configure(converter, options, endpoints)
            converter.allow_custom_ops = bool(custom)
            return converter.convert(), bool(custom)
        except KexportError:
            raise
        except Exception as e:
            text = str(e)
            recurrent = recurrent_layers(layers) if "TensorList" in text else []
            if recurrent and not options.allow_flex:
                raise CaptureError(
                    f"{step_label('convert', 'litert')}: expected recurrent layers over a time axis of "
                    "static length, which kexport unrolls into builtin TFLite ops. Received "
                    f"recurrent layer(s) {', '.join(recurrent)} over a dynamic time axis: "
                    "their loop needs TensorList ops, which are not TFLite builtins. Next "
                    "step: declare the length static (e.g. input_signature=[keras.InputSpec("
                    "shape=(None, 20, 8))]; pad shorter sequences and mask them), or pass "
                    "allow_flex=True (the Flex delegate runs the loop)."
                ) from e
            if "tf.HashTableV2" in text:  # IntegerLookup: an int64 -> int64 table
                raise CaptureError(
                    f"{step_label('convert', 'litert')}: the model holds a lookup table TFLite's "
                    "builtin HASHTABLE cannot (it holds string -> int64 and int64 -> string "
                    "tables only; IntegerLookup's is int64 -> int64). Formats that hold it: "
                    "format='tf_saved_model', 'onnx', 'openvino'.") from e
            if "Select TF ops" in text or "Flex" in text or "TensorList" in text \
                    or "XlaCallModule" in text or "not supported by" in text:
                raise CaptureError(
                    f"{step_label('convert', 'litert')}: the model needs operators that are not "
                    "TFLite builtins (the converter said: "
                    f"{_first_error_line(text)}). Next step: pass allow_flex=True to "
                    "allow Select-TF (Flex) ops, which need the Flex delegate at run time."
                ) from e
            raise WriteError(
                f"{step_label('convert', 'litert')}: the TFLite converter failed: "
                f"{_first_error_line(text)}"
            ) from e


def _text_ops(signatures: dict[str, Any]) -> list[str]:
    """The ops of TF Text (not TensorFlow's own: no ``tf.raw_ops`` entry) the graphs use;
    none without tensorflow-text installed (the converter then refuses them as before)."""
    import tensorflow as tf

    found = set()
    for concrete in signatures.values():
        graph_def = concrete.graph.as_graph_def()
        nodes = list(graph_def.node)
        for fn in graph_def.library.function:
            nodes.extend(fn.node_def)
        names = {fn.signature.name for fn in graph_def.library.function}
        found.update(n.op for n in nodes if n.op not in names and not hasattr(tf.raw_ops, n.op))
    if found:
        try:
            load_extension(TENSORFLOW_TEXT, "TF Text ops in LiteRT")
        except KexportError:
            return []
    return sorted(found)


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:300]
    return text.strip().splitlines()[0][:300] if text.strip() else "(no message)"


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, *,
                  quantization: str | None = None, calibration_data: Any | None = None,
                  context: ExportContext) -> None:
    """Write ``archive`` as one ``.tflite`` file with one signature per endpoint.

    Args:
        archive: the endpoints to write.
        filepath: the ``.tflite`` file to write (atomically).
        options: a :class:`LiteRTOptions`, or a dict of its fields.
        quantization: the mode (``write_out(..., quantization=...)``), instead
            of ``options``.
        calibration_data: the calibration batches for ``"int8"``.
        context: the export's context (overwrite, the sample policy recorded).

    Raises:
        SignatureError: ``quantization`` given with ``options`` too.
    """
    opts = context.options
    if not isinstance(opts, LiteRTOptions):  # a caller that built its context without them
        opts = LiteRTOptions.for_write_out(
            options, {"quantization": quantization, "calibration_data": calibration_data},
            backend=archive.backend)
    flatbuffer, text_ops = convert(archive, opts)
    meta = _metadata(archive, opts, context)
    if text_ops:  # kexport's LiteRT runtime registers TF Text's kernels for it
        meta = meta.with_extras(extensions=[TENSORFLOW_TEXT])
    data, _ = _with_metadata(flatbuffer, meta)
    with atomic_target(filepath, is_dir=False, overwrite=context.overwrite) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise WriteError(f"{step_label('place', 'litert')}: could not write the file: {e}") from e
        context.check_staged(tmp)  # before it is placed: a failed check places nothing
    if context.printer.on:
        _summary.print_summary("litert", archive.endpoints, filepath,
                               say=context.printer)

"""The public export functions: ``export_model`` and one per format."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from kexport import _atomic, routing
from kexport.artifact import format_info
from kexport.artifact.exclusion import check_exclude, resolve_layers
from kexport.artifact.quantization import check_quantization, keras_quantized, supported_modes
from kexport.check.policy import policy_for
from kexport.check.tolerance import KERAS_QUANTIZED_REORDERED
from kexport.context import ExportContext, Printer
from kexport.errors import SignatureTypeError, describe
from kexport.rehost.generative import export_task
from kexport.signature import normalize_for_model
from kexport.staged import staged_check
from kexport.verify import raise_if_failed, verify_on

__all__ = ["export_litert", "export_model", "export_onnx", "export_openvino", "export_saved_model",
           "export_torch"]


def _check_common(model: Any, filepath: Any) -> None:
    import keras

    if not isinstance(model, keras.layers.Layer):
        raise SignatureTypeError(
            f"Expected `model` to be a Keras model or layer. Received: {describe(model)}"
        )
    _atomic.check_filepath(filepath)


def export_model(model: Any, filepath: str | os.PathLike[str], format: str = "tf_saved_model",
                 verbose: bool | None = None, input_signature: Any | None = None,
                 overwrite: bool = False, verify: bool | dict[str, Any] | None = None,
                 sample_data: Any | None = None, **kwargs: Any) -> None:
    """Export a Keras model (or layer) as a standalone inference artifact.

    Args:
        model: a built Keras model or layer, on any backend.
        filepath: where to write the artifact (``str`` or ``pathlib.Path``).
        format: the artifact format; see ``kexport.artifact.FORMATS``.
        verbose: ``True`` prints a summary, ``False`` nothing, ``None`` the
            format's default.
        input_signature: the inputs' shapes and dtypes; computed from the
            model when omitted (batch dimension dynamic).
        overwrite: replace ``filepath`` even when it holds data that is not a
            kexport artifact (an existing kexport artifact is always replaced,
            atomically).
        verify: by default (``None``) the artifact is checked before it is
            placed: the format's runtime runs the staged artifact in this
            process on generated inputs (every dynamic axis at two sizes; see
            docs/verification.md) and it is compared with ``model``; when it
            differs, nothing is written. ``True`` also reloads the placed
            artifact in a fresh process (:func:`kexport.verify`) and stores
            that report in it; a dict does both with options (``atol``,
            ``rtol``, ``seed``, ``sizes``, ``precision``, ``scores``), the
            fresh-process check left out with ``"fresh_process": False``.
            ``False``: no check (re-hosted routes still check themselves
            before placing).
        sample_data: inputs the model really takes, in its input structure
            (one array, a tuple/list, or a dict keyed by input name): every
            check of this export (the re-host check, the ONNX acceptance,
            ``verify``) runs on batch slices of it instead of generated
            inputs. Without it, generated inputs follow the model: ids over
            each ``Embedding``'s ``[0, input_dim)``, masks with a kept prefix
            (see docs/verification.md).
        **kwargs: format/backend options. JAX: ``is_static``,
            ``jax2tf_kwargs``. Formats that quantize (ONNX, LiteRT, OpenVINO; see
            docs/quantization.md): ``quantization`` (``"float16"``,
            ``"dynamic_int8"``, ``"int8"``; ``"bfloat16"`` where the
            format's runtime runs it) and ``calibration_data`` (typical
            inputs for ``"int8"``: batches in the model's input structure,
            NumPy arrays or a ``tf.data.Dataset``); ``quantization_exclude``
            (a list of Keras layer names or paths such as ``"block/dense"``:
            those layers stay float; ONNX only, see docs/quantization.md).

    Example:

    ```python
    kexport.export_model(model, "path/to/location")
    reloaded = tf.saved_model.load("path/to/location")
    predictions = reloaded.serve(input_data)
    ```

    Raises:
        SignatureError: bad arguments or a signature that does not fit.
        QuantizationError: ``quantization`` names an unknown mode or one
            the format cannot write (the message names those it can),
            ``"int8"`` without ``calibration_data``, or calibration data that
            does not fit the inputs (a ``ValueError``); nothing is written.
            Also ``quantization_exclude`` without a mode, on a format that
            cannot keep layers in float, or naming no layer of the model (the
            message lists the valid names); a ``LayerMappingError`` when no
            route's graph tells which nodes came from those layers.
        SampleDataError: ``sample_data`` does not fit the model's inputs
            (names, dtype, rank or a static size; a ``ValueError``), before
            anything is written.
        TargetExistsError: ``filepath`` holds other data and ``overwrite`` is
            false (checked before any work).
        UnsupportedRouteError: unknown format or no route from this backend.
        VerificationError: the artifact does not compute what the model
            computes; ``.report`` holds the report. Nothing is written when
            the check before placement fails; when only the fresh-process
            check of ``verify=True`` fails, the artifact is kept with the
            failed report inside it.
        CaptureError, WriteError: when a pipeline step fails (nothing is left
            half-written and an existing artifact at ``filepath`` is kept).
    """
    import keras

    _check_common(model, filepath)
    printer = Printer.resolve(verbose)  # the one check of `verbose`
    verify_options = _verify_options(verify)
    if kwargs.get("task") is not None:  # prefill/decode with a cache: docs/generation.md
        export_task(model, filepath, format, verbose=verbose, overwrite=overwrite, **kwargs)
        return
    for key in _CALIBRATION_KEYS:  # a one-pass generator: read once, for the export and its check
        if isinstance(kwargs.get(key), Iterator):
            kwargs[key] = list(kwargs[key])
    typed = _typed_options(format, kwargs)
    if kwargs.get("quantization_exclude") is not None:  # unknown layers: before any work
        resolve_layers(model, kwargs["quantization_exclude"])
    candidates = routing.usable(keras.backend.backend(), format, model)
    # what check inputs must respect, read from the model once for every check
    policy = policy_for(model, normalize_for_model(model, input_signature), sample_data)
    _atomic.check_destination(filepath, overwrite)
    calibration = calibration_option(kwargs)
    if format in KERAS_QUANTIZED_REORDERED and keras_quantized(model):
        atol, rtol = KERAS_QUANTIZED_REORDERED[format]
        verify_options = {"atol": atol, "rtol": rtol, **verify_options}
    check = None if verify is False else staged_check(model, filepath, verify_options, policy,
                                                      calibration)
    context = ExportContext(overwrite=overwrite, samples=policy, check=check,
                            printer=printer, options=typed)
    routing.export(candidates, model, filepath, context=context, input_signature=input_signature, **kwargs)
    if verify is True or (isinstance(verify, dict) and verify.get("fresh_process", True)):
        _verify_export(model, filepath, verify_options, context, calibration)


_CALIBRATION_KEYS = ("calibration_data", "representative_dataset")


def calibration_option(options: dict[str, Any]) -> Any | None:
    """The calibration data an export was given (``calibration_data``, or
    LiteRT's former name ``representative_dataset``), ``None`` without."""
    for key in _CALIBRATION_KEYS:
        if options.get(key) is not None:
            return options[key]
    return None


def _typed_options(format: str, kwargs: dict[str, Any]) -> Any:
    """The format's declared options parsed once (names, types, the quantization
    request) for ``context.options``; ``None`` (the request checked here) for a
    format that declares none yet."""
    import keras

    format_info(format)
    declared = routing.archive_route(format).options
    if declared is None:
        _check_quantization(format, kwargs)
        return None
    return declared.parse(kwargs, backend=keras.backend.backend(), entry="export_model")


def _check_quantization(format: str, kwargs: dict[str, Any]) -> None:
    """Refuse a quantization ``format`` cannot write before any work; drop the
    unset options for formats that take none."""
    format_info(format)
    mode = kwargs.get("quantization")
    data = kwargs.get("calibration_data")
    if data is None:
        data = kwargs.get("representative_dataset")
    check_quantization(format, mode, data)
    check_exclude(format, mode, kwargs.get("quantization_exclude"))
    if mode is None and not supported_modes(format):
        kwargs.pop("quantization", None)
        kwargs.pop("calibration_data", None)
        kwargs.pop("quantization_exclude", None)


def _verify_options(verify: Any) -> dict[str, Any]:
    """``export_model``'s ``verify`` as options of :func:`kexport.verify`."""
    if verify is None or isinstance(verify, bool):
        return {}
    if isinstance(verify, dict):
        options = dict(verify)
        fresh = options.pop("fresh_process", True)
        if not isinstance(fresh, bool):
            raise SignatureTypeError(f"Expected verify['fresh_process'] to be True or False. "
                                     f"Received: {describe(fresh)}")
        return options
    raise SignatureTypeError(
        "Expected `verify` to be None (check before placing), True (also in a fresh "
        f"process), False (no check) or a dict of kexport.verify options. Received: "
        f"{describe(verify)}")


def _verify_export(model: Any, filepath: str | os.PathLike[str], options: dict[str, Any],
                   context: ExportContext, calibration: Any | None = None) -> None:
    """Run :func:`kexport.verify` after an export; raise if it fails. Without
    ``inputs``/``data`` of its own (or the export's ``sample_data``), the check
    runs on the export's calibration data when it had some: a quantized
    artifact is judged on inputs like those it was calibrated on."""
    options = dict(options)
    options.setdefault("calibration_data", calibration)
    raise_if_failed(verify_on(model, filepath, policy=context.samples, **options), filepath)


def export_saved_model(model: Any, filepath: str | os.PathLike[str],
                       verbose: bool | None = None, input_signature: Any | None = None,
                       overwrite: bool = False, **kwargs: Any) -> None:
    """Export ``model`` as a TensorFlow SavedModel; see :func:`export_model`."""
    export_model(model, filepath, format="tf_saved_model", verbose=verbose,
                 input_signature=input_signature, overwrite=overwrite, **kwargs)


def export_onnx(model: Any, filepath: str | os.PathLike[str], verbose: bool | None = None,
                input_signature: Any | None = None, opset_version: int | None = None,
                quantization: str | None = None, calibration_data: Any | None = None,
                quantization_exclude: list[str] | None = None, **kwargs: Any) -> None:
    """Export ``model`` as an ONNX graph; see :func:`export_model` and docs/onnx.md.

    Works on the TensorFlow, JAX and PyTorch backends. The file at
    ``filepath`` (any name) loads with ``onnxruntime.InferenceSession``; its
    inputs and outputs carry the Keras names and every ``None`` dimension is
    symbolic.

    Args:
        model: a built Keras model or layer.
        filepath: the ONNX file to write (need not end in ``.onnx``).
        verbose: print a summary (``None``: yes).
        input_signature: as for :func:`export_model`.
        opset_version: the ONNX opset (default
            ``kexport.formats.onnx.DEFAULT_OPSET``, 18).
        quantization: ``None``, ``"dynamic_int8"`` (int8 weights, per channel),
            ``"int8"`` (static QDQ, calibrated on ``calibration_data``) or
            ``"float16"`` (inputs and outputs stay float32), with
            ``onnxruntime.quantization``; see docs/quantization.md.
        calibration_data: typical inputs for ``"int8"``: an iterable of
            batches in the model's input structure, NumPy arrays or a
            ``tf.data.Dataset``.
        quantization_exclude: Keras layer names (or paths, ``"block/dense"``)
            whose nodes stay float in the quantized graph; see
            docs/quantization.md.
        **kwargs: ``external_data_threshold`` (bytes; weights above it go to
            ``<filepath>.data``, default just under 2 GiB), and the options
            of :func:`export_model`.

    Example:

    ```python
    kexport.export_onnx(model, "model.onnx")
    session = onnxruntime.InferenceSession("model.onnx")
    outputs = session.run(None, {"input_name": x})
    ```
    """
    if quantization is not None or calibration_data is not None:
        kwargs.update(quantization=quantization, calibration_data=calibration_data)
    if quantization_exclude is not None:
        kwargs.update(quantization=quantization, quantization_exclude=quantization_exclude)
    export_model(model, filepath, format="onnx", verbose=verbose,
                 input_signature=input_signature, opset_version=opset_version, **kwargs)


def export_litert(model: Any, filepath: str | os.PathLike[str], verbose: bool | None = None,
                  input_signature: Any | None = None, quantization: str | None = None,
                  calibration_data: Any | None = None, allow_flex: bool = False,
                  representative_dataset: Any | None = None,
                  quantization_exclude: list[str] | None = None, **kwargs: Any) -> None:
    """Export ``model`` as a LiteRT (TensorFlow Lite) ``.tflite`` file; see docs/litert.md.

    Works on the TensorFlow and JAX backends natively and on PyTorch by
    re-hosting onto TensorFlow. The file has one named signature, ``serve``,
    whose inputs and outputs carry the Keras names; standard layers (LSTM
    included) use builtin operators only and the batch dimension stays
    resizable.

    Args:
        model: a built Keras model or layer.
        filepath: the ``.tflite`` file to write.
        verbose: print a summary (``None``: yes).
        input_signature: as for :func:`export_model`.
        quantization: ``None``, ``"dynamic_int8"``, ``"float16"`` or ``"int8"``.
        calibration_data: calibration batches for ``"int8"`` (see
            :func:`export_model`).
        representative_dataset: the former name of ``calibration_data``.
        allow_flex: allow Select-TF (Flex) operators.
        quantization_exclude: refused with a ``QuantizationError``: the TFLite
            converter offers no supported way to keep chosen layers in float
            (see docs/quantization.md).
        **kwargs: the options of :func:`export_model`.

    Example:

    ```python
    kexport.export_litert(model, "model.tflite")
    from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert

    runner = Interpreter("model.tflite").get_signature_runner("serve")
    outputs = runner(x=inputs)  # {"y": ...}
    ```
    """
    options: dict[str, Any] = {"quantization": quantization, "allow_flex": allow_flex}
    if calibration_data is not None:
        options["calibration_data"] = calibration_data
    if representative_dataset is not None:
        options["representative_dataset"] = representative_dataset
    if quantization_exclude is not None:
        options["quantization_exclude"] = quantization_exclude
    export_model(model, filepath, format="litert", verbose=verbose,
                 input_signature=input_signature, **options, **kwargs)


def export_openvino(model: Any, filepath: str | os.PathLike[str], verbose: bool | None = None,
                    input_signature: Any | None = None, quantization: str | None = None,
                    calibration_data: Any | None = None,
                    quantization_exclude: list[str] | None = None, **kwargs: Any) -> None:
    """Export ``model`` as OpenVINO IR (``name.xml`` + ``name.bin``); see docs/openvino.md.

    Args:
        model: a built Keras model or layer.
        filepath: ``name.xml`` (``name.bin`` goes beside it).
        verbose: print a summary (``None``: yes).
        input_signature: as for :func:`export_model`.
        quantization: ``None``, ``"float16"`` (``compress_to_fp16``),
            ``"dynamic_int8"`` (``nncf.compress_weights``, INT8_ASYM) or
            ``"int8"`` (``nncf.quantize`` on ``calibration_data``); inputs and
            outputs stay f32. See docs/quantization.md.
        calibration_data: typical inputs for ``"int8"`` (see :func:`export_model`).
        quantization_exclude: Keras layer names (or paths, ``"block/dense"``)
            whose operations stay float with ``"dynamic_int8"`` or ``"int8"``
            (NNCF's ``IgnoredScope``); see docs/quantization.md.
        **kwargs: the options of :func:`export_model`.

    Example:

    ```python
    kexport.export_openvino(model, "model.xml")
    # State the precision: on CPUs with bf16 units OpenVINO defaults to bf16.
    compiled = openvino.Core().compile_model("model.xml", "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    ```
    """
    if quantization is not None or calibration_data is not None:
        kwargs.update(quantization=quantization, calibration_data=calibration_data)
    if quantization_exclude is not None:
        kwargs.update(quantization=quantization, quantization_exclude=quantization_exclude)
    export_model(model, filepath, format="openvino", verbose=verbose,
                 input_signature=input_signature, **kwargs)


def export_torch(model: Any, filepath: str | os.PathLike[str], verbose: bool | None = None,
                 input_signature: Any | None = None, **kwargs: Any) -> None:
    """Export ``model`` as a ``torch.export`` program (``.pt2``); see docs/torch_program.md.

    Native on the PyTorch backend; TensorFlow and JAX models are re-hosted onto
    PyTorch in a child process and verified before the file is placed.

    Example:

    ```python
    kexport.export_torch(model, "model.pt2")
    program = torch.export.load("model.pt2").module()
    y = program(torch.from_numpy(x))
    ```
    """
    export_model(model, filepath, format="torch", verbose=verbose,
                 input_signature=input_signature, **kwargs)

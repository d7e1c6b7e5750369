"""Quantization modes: the one list of names and the checks every format and the CLI use.

``quantization=`` takes the same names on ``export_model``, the format
functions, ``ExportArchive.write_out`` and ``kexport export --quantize``:

- ``"float16"``: float16 weights (and compute where the runtime does it);
  graph inputs and outputs stay float32;
- ``"bfloat16"``: the same in bfloat16, where a format's runtime runs it;
- ``"dynamic_int8"``: int8 weights, activations quantized on the fly (float
  inputs and outputs);
- ``"int8"``: static int8, calibrated on ``calibration_data`` (typical
  inputs); inputs and outputs stay float32.

Each format declares the modes it writes (``FormatDescriptor.quantizations``
in :data:`kexport.artifact.FORMATS`); :func:`check_quantization` refuses the
rest with a :class:`~kexport.errors.QuantizationError` naming what works,
before anything is written. An artifact records its mode in a
:func:`record` (ONNX: ``metadata_props["kexport.quantization"]``; folder
artifacts: the manifest's ``quantization`` entry), which :func:`read_record`
reads back for ``kexport.load`` and ``kexport.verify``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kexport.artifact.descriptors import FORMATS
from kexport.errors import QuantizationError, describe

__all__ = ["CALIBRATED", "KERAS_MODES", "METADATA_KEY", "MODES", "keras_quantized", "PRECISION", "check_quantization",
           "formats_for", "precision_of", "read_record", "record", "supported_modes"]

#: Every mode name, in the order messages and tables list them.
MODES: tuple[str, ...] = ("float16", "bfloat16", "dynamic_int8", "int8")
#: The modes that need ``calibration_data``.
CALIBRATED: tuple[str, ...] = ("int8",)
#: The compute precision of each mode: the row of the tolerance table a check uses.
PRECISION: dict[str | None, str] = {None: "float32", "float16": "float16",
                                    "bfloat16": "bfloat16", "dynamic_int8": "int8",
                                    "int8": "int8"}
#: Where a single-file ONNX artifact records its :func:`record`.
METADATA_KEY = "kexport.quantization"


#: The modes of Keras's own ``Model.quantize(mode)`` (Keras 3.15): what a layer's
#: ``quantization_mode`` can read. Not kexport's ``quantization=`` names: a model
#: quantized by Keras is exported as it computes, by the routes that hold it.
KERAS_MODES: tuple[str, ...] = ("int8", "float8", "int4", "gptq", "awq")


def keras_quantized(model: Any) -> dict[str, list[str]]:
    """The layers Keras itself quantized in ``model``, by mode.

    Returns ``{mode: ["Dense 'd1'", "EinsumDense 'proj'", ...]}`` (empty for a
    float model), read from each layer's ``quantization_mode``; nothing is
    imported and the model is not called.
    """
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True)) if callable(flatten) else [model]
    found: dict[str, list[str]] = {}
    for layer in layers:
        try:
            mode = getattr(layer, "quantization_mode", None)
        except Exception:  # a policy that cannot answer is not a quantized layer
            mode = None
        if isinstance(mode, str) and mode:
            found.setdefault(mode, []).append(
                f"{type(layer).__name__} {getattr(layer, 'name', '?')!r}")
    return found


def supported_modes(format: str) -> tuple[str, ...]:
    """The modes ``format`` writes (empty for a format that does not quantize)."""
    descriptor = FORMATS.get(format)
    return descriptor.quantizations if descriptor is not None else ()


def formats_for(mode: str) -> list[str]:
    """The formats that write ``mode``."""
    return [name for name, d in FORMATS.items() if mode in d.quantizations]


def precision_of(mode: str | None) -> str:
    """The compute precision of ``mode`` (``"float32"`` for ``None``)."""
    return PRECISION.get(mode, "float32")


def check_quantization(format: str, mode: Any, calibration_data: Any = None, *,
                       supported: tuple[str, ...] | None = None) -> str | None:
    """Check a ``quantization=`` request for ``format``; return the mode.

    Args:
        format: the artifact format.
        mode: ``None`` (no quantization) or one of :data:`MODES`.
        calibration_data: the ``calibration_data=`` given (only its presence
            is checked here; each format checks that it fits the inputs).
        supported: the modes this route writes, when fewer than the format's.

    Raises:
        QuantizationError: an unknown mode; a mode the format does not write
            (the message names the modes it writes and the formats that write
            the mode asked for); a calibrated mode without
            ``calibration_data``; ``calibration_data`` with a mode that does
            not use it.
    """
    if mode is None:
        if calibration_data is not None:
            raise QuantizationError(
                "`calibration_data` is only used with quantization='int8'. Received: "
                "quantization=None. Next step: pass quantization='int8', or drop "
                "calibration_data.")
        return None
    if not isinstance(mode, str) or mode not in MODES:
        received = f"quantization={mode!r}" if isinstance(mode, str) else describe(mode)
        raise QuantizationError(
            f"Expected `quantization` to be one of {list(MODES)} (or None). "
            f"Received: {received}")
    works = supported_modes(format) if supported is None else supported
    if mode not in works:
        others = [f for f in formats_for(mode) if f != format]
        where = (f" Formats that write quantization={mode!r}: {others}." if others else "")
        raise QuantizationError(
            f"Expected a quantization mode format={format!r} can write: "
            f"{list(works) if works else 'none (this format does not quantize)'}. "
            f"Received: quantization={mode!r}. kexport never writes a float artifact "
            f"in place of a quantized one.{where}")
    if mode in CALIBRATED and calibration_data is None:
        raise QuantizationError(
            f"Expected `calibration_data` (typical inputs: an iterable of batches in the "
            f"model's input structure, NumPy arrays or a tf.data.Dataset) with "
            f"quantization={mode!r}. Received: calibration_data=None. Next step: pass a "
            f"few hundred typical inputs, or use quantization='dynamic_int8'.")
    if mode not in CALIBRATED and calibration_data is not None:
        raise QuantizationError(
            f"`calibration_data` is only used with quantization='int8'. Received: "
            f"quantization={mode!r}")
    return mode


def record(mode: str, calibration_samples: int | None,
           toolchain: Mapping[str, str], excluded: Sequence[str] | None = None
           ) -> dict[str, Any]:
    """What an artifact records about its quantization (JSON-able).

    Args:
        mode: one of :data:`MODES`.
        calibration_samples: how many input rows calibrated it (``None``
            for modes without calibration).
        toolchain: package -> version of the tools that quantized it.
        excluded: the paths of the layers kept in float
            (``quantization_exclude``), recorded as ``excluded_layers`` when
            there are some.
    """
    out = {"mode": mode, "precision": precision_of(mode),
           "calibration_samples": calibration_samples,
           "toolchain": dict(sorted(toolchain.items()))}
    if excluded:
        out["excluded_layers"] = list(excluded)
    return out


def read_record(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The quantization record in an artifact's metadata, or ``None`` (float).

    Reads ``metadata_props["kexport.quantization"]`` (single ONNX files) or
    the manifest's ``quantization`` entry (a record, or a bare mode name as
    LiteRT writes it). Never raises: an unreadable entry reads as ``None``.
    """
    for key in (METADATA_KEY, "quantization"):
        value = metadata.get(key)
        if isinstance(value, Mapping) and value.get("mode") in MODES:
            return dict(value)
        if isinstance(value, str) and value in MODES:
            return {"mode": value, "precision": precision_of(value)}
    return None

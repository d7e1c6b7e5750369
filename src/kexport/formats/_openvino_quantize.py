"""The quantization step of the OpenVINO writer: on the converted IR, before it is saved.

Built on OpenVINO's own toolchain (NNCF and ``openvino.save_model``), per
endpoint, on the ``openvino.Model`` that :mod:`kexport.formats.openvino`
converted and named:

- ``"float16"``: nothing here; the writer saves with
  ``openvino.save_model(..., compress_to_fp16=True)``: float16 weight
  constants, each followed by a ``Convert`` to f32 (the CPU plugin decompresses
  them; compute stays in the compile's ``INFERENCE_PRECISION_HINT``, f32 in
  kexport), float32 inputs and outputs;
- ``"dynamic_int8"``: ``nncf.compress_weights(mode=INT8_ASYM)``: per-channel
  asymmetric uint8 weights with a uint8 zero point and a float16 scale
  (NNCF's default int8 mode, more accurate than ``INT8_SYM`` on weights that
  are not centred on zero), for every MatMul, Convolution and embedding;
  activations stay float;
- ``"int8"``: ``nncf.quantize`` (post-training, min/max statistics, NNCF's
  default ``performance`` preset: symmetric activations; 7-bit weights in every layer,
  NNCF's overflow fix, so CPUs without VNNI compute what the check saw) on
  ``nncf.Dataset`` over the user's calibration batches as
  :func:`kexport.check.calibration.calibration_batches` read them:
  ``FakeQuantize`` on activations; ``openvino.save_model`` folds the weights'
  ``FakeQuantize`` into int8 constants.

Inputs and outputs stay float32 in every mode. ``bfloat16`` is not written:
the IR would only carry bf16 constants that the CPU plugin decompresses, and
running in bf16 is a compile-time choice (``kexport.load(path,
precision="bf16")``), not a property of the file.

``ignored_nodes`` (IR operation names) keeps those operations in float with
``nncf.IgnoredScope(names=...)``: the writer passes the operations of the
layers of ``quantization_exclude`` (:mod:`kexport.artifact.exclusion`).
``compress_weights`` then leaves their weights f32, and ``quantize`` puts no
``FakeQuantize`` on their weights or inputs. ``"float16"`` cannot keep any:
``openvino.save_model(compress_to_fp16=True)`` compresses every float
weight, and OpenVINO's Python API offers no per-operation exemption.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kexport.context import step_label
from kexport.errors import KexportError, QuantizationError, WriteError

__all__ = ["quantize_ir", "toolchain"]


def toolchain() -> dict[str, str]:
    """The versions of the packages that quantize OpenVINO IR."""
    import nncf
    import openvino as ov

    return {"nncf": nncf.__version__, "openvino": ov.__version__}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's tables, progress bars and INFO lines stay out of kexport's output
    (kexport prints its own summary); its warnings and errors still surface."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def quantize_ir(model: Any, mode: str, calibration: Sequence[Mapping[str, Any]] | None,
                endpoint: str, *, ignored_nodes: Sequence[str] = ()) -> Any:
    """``model`` (a converted, named ``openvino.Model``) quantized in ``mode``.

    Args:
        model: the float IR; NNCF works on a clone, ``model`` is not changed.
        mode: ``"dynamic_int8"``, ``"int8"`` or ``"float16"`` (``"float16"``
            returns ``model``: the writer compresses it when saving).
        calibration: for ``"int8"``: the batches, ``{input name: array}``
            (see :func:`kexport.check.calibration.calibration_batches`); the
            names are the IR's input tensor names.
        endpoint: the endpoint's name, for messages.
        ignored_nodes: IR operation names to keep in float.

    Raises:
        QuantizationError: ``ignored_nodes`` with ``"float16"``, or a name
            the IR does not hold.
        WriteError: when NNCF fails (the message names the step).
    """
    if mode == "float16":
        if ignored_nodes:
            raise QuantizationError(
                f"Expected no nodes to keep in float with quantization='float16' on "
                f"format='openvino' (openvino.save_model compresses every weight). "
                f"Received: {list(ignored_nodes)}. Next step: use quantization="
                "'dynamic_int8' or 'int8', which keep them in float.")
        return model
    import nncf

    scope = None
    if ignored_nodes:
        known = {op.get_friendly_name() for op in model.get_ops()}
        missing = [n for n in ignored_nodes if n not in known]
        if missing:
            raise QuantizationError(
                f"Expected the nodes to keep in float to be operations of endpoint "
                f"'{endpoint}' of the IR. Received names it does not hold: {missing}")
        scope = nncf.IgnoredScope(names=list(ignored_nodes))
    try:
        with _quiet():
            if mode == "dynamic_int8":
                return nncf.compress_weights(model.clone(),
                                             mode=nncf.CompressWeightsMode.INT8_ASYM,
                                             ignored_scope=scope)
            batches = list(calibration or [])
            # 7-bit weights in every layer (NNCF's overflow fix): without VNNI the CPU's u8 x s8
            # multiply-add saturates on full-range weights, so the same IR computed another
            # answer on such CPUs (the demo's digits MLP: cosine 0.905 vs 0.999 on one image)
            return nncf.quantize(model.clone(), nncf.Dataset(batches, dict),
                                 subset_size=len(batches), ignored_scope=scope,
                                 advanced_parameters=nncf.AdvancedQuantizationParameters(
                                     overflow_fix=nncf.OverflowFix.ENABLE))
    except KexportError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
        raise WriteError(
            f"{step_label('finish', f'quantize: {mode}, nncf')} of endpoint '{endpoint}' failed: "
            f"{type(e).__name__}: {first}. Next step: try another quantization mode, or "
            "export without quantization.") from e

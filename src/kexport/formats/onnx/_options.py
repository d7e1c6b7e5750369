"""Step 1 checks of the ONNX writer: its options, and models no converter can take."""

from __future__ import annotations

from typing import Any

from kexport.artifact.exclusion import check_exclude
from kexport.artifact.quantization import check_quantization
from kexport.context import step_label
from kexport.errors import SignatureError, SignatureTypeError, UnsupportedRouteError
from kexport.formats.onnx._graph import DEFAULT_EXTERNAL_DATA_THRESHOLD, DEFAULT_OPSET

__all__ = ["_check_opset", "_check_threshold", "_pop_options", "_refuse_lookup_layers"]

_MIN_OPSET = 13
_LOOKUP_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization", "Hashing")


def _check_opset(opset_version: Any) -> int:
    if opset_version is None:
        return DEFAULT_OPSET
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset_version, bool) or not isinstance(opset_version, int) or not (
            _MIN_OPSET <= opset_version <= newest):
        raise SignatureError(
            f"Expected `opset_version` to be an int from {_MIN_OPSET} to {newest} "
            f"(the newest this onnx package knows). Received: opset_version={opset_version!r}"
        )
    return opset_version


def _check_threshold(threshold: Any) -> int:
    if threshold is None:
        return DEFAULT_EXTERNAL_DATA_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise SignatureError(
            "Expected `external_data_threshold` to be a non-negative int (bytes). "
            f"Received: external_data_threshold={threshold!r}"
        )
    return threshold


def _pop_options(kwargs: dict[str, Any], backend: str) -> dict[str, Any]:
    """Split ONNX options from ``kwargs``; refuse what no route understands."""
    calibration_data = kwargs.pop("calibration_data", None)
    mode = check_quantization("onnx", kwargs.pop("quantization", None), calibration_data)
    opts = {
        "opset": _check_opset(kwargs.pop("opset_version", None)),
        "threshold": _check_threshold(kwargs.pop("external_data_threshold", None)),
        "quantization": mode,
        "calibration_data": calibration_data,
        "exclude": check_exclude("onnx", mode, kwargs.pop("quantization_exclude", None)),
    }
    # JAX's SavedModel options have no meaning for an ONNX graph (no jax2tf here).
    kwargs.pop("is_static", None)
    kwargs.pop("jax2tf_kwargs", None)
    if kwargs:
        raise SignatureTypeError(
            f"Unexpected keyword arguments for ONNX export on the {backend} backend: "
            f"{sorted(kwargs)}. Expected only `opset_version`, `external_data_threshold`, "
            "`quantization`, `calibration_data` and `quantization_exclude`."
        )
    return opts


def _refuse_lookup_layers(model: Any, route: str) -> None:
    """Lookup layers hold TensorFlow hash tables: refuse them with a clear error."""
    try:
        layers = [model, *model._flatten_layers(include_self=False)]
    except Exception:
        return
    for layer in layers:
        if type(layer).__name__ in _LOOKUP_LAYERS:
            raise UnsupportedRouteError(
                f"{step_label('plan', f'route: {route}')}: Keras layer '{layer.name}' "
                f"({type(layer).__name__}) cannot be exported to ONNX: its vocabulary "
                "lives in a TensorFlow hash table that no ONNX converter maps to "
                "ONNX-ML operators ONNX Runtime runs reliably. Next steps: apply "
                "the lookup before the model (export the model from its integer "
                "ids onward), or export format='tf_saved_model', which keeps the table."
            )

"""Step 1 checks of the ONNX writer: its options (:class:`OnnxOptions`, declared once,
parsed once where the call enters), and models no converter can take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from kexport.artifact.exclusion import check_exclude
from kexport.artifact.quantization import check_quantization
from kexport.context import step_label
from kexport.errors import SignatureError, UnsupportedRouteError
from kexport.formats._options import FormatOptions
from kexport.formats.onnx._graph import DEFAULT_EXTERNAL_DATA_THRESHOLD, DEFAULT_OPSET

__all__ = ["OnnxOptions", "_check_opset", "_check_threshold", "_refuse_lookup_layers"]

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


@dataclass(frozen=True)
class OnnxOptions(FormatOptions):
    """The options of ``format="onnx"``, checked and normalised when built.

    Attributes:
        opset_version: the ONNX opset of every graph (13 up to the newest the
            installed ``onnx`` knows; default :data:`DEFAULT_OPSET`).
        external_data_threshold: bytes above which a single model's weights go
            to ``<file>.onnx.data`` (``export_model`` only: an archive is a folder).
        quantization: the quantization mode (``None``: float), as
            :func:`~kexport.artifact.quantization.check_quantization` returns it.
        calibration_data: batches for a static mode.
        quantization_exclude: names of layers kept in float (a tuple).
    """

    FORMAT: ClassVar[str] = "onnx"
    ENTRIES: ClassVar[dict[str, tuple[str, ...]]] = {
        "write_out": ("opset_version", "quantization", "calibration_data",
                      "quantization_exclude")}
    # JAX's SavedModel options have no meaning for an ONNX graph (no jax2tf here).
    IGNORED: ClassVar[dict[str, tuple[str, ...]]] = {
        "export_model": ("is_static", "jax2tf_kwargs")}

    opset_version: int = DEFAULT_OPSET
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    quantization: str | None = None
    calibration_data: Any = field(default=None, compare=False, repr=False)
    quantization_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        mode = check_quantization("onnx", self.quantization, self.calibration_data)
        values = {
            "opset_version": _check_opset(self.opset_version),
            "external_data_threshold": _check_threshold(self.external_data_threshold),
            "quantization": mode,
            "quantization_exclude": check_exclude("onnx", mode, self.quantization_exclude or None),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)


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

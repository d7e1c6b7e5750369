"""The route table: which backend can write which format, and how.

A *route* is one way from a Keras backend to an artifact format: a capture
plus a writer, or a re-host onto another backend plus that backend's route.
This module is the only place that maps backends and formats to code, as
typed entries holding the functions themselves; the rest of kexport asks it
(:func:`resolve`, :func:`usable`) instead of
branching on ``keras.backend.backend()``. Adding a format is one writer module
under :mod:`kexport.formats`, one loader under :mod:`kexport.runtime`, one
descriptor in :mod:`kexport.artifact` and its rows here and in
:mod:`kexport.routing.archive_routes` (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kexport._outcome import Outcome, attempt
from kexport.artifact import BACKENDS, FORMATS, format_info, missing_packages
from kexport.artifact.quantization import keras_quantized
from kexport.capture.jax import native_problem
from kexport.context import ExportContext
from kexport.errors import QuantizedModelError, UnsupportedRouteError
from kexport.formats import litert, onnx, openvino, torch_program
from kexport.rehost import rehost_problem
from kexport.routing.single import native_export, rehost_export_for

__all__ = ["Route", "holding_formats", "matrix", "resolve", "routes", "usable"]


@dataclass(frozen=True)
class Route:
    """One way to produce ``format`` from ``backend``.

    Attributes:
        backend: the Keras backend the model lives on.
        format: the artifact format produced.
        kind: ``"native"`` (traced on the model's own backend) or ``"rehost"``.
        via: the building blocks used, for people.
        export: the function that performs it: ``export(model, filepath, *,
            context, input_signature, **options)`` (``context``: the
            export's :class:`~kexport.context.ExportContext`, its printer
            included). It raises :class:`~kexport.errors.RouteRefused` when
            the model turns out to be one it cannot carry; :meth:`run` holds
            that refusal in its result, and the next route of the cell runs.
        packages: importable modules this route needs.
        extra: the pip extra that installs them.
        check: optional ``check(model) -> str``: why this route cannot carry
            ``model`` (``""`` when it can), e.g. layers a capture cannot trace.
        host: for re-host routes, the backend the model is rebuilt on.
        refuses: the modes of Keras's own ``Model.quantize`` whose layers this
            route cannot hold, each with why (its toolchain's limit, measured
            by ``tests/test_keras_quantized.py``): ``{mode: why}``.
    """

    backend: str
    format: str
    kind: str
    via: str
    export: Callable[..., Any] = field(compare=False, repr=False)
    packages: tuple[str, ...]
    extra: str
    check: Callable[[Any], str] | None = field(default=None, compare=False, repr=False)
    host: str | None = None
    refuses: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def missing(self) -> tuple[str, ...]:
        """Required modules that cannot be imported here."""
        return missing_packages(self.packages)

    @property
    def available(self) -> bool:
        """Whether every package this route needs is installed."""
        return not self.missing

    @property
    def reason(self) -> str:
        """Why the route is unavailable, with the command that fixes it."""
        if not self.missing:
            return ""
        return (f"missing {', '.join(self.missing)}: "
                f"pip install 'kexport[{self.extra}]'")

    def problem(self, model: Any | None = None) -> str:
        """Why this route cannot export ``model`` here, ``""`` when it can.

        A missing package (with the ``pip install`` that fixes it), what the
        route's :attr:`check` says of the model or, for re-host routes, a model
        feature that cannot travel to the child process (a layer attribute
        that cannot be pickled, e.g. a lock).
        """
        if self.missing:
            return self.reason
        if model is not None:
            refused = self.quantized_problem(model)
            if refused:
                return refused
        if model is not None and self.check is not None:
            problem = self.check(model)
            if problem:
                return problem
        if model is not None and self.kind == "rehost":
            return rehost_problem(model)
        return ""

    def quantized_problem(self, model: Any) -> str:
        """Why this route cannot hold the layers Keras quantized in ``model``
        (``Model.quantize``; see :attr:`refuses`), ``""`` when it can."""
        found = keras_quantized(model)
        for mode, why in self.refuses.items():
            if mode in found:
                return (f"layers quantized by Keras with mode {mode!r} "
                        f"({', '.join(found[mode][:4])}{', ...' if len(found[mode]) > 4 else ''}) "
                        f"cannot be held: {why}")
        return ""

    def run(self, model: Any, filepath: Any, *, context: ExportContext,
            input_signature: Any | None = None, **options: Any) -> Outcome[Any]:
        """Export ``model`` by this route: an :class:`~kexport._outcome.Outcome`
        holding what :attr:`export` returned (a re-host's report, or ``None``)
        or why this route cannot carry the model (nothing written)."""
        return attempt(self, self.export, model, filepath, context=context,
                       input_signature=input_signature, **options)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able row (``kexport formats --json``)."""
        return {"backend": self.backend, "format": self.format, "kind": self.kind,
                "via": self.via, "available": self.available, "reason": self.reason}


# Layers Keras quantized (``Model.quantize``) that a route's toolchain cannot hold,
# measured on Dense, EinsumDense and Embedding (tests/test_keras_quantized.py).
_TFLITE_INT8 = ("the TFLite converter lowers the int8 x int8 -> int32 matmul to "
                "tfl.fully_connected, which takes no int8 operands")
_NO_FLOAT8 = {
    "litert": "TFLite has no float8 type (the Cast to float8_e4m3fn does not convert)",
    "tf2onnx": "tf2onnx has no float8_e4m3fn type",
    "onnx": ("the ONNX graph casts to float8e4m3fn, which the opset-18 checker rejects "
             "and ONNX Runtime's CPU provider does not compute"),
    "openvino": "OpenVINO's CPU plugin has no Convert to f8e4m3 (wrong numbers or no kernel)",
    "jax2tf": "jax2tf's float8 cast rounds unlike JAX's (the artifact disagrees)",
}
_TORCH_ONNX = ("torch.onnx writes a graph ONNX's checker rejects (Squeeze, Sub and Cast "
               "types of the quantized matmul)")
_TF = ("tensorflow",)
_TF2ONNX = ("tensorflow", "tf2onnx", "onnx", "onnxscript")
_ROUTES: list[Route] = [
    Route("tensorflow", "litert", "native", "tf.function -> tf.lite.TFLiteConverter",
          native_export("litert"), _TF, "tensorflow",
          refuses={"int8": _TFLITE_INT8, "float8": _NO_FLOAT8["litert"]}),
    Route("jax", "litert", "native", "jax2tf (StableHLO) -> tf.lite.TFLiteConverter",
          # LiteRT holds no state TFLite can update: trace with is_static=True
          native_export("litert", capture_defaults={"is_static": True}),
          ("tensorflow", "jax"), "jax", check=native_problem,
          refuses={"int8": _TFLITE_INT8, "float8": _NO_FLOAT8["litert"],
                   "int4": "the TFLite converter cannot legalize the int4 unpacking's "
                           "integer tfl.sub of jax2tf's graph"}),
    Route("jax", "litert", "rehost",
          "re-host on tensorflow (child process) -> tf.lite.TFLiteConverter "
          "(models the JAX trace cannot hold)",
          rehost_export_for("litert", "tensorflow", litert.rehost_options), _TF, "tensorflow",
          host="tensorflow", refuses={"int8": _TFLITE_INT8, "float8": _NO_FLOAT8["litert"]}),
    Route("torch", "litert", "rehost",
          "re-host on tensorflow (child process) -> tf.lite.TFLiteConverter",
          rehost_export_for("litert", "tensorflow", litert.rehost_options), _TF, "tensorflow",
          host="tensorflow", refuses={"int8": _TFLITE_INT8, "float8": _NO_FLOAT8["litert"]}),
    Route("tensorflow", "openvino", "native", "tf.function -> openvino.convert_model",
          native_export("openvino", openvino.single_model_options), ("tensorflow", "openvino"),
          "openvino", refuses={"float8": _NO_FLOAT8["openvino"]}),
    Route("jax", "openvino", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> openvino.convert_model",
          rehost_export_for("openvino", "tensorflow", openvino.rehost_options),
          ("tensorflow", "openvino"), "openvino",
          host="tensorflow", refuses={"float8": _NO_FLOAT8["openvino"]}),
    Route("torch", "openvino", "native", "torch.export -> openvino.convert_model",
          native_export("openvino", openvino.single_model_options), ("torch", "openvino"),
          "openvino",
          refuses={"int8": "OpenVINO's PyTorch frontend cannot convert the int8 matmul "
                           "(aten._int_mm)",
                   "int4": "OpenVINO's PyTorch frontend cannot convert the int8 matmul "
                           "(aten._int_mm)",
                   "float8": _NO_FLOAT8["openvino"]}),
    Route("torch", "openvino", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> openvino.convert_model "
          "(models torch.export cannot hand to OpenVINO)",
          rehost_export_for("openvino", "tensorflow", openvino.rehost_options),
          ("tensorflow", "openvino"), "openvino",
          host="tensorflow", refuses={"float8": _NO_FLOAT8["openvino"]}),
    Route("torch", "torch", "native", "torch.export (Dim dynamic batch)",
          native_export("torch", torch_program.single_model_options), ("torch",), "torch"),
    Route("tensorflow", "torch", "rehost", "re-host on torch (child process) -> torch.export",
          rehost_export_for("torch", "torch"), ("torch",), "torch", host="torch"),
    Route("jax", "torch", "rehost", "re-host on torch (child process) -> torch.export",
          rehost_export_for("torch", "torch"), ("torch",), "torch", host="torch"),
    Route("tensorflow", "tf_saved_model", "native", "tf.function -> tf.saved_model",
          native_export("tf_saved_model"), _TF, "tensorflow"),
    Route("jax", "tf_saved_model", "native", "jax2tf -> tf.function -> tf.saved_model",
          native_export("tf_saved_model"), ("tensorflow", "jax"), "jax", check=native_problem,
          refuses={"float8": _NO_FLOAT8["jax2tf"]}),
    Route("jax", "tf_saved_model", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> tf.saved_model "
          "(models with TensorFlow lookup layers, Keras float8 layers)",
          rehost_export_for("tf_saved_model", "tensorflow"), _TF, "tensorflow",
          host="tensorflow"),
    Route("torch", "tf_saved_model", "rehost",
          "re-host on tensorflow (child process) -> tf.function -> tf.saved_model",
          rehost_export_for("tf_saved_model", "tensorflow"), _TF, "tensorflow",
          host="tensorflow"),
    Route("tensorflow", "onnx", "native", "tf.function -> tf2onnx",
          onnx.export_tensorflow, _TF2ONNX, "onnx", refuses={"float8": _NO_FLOAT8["tf2onnx"]}),
    Route("torch", "onnx", "native",
          "torch.export -> torch.onnx (re-host on tensorflow for a dynamic recurrent time axis)",
          onnx.export_torch, ("torch", "onnx", "onnxscript"), "onnx",
          check=onnx.in_process_problem,
          refuses={"int8": _TORCH_ONNX, "int4": _TORCH_ONNX, "float8": _NO_FLOAT8["onnx"]}),
    Route("jax", "onnx", "native",
          "jax2onnx, kept when ONNX Runtime matches the live model (recurrent models and "
          "graphs it cannot write or ONNX Runtime cannot run: re-host on tensorflow)",
          onnx.export_jax,
          ("jax2onnx", "onnx", "onnxruntime", "onnxscript", "tensorflow", "tf2onnx"), "onnx",
          check=onnx.in_process_problem, refuses={"float8": _NO_FLOAT8["onnx"]}),
    Route("jax", "onnx", "rehost", "re-host on tensorflow (child process) -> tf2onnx",
          rehost_export_for("onnx", "tensorflow", onnx.rehost_options), _TF2ONNX, "onnx",
          host="tensorflow", refuses={"float8": _NO_FLOAT8["tf2onnx"]}),
    Route("torch", "onnx", "rehost", "re-host on tensorflow (child process) -> tf2onnx",
          rehost_export_for("onnx", "tensorflow", onnx.rehost_options), _TF2ONNX, "onnx",
          host="tensorflow", refuses={"float8": _NO_FLOAT8["tf2onnx"]}),
]


def routes(backend: str | None = None, format: str | None = None) -> list[Route]:
    """The registered routes, optionally filtered, best first within each cell.

    Args:
        backend: keep only routes from this backend.
        format: keep only routes to this format.
    """
    return [r for r in _ROUTES
            if (backend is None or r.backend == backend)
            and (format is None or r.format == format)]


def matrix() -> dict[tuple[str, str], list[Route]]:
    """Every backend x format cell with its routes in the order they are tried."""
    return {(b, f): routes(b, f) for b in BACKENDS for f in FORMATS}


def usable(backend: str, format: str, model: Any | None = None) -> list[Route]:
    """The routes from ``backend`` to ``format`` that can run here, in the order tried.

    Args:
        backend: the Keras backend.
        format: the artifact format.
        model: when given, routes that cannot carry this model (see
            :meth:`Route.problem`) are left out.

    Raises:
        UnsupportedRouteError: when the format is unknown, or no route exists
            or none can run (the message gives each route's reason).
    """
    format_info(format)
    candidates = routes(backend, format)
    problems = [r.problem(model) for r in candidates]
    found = [r for r, p in zip(candidates, problems, strict=True) if not p]
    if found:
        return found
    if candidates and model is not None and all(r.quantized_problem(model) for r in candidates):
        raise QuantizedModelError(
            f"Expected a model whose Keras-quantized layers format={format!r} can hold on "
            f"the {backend} backend. Received: "
            + "; ".join(sorted({r.quantized_problem(model) for r in candidates}))
            + f". Formats that hold this model on the {backend} backend: "
            f"{holding_formats(backend, model)}. Nothing was written; kexport never "
            f"writes a dequantized float artifact in place of a quantized model.")
    if candidates:
        reasons = "; ".join(f"{r.kind} ({r.via}): {p}"
                            for r, p in zip(candidates, problems, strict=True))
        raise UnsupportedRouteError(
            f"Cannot export format '{format}' from the {backend} backend here: {reasons}"
        )
    others = sorted({r.backend for r in routes(format=format)})
    raise UnsupportedRouteError(
        f"Exporting format '{format}' from the {backend} backend is not "
        f"available yet. Backends with a route to it: {others}. Next step: "
        f"load the model with KERAS_BACKEND set to one of them and export there."
    )


def holding_formats(backend: str, model: Any) -> list[str]:
    """The formats with a route from ``backend`` that holds every layer Keras
    quantized in ``model`` (packages and other model checks aside)."""
    return [f for f in FORMATS
            if any(not r.quantized_problem(model) for r in routes(backend, f))]


def resolve(backend: str, format: str, model: Any | None = None) -> Route:
    """The first route from ``backend`` to ``format`` that can run here (see :func:`usable`).

    Raises:
        UnsupportedRouteError: as :func:`usable`.
    """
    return usable(backend, format, model)[0]

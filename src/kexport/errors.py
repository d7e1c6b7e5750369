"""Typed errors raised by kexport.

Every error kexport raises on purpose is a :class:`KexportError`. Each child
names the pipeline stage that failed, so callers can catch exactly what they
can handle (``except SignatureError``) and scripts can map errors to exit
codes. Messages follow one pattern: what was expected, what was received, and
what to do next when a fix is known.

Each class is also the built-in type that Keras raises for the same misuse,
so ``except ValueError`` / ``except TypeError`` code written for Keras's own
export API keeps working (docs/coming_from_keras.md): a wrong
*type* of argument (an ``input_signature`` leaf that is not a spec, a name
that is not a str, ``fn`` that is not callable, an unexpected keyword
argument) is a :class:`SignatureTypeError` (a ``TypeError`` and a
``ValueError``); a resource ``track()`` cannot take is a
:class:`CaptureValueError`; a format name kexport does not know is an
:class:`UnknownFormatError` (a ``ValueError``).
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CaptureError",
    "CaptureTypeError",
    "CaptureValueError",
    "DynamicAxisError",
    "KexportError",
    "LayerMappingError",
    "LayoutError",
    "LocalizationError",
    "QuantizationError",
    "QuantizedModelError",
    "RouteRefused",
    "SampleDataError",
    "SignatureError",
    "SignatureTypeError",
    "TargetExistsError",
    "UnknownFormatError",
    "UnsupportedRouteError",
    "VerificationError",
    "WriteError",
]


class KexportError(Exception):
    """Base class of every error kexport raises on purpose."""


class SignatureError(KexportError, ValueError):
    """The input signature is missing, malformed or does not fit the model."""


class SignatureTypeError(SignatureError, TypeError):
    """An argument of the wrong type: a signature leaf that is not a spec or a
    tensor, a name that is not a str, ``fn`` that is not callable, a flag that is
    not a bool, an unexpected keyword argument, the wrong number of inputs.

    A ``TypeError``, as Keras raises (and Python, for arguments), and still a
    :class:`SignatureError` (hence a ``ValueError``) as before.
    """


class SampleDataError(SignatureError):
    """User sample data (``sample_data=``, ``data=``, ``--data``) that does not
    fit the model's inputs: wrong names, count, dtype kind, rank or a size
    that conflicts with a static dimension (a ``ValueError``). Raised before
    anything is written."""


class QuantizationError(SignatureError):
    """A ``quantization=`` request kexport cannot honour: an unknown mode, a
    mode the format (or this model) cannot write, ``int8`` without
    ``calibration_data``, or calibration data that does not fit the inputs (a
    ``ValueError``). The message names the modes that work; nothing is written
    and no float artifact is written in place of a quantized one."""


class CaptureError(KexportError, RuntimeError):
    """Tracing the model's computation on its backend failed."""


class CaptureTypeError(CaptureError, TypeError):
    """Tracing failed with a ``TypeError`` of the traced code: on JAX, shapes that
    cannot hold (``polymorphic_shapes`` whose symbols the model's ops contradict,
    e.g. a ``matmul`` of two free lengths). A ``TypeError``, as Keras raises."""


class CaptureValueError(CaptureError, ValueError):
    """``track()`` was given something it cannot track: not a Keras layer/model
    or TensorFlow resource, or a layer that is not built (a ``ValueError``, as
    in Keras)."""


class RouteRefused(CaptureError):
    """A route found, while exporting, that it cannot carry this model.

    Nothing was written. When the cell has a further route (e.g. a re-host),
    :mod:`kexport.routing` tries it; otherwise the caller gets this error.
    """


class LayerMappingError(QuantizationError, RouteRefused):
    """A route's graph cannot tell which of its nodes came from the layers of
    ``quantization_exclude=``: its converter keeps no Keras layer names (e.g.
    ``jax2onnx``), or a named layer matched no node. The route refuses (nothing
    is written): the route table tries the cell's next route (a re-host on
    TensorFlow keeps Keras name scopes); when none is left the caller gets this
    error, a :class:`QuantizationError` (a ``ValueError``), never an artifact
    that quantized the layers it was asked to keep in float."""


class DynamicAxisError(RouteRefused):
    """A captured program fixes an axis that the signature declares dynamic
    (``torch.export`` specialised it to the sample's size): writing it would
    declare a signature the program does not accept, so nothing is written.

    Attributes:
        axes: ``(input name, axis)`` of each specialised axis.
    """

    def __init__(self, message: str, axes: list[tuple[str, int]] | None = None) -> None:
        super().__init__(message)
        self.axes = list(axes or [])


class WriteError(KexportError, OSError):
    """Writing the artifact to disk failed; nothing was left half-written."""


class TargetExistsError(WriteError, FileExistsError):
    """The target path holds data that is not a kexport artifact.

    Raised before anything is written; pass ``overwrite=True`` to replace it.
    """


class UnsupportedRouteError(KexportError, NotImplementedError):
    """No route can produce the requested format from this backend here."""


class QuantizedModelError(UnsupportedRouteError):
    """A model quantized by Keras (``Model.quantize``) has layers that no
    route to the requested format can hold (e.g. float8 layers in a LiteRT
    file). The message names the layer kinds, the mode, the format and the
    formats that hold them; raised before anything is written."""


class UnknownFormatError(UnsupportedRouteError, ValueError):
    """``format`` is not a format kexport knows (a ``ValueError``, as Keras's
    ``Unrecognized format``)."""


class ArtifactError(KexportError, ValueError):
    """A path given to kexport is not an artifact kexport can open."""


class LayoutError(KexportError, ValueError):
    """A serving layout kexport cannot write or read: an unknown layout name, an
    artifact the layout cannot hold (e.g. LiteRT in a Triton repository), a bad
    model name or version, or a folder that is not a layout (a ``ValueError``).
    Raised before anything is written."""


class VerificationError(KexportError, AssertionError):
    """The artifact does not compute what the live model computes.

    Attributes:
        report: the verification report that failed, when one exists.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class LocalizationError(KexportError, ValueError):
    """:func:`kexport.localize` cannot probe this model or artifact: the model
    calls no Keras sublayer (no intermediate tensors to compare), or the
    format's runtime cannot run the probe (a ``ValueError``)."""


def describe(value: object) -> str:
    """Return ``value`` as Keras-style error text: ``repr (of type T)``."""
    text = repr(value)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{text} (of type {type(value).__name__})"

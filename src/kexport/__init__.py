"""kexport: export Keras 3 models from any backend to verified inference artifacts.

Public API::

    kexport.export_model(model, "out", format="tf_saved_model")
    archive = kexport.ExportArchive(); ...; archive.write_out("out")
    kexport.write_layout("out", "models", layout="tf-serving")

Heavy frameworks are imported only when a function needs them, so
``import kexport`` stays fast.
"""

from __future__ import annotations

from kexport._version import __version__
from kexport.api import (
    export_litert,
    export_model,
    export_onnx,
    export_openvino,
    export_saved_model,
    export_torch,
)
from kexport.archive import ExportArchive
from kexport.errors import (
    ArtifactError,
    CaptureError,
    CaptureValueError,
    KexportError,
    LayoutError,
    LocalizationError,
    QuantizationError,
    QuantizedModelError,
    SignatureError,
    SignatureTypeError,
    TargetExistsError,
    UnknownFormatError,
    UnsupportedRouteError,
    VerificationError,
    WriteError,
)
from kexport.layouts import read_layout, write_layout
from kexport.localize import localize
from kexport.reporting import report
from kexport.routing import routes
from kexport.runtime import Artifact, load
from kexport.verify import VerificationReport, verify

__all__ = [
    "Artifact",
    "ArtifactError",
    "CaptureError",
    "CaptureValueError",
    "ExportArchive",
    "KexportError",
    "LayoutError",
    "LocalizationError",
    "QuantizationError",
    "SignatureError",
    "SignatureTypeError",
    "TargetExistsError",
    "QuantizedModelError",
    "UnknownFormatError",
    "UnsupportedRouteError",
    "VerificationError",
    "VerificationReport",
    "WriteError",
    "__version__",
    "export_model",
    "export_litert",
    "export_onnx",
    "export_openvino",
    "export_saved_model",
    "export_torch",
    "load",
    "localize",
    "read_layout",
    "report",
    "routes",
    "verify",
    "write_layout",
]


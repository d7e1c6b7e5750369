"""The artifact layer: what kexport's artifacts are, independent of how they are made.

- :class:`Manifest`: what every artifact records about itself, built by the
  writers and read strictly (:func:`read_manifest`);
- the default-endpoint rule (:func:`default_endpoint`, :data:`DEFAULT_ENDPOINT`,
  :data:`SERVING_DEFAULT`);
- format descriptors (:data:`FORMATS`): suffix, sidecar files, runtime
  packages, recogniser and declared tolerance per format; :func:`artifact_files`;
- recognisers and metadata readers that only read files
  (:func:`is_kexport_artifact`, ``read_*_metadata``).

This package imports only :mod:`kexport.errors`, :mod:`kexport.signature` and
:mod:`kexport._version` (heavy libraries lazily, inside the readers that need
them), so every other layer may use it.
"""

from kexport.artifact.descriptors import (
    BACKENDS,
    FORMATS,
    LITERT_QUANTIZATIONS,
    FormatDescriptor,
    artifact_files,
    format_info,
    missing_packages,
)
from kexport.artifact.manifest import (
    DEFAULT_ENDPOINT,
    MANIFEST_NAME,
    MANIFESTS,
    ONNX_ARCHIVE_MANIFEST,
    PRODUCER,
    SAVED_MODEL_MANIFEST,
    SERVING_DEFAULT,
    Manifest,
    default_endpoint,
    endpoint_order,
    manifest_default_endpoint,
    read_manifest,
    strict_json,
)
from kexport.artifact.metadata import (
    LITERT_METADATA,
    OPENVINO_MANIFEST_KEY,
    OPENVINO_PRODUCER_KEY,
    TORCH_PROGRAM_SUFFIX,
    check_openvino_weights,
    file_sha256,
    is_litert_artifact,
    is_onnx_artifact,
    is_openvino_artifact,
    is_torch_program_artifact,
    read_litert_metadata,
    read_openvino_metadata,
    read_torch_program_metadata,
)
from kexport.artifact.recognize import has_manifest, is_kexport_artifact, register_artifact_check

__all__ = [
    "BACKENDS",
    "DEFAULT_ENDPOINT",
    "FORMATS",
    "LITERT_METADATA",
    "LITERT_QUANTIZATIONS",
    "MANIFESTS",
    "MANIFEST_NAME",
    "ONNX_ARCHIVE_MANIFEST",
    "OPENVINO_MANIFEST_KEY",
    "OPENVINO_PRODUCER_KEY",
    "PRODUCER",
    "SAVED_MODEL_MANIFEST",
    "SERVING_DEFAULT",
    "TORCH_PROGRAM_SUFFIX",
    "FormatDescriptor",
    "Manifest",
    "artifact_files",
    "format_info",
    "missing_packages",
    "check_openvino_weights",
    "default_endpoint",
    "endpoint_order",
    "file_sha256",
    "has_manifest",
    "is_kexport_artifact",
    "is_litert_artifact",
    "is_onnx_artifact",
    "is_openvino_artifact",
    "is_torch_program_artifact",
    "manifest_default_endpoint",
    "read_litert_metadata",
    "read_manifest",
    "read_openvino_metadata",
    "read_torch_program_metadata",
    "register_artifact_check",
    "strict_json",
]

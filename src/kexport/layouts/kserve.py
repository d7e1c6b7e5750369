"""The KServe layout: what KServe's model storage expects for the runtime that
serves the artifact, plus an ``InferenceService`` example beside it.

KServe copies ``storageUri`` to ``/mnt/models`` and starts a serving runtime
on it; kexport writes the folder that runtime loads and nothing else:

- a SavedModel: the TF-Serving layout ``<repo>/<name>/<VERSION>/`` (runtime
  ``kserve-tensorflow-serving``, ``--model_base_path=/mnt/models``: the
  ``storageUri`` is ``<repo>/<name>``);
- ONNX or OpenVINO IR: the Triton layout (runtime ``kserve-tritonserver``,
  ``--model-store=/mnt/models``: the ``storageUri`` is ``<repo>``, the model
  repository);

and ``<repo>/<name>.inferenceservice.yaml``: an ``InferenceService`` naming the
runtime, the model format and a ``storageUri`` placeholder to replace with
where the folder is uploaded (no local path is written). The YAML file is
rewritten at each write; version folders never are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kexport._atomic import atomic_target
from kexport._version import __version__
from kexport.errors import TargetExistsError
from kexport.layouts import tf_serving, triton
from kexport.layouts._repo import Layout
from kexport.runtime import Artifact

__all__ = ["FORMATS", "YAML_SUFFIX", "inference_service", "service_name", "write", "yaml_path"]

#: kexport format -> (KServe runtime, KServe model format, protocol).
FORMATS: dict[str, tuple[str, str, str]] = {
    "tf_saved_model": ("kserve-tensorflow-serving", "tensorflow", "v1"),
    "onnx": ("kserve-tritonserver", "onnx", "v2"),
    "openvino": ("kserve-tritonserver", "triton", "v2"),
}
#: The file name of the ``InferenceService`` example, beside the layout.
YAML_SUFFIX = ".inferenceservice.yaml"
_HEADER = "# KServe InferenceService for '"


def service_name(name: str) -> str:
    """``name`` as a Kubernetes resource name (DNS-1035: lowercase, digits, ``-``)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"m-{cleaned}".rstrip("-")
    return cleaned[:63].rstrip("-")


def inference_service(name: str, format: str, models: list[Layout]) -> str:
    """The ``InferenceService`` YAML for the layout written for ``name``."""
    runtime, model_format, protocol = FORMATS[format]
    if format == "tf_saved_model":
        where = f"the folder '{name}/' (its version folders inside)"
        serves = f"REST: POST /v1/models/{service_name(name)}:predict (TF-Serving)"
    else:
        where = "this model repository folder (the folder holding this file)"
        served = ", ".join(sorted({m.name for m in models}))
        serves = f"Open Inference Protocol (v2): /v2/models/<model>/infer for {served}"
    lines = [
        f"{_HEADER}{name}', written by kexport {__version__}.",
        f"# Upload {where} to your model storage and replace",
        "# storageUri with its address (s3://, gs://, pvc://, https://...).",
        f"# {serves}",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {service_name(name)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        f"        name: {model_format}",
        f"      runtime: {runtime}",
        f"      protocolVersion: {protocol}",
        "      storageUri: s3://REPLACE-WITH-YOUR-BUCKET/"
        + (f"{name}" if format == "tf_saved_model" else "model-repository"),
    ]
    return "\n".join(lines) + "\n"


def write(artifact: Artifact, source: Path, format: str, repo: Path, name: str,
          version: int | None) -> list[Layout]:
    """The runtime's layout (see the module doc) and the YAML beside it.

    Raises:
        TargetExistsError: when the YAML's path holds a file kexport did not
            write (checked before anything is written; the file is kept).
    """
    yaml = yaml_path(repo, name)
    _check_yaml(yaml)
    if format == "tf_saved_model":
        models = tf_serving.write(artifact, source, repo, name, version)
    else:
        models = triton.write(artifact, source, format, repo, name, version)
    _check_yaml(yaml)
    with atomic_target(yaml, is_dir=False, overwrite=True) as tmp:
        tmp.write_text(inference_service(name, format, models))
    return models


def _check_yaml(path: Path) -> None:
    if not os.path.lexists(path):
        return
    try:
        with path.open() as f:
            ours = f.readline().startswith(_HEADER)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise TargetExistsError(
            f"Expected '{os.fspath(path)}' to be missing or an InferenceService example "
            "kexport wrote. Received: another file, which is kept. Nothing was written. "
            "Next step: move it, or choose another `name`.")


def yaml_path(repo: str | os.PathLike[str], name: str) -> Path:
    """Where :func:`write` puts the ``InferenceService`` YAML."""
    return Path(os.fspath(repo)) / f"{name}{YAML_SUFFIX}"

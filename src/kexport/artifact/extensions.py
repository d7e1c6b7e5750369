"""Runtime extension libraries an artifact needs, as its manifest records them (issue #27).

An artifact whose graph holds operations outside its runtime's standard set
(OpenVINO IR with openvino-tokenizers' string operations; a LiteRT file with
TF Text's custom operators) names the Python package that registers them in
its manifest, ``extensions: [...]``. Writers record it; runtimes import it
before they open the file, with a typed error naming the pip extra when it is
missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from kexport.errors import ArtifactError

__all__ = ["OPENVINO_TOKENIZERS", "TENSORFLOW_TEXT", "load_extension", "recorded_extensions"]

#: registers OpenVINO's string operations and their TensorFlow conversions on import
OPENVINO_TOKENIZERS = "openvino_tokenizers"
#: TF Text: its ``tflite_registrar`` registers the TFLite custom string operators
TENSORFLOW_TEXT = "tensorflow_text"
_PIP = {OPENVINO_TOKENIZERS: "openvino-tokenizers", TENSORFLOW_TEXT: "tensorflow-text"}


def recorded_extensions(metadata: Mapping[str, Any] | None) -> list[str]:
    """The extension packages an artifact's manifest says it needs."""
    return [str(e) for e in (metadata or {}).get("extensions", ()) or ()]


def load_extension(name: str, why: str) -> Any:
    """Import extension package ``name`` (its import registers the operations).

    Raises:
        ArtifactError: when it is not installed; the message names the pip extra.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = "pip install 'kexport[strings]'"
        if name == TENSORFLOW_TEXT:
            hint = "pip install --no-deps tensorflow-text==2.21.1 (it declares full tensorflow)"
        raise ArtifactError(
            f"{why} needs {_PIP.get(name, name)} (its runtime operations). Received: it is "
            f"not installed. Next step: {hint}; see 'kexport[strings]' in docs/raw_inputs.md"
        ) from e

"""Runtime for LiteRT artifacts (``.tflite``), backed by the TFLite interpreter.

Every endpoint is a named signature run through its signature runner, so
inputs are always matched by name (never by the interpreter's own order);
the runner resizes a dynamic batch on the fly. The kexport manifest stored as
flatbuffer metadata gives the input/output order and the quantization mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo, manifest_default_endpoint

__all__ = ["LiteRTArtifact", "detect", "open"]

FORMAT = "litert"


def detect(path: Path) -> bool:
    """A flatbuffer file with the TFLite identifier ``TFL3``."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            return f.read(8)[4:8] == b"TFL3"
    except OSError:
        return False


def _info(name: str, detail: dict[str, Any]) -> TensorInfo:
    import numpy as np

    shape = tuple(None if int(d) < 0 else int(d) for d in detail["shape_signature"])
    return TensorInfo(name, shape, np.dtype(detail["dtype"]).name)


class LiteRTArtifact(Artifact):
    """A ``.tflite`` file run with ``tf.lite.Interpreter`` signature runners."""

    def __init__(self, path: str, file: Path) -> None:
        import tensorflow as tf

        from kexport.formats.litert import read_metadata

        super().__init__(path=path, format=FORMAT)
        self._interpreter = tf.lite.Interpreter(model_path=os.fspath(file))
        self.metadata = read_metadata(file) or {}
        listed = self.metadata.get("endpoints", {})
        self._runners: dict[str, Any] = {}
        for key, sig in self._interpreter.get_signature_list().items():
            runner = self._interpreter.get_signature_runner(key)
            ins, outs = runner.get_input_details(), runner.get_output_details()
            known = listed.get(key, {})
            in_order = [i["name"] for i in known.get("inputs", [])] or list(sig["inputs"])
            out_order = [o["name"] for o in known.get("outputs", [])] or list(sig["outputs"])
            self._runners[key] = runner
            self.endpoints[key] = EndpointInfo(
                key, tuple(_info(n, ins[n]) for n in in_order),
                tuple(_info(n, outs[n]) for n in out_order))
        self.default_endpoint = manifest_default_endpoint(self.metadata, self.endpoints)

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        result = self._runners[endpoint.name](**feeds)
        return {n: result[n] for n in endpoint.output_names}

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """Operator names used by the flatbuffer (shared by all signatures)."""
        ops = self.metadata.get("operators")
        return {n: dict.fromkeys(ops, 1) for n in self.endpoints} if ops else None


def open(path: Path, given: str) -> LiteRTArtifact:
    """Open a ``.tflite`` file.

    Raises:
        ArtifactError: when TensorFlow is missing or the interpreter refuses the file.
    """
    from kexport.errors import ArtifactError

    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening a LiteRT artifact needs TensorFlow: pip install 'kexport[tensorflow]'"
        ) from e
    try:
        return LiteRTArtifact(given, path)
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"Could not open '{given}' as a LiteRT file: {e}") from e

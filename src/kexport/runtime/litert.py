"""Runtime for LiteRT artifacts (``.tflite``), backed by the LiteRT interpreter.

Every endpoint is a named signature run through its signature runner, so
inputs are always matched by name (never by the interpreter's own order);
the runner resizes a dynamic batch on the fly. The kexport manifest stored as
flatbuffer metadata gives the input/output order and the quantization mode.

The interpreter is LiteRT's own package ``ai-edge-litert``
(``ai_edge_litert.interpreter.Interpreter``); TensorFlow's
``tf.lite.Interpreter``, deprecated and warning on every load, is only the
fallback when that package is not installed. :func:`interpreter_class` is the
one place that picks between them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kexport.artifact import MANIFEST_NAME, manifest_default_endpoint, read_litert_metadata
from kexport.artifact.extensions import TENSORFLOW_TEXT, load_extension, recorded_extensions
from kexport.errors import ArtifactError
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["INTERPRETERS", "PRECISIONS", "LiteRTArtifact", "detect", "interpreter_class", "open"]

FORMAT = "litert"
#: the flatbuffer of a LiteRT artifact that is a folder (docs/generation.md)
FOLDER_FILE = "model.tflite"
# The interpreter's CPU kernels compute a float graph in float32 (a quantized
# file in the dtypes it was written in); there is no setting to ask for less.
PRECISIONS: tuple[str, ...] = ("float32",)
#: where the interpreter class comes from, first choice first.
INTERPRETERS: tuple[str, ...] = ("ai_edge_litert", "tensorflow")


def detect(path: Path) -> bool:
    """A flatbuffer file with the TFLite identifier ``TFL3``, or a folder holding one as
    ``model.tflite`` (the generative form, its manifest beside it)."""
    if path.is_dir():
        path = path / FOLDER_FILE
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
    dtype = np.dtype(detail["dtype"])  # a string tensor is reported as ``bytes``
    return TensorInfo(name, shape, "string" if dtype.kind in "SOU" else dtype.name)


def interpreter_class() -> tuple[str, type[Any]]:
    """The class that runs ``.tflite`` files here, and the package it comes from.

    ``("ai_edge_litert", ai_edge_litert.interpreter.Interpreter)`` when
    ``ai-edge-litert`` is installed, else ``("tensorflow", tf.lite.Interpreter)``.
    Both take ``model_path=`` and run one thread unless told otherwise.

    Raises:
        ArtifactError: when neither package can be imported.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return "ai_edge_litert", Interpreter
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ArtifactError(
            "Expected the LiteRT interpreter (ai-edge-litert) or TensorFlow to run a .tflite "
            "file. Received: neither is installed. pip install 'kexport[litert]'"
        ) from e
    return "tensorflow", tf.lite.Interpreter


class LiteRTArtifact(Artifact):
    """A ``.tflite`` file run with LiteRT signature runners.

    Attributes:
        interpreter: the package whose interpreter runs the file, one of
            :data:`INTERPRETERS` (``"ai_edge_litert"`` unless it is missing).
    """

    interpreter: str = ""

    def __init__(self, path: str, file: Path) -> None:
        super().__init__(path=path, format=FORMAT)
        if file.is_dir():  # the manifest is the folder's, the flatbuffer inside it
            self.metadata = json.loads((file / MANIFEST_NAME).read_text()) \
                if (file / MANIFEST_NAME).is_file() else {}
            file = file / FOLDER_FILE
        else:
            self.metadata = read_litert_metadata(file) or {}
        self.interpreter, interpreter = interpreter_class()
        if TENSORFLOW_TEXT in recorded_extensions(self.metadata):
            self._interpreter = _with_text_ops(self.interpreter, path, file)
        else:
            self._interpreter = interpreter(model_path=os.fspath(file))
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
        """Builtin operators of the flatbuffer's main graph, counted as the
        interpreter lists them (shared by all signatures); the operator names
        the metadata records (each counted once) where it cannot list them."""
        details = getattr(self._interpreter, "_get_ops_details", None)
        if details is not None:
            tally: dict[str, int] = {}
            for op in details():
                tally[op["op_name"]] = tally.get(op["op_name"], 0) + 1
            ordered = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
            return {n: dict(ordered) for n in self.endpoints} if ordered else None
        ops = self.metadata.get("operators")
        return {n: dict.fromkeys(ops, 1) for n in self.endpoints} if ops else None


def _with_text_ops(package: str, given: str, file: Path) -> Any:
    """An interpreter with TF Text's TFLite kernels registered (the manifest lists
    ``tensorflow_text``): ``InterpreterWithCustomOps(custom_op_registerers=
    tf_text.tflite_registrar.SELECT_TFTEXT_OPS)``.

    Raises:
        ArtifactError: tensorflow-text is not installed.
    """
    text = load_extension(TENSORFLOW_TEXT, f"Opening '{given}' (its manifest lists "
                                           f"{TENSORFLOW_TEXT})")
    if package == "ai_edge_litert":
        from ai_edge_litert.interpreter import InterpreterWithCustomOps
    else:
        from tensorflow.lite.python.interpreter import InterpreterWithCustomOps
    return InterpreterWithCustomOps(
        model_path=os.fspath(file),
        custom_op_registerers=text.tflite_registrar.SELECT_TFTEXT_OPS)


def open(path: Path, given: str, precision: str = "float32") -> LiteRTArtifact:
    """Open a ``.tflite`` file with the interpreter :func:`interpreter_class` picks
    (``precision``: float32 only).

    Raises:
        ArtifactError: when TensorFlow (which reads the kexport metadata) is
            missing or the interpreter refuses the file.
    """
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening a LiteRT artifact needs TensorFlow (it reads the file's metadata): "
            "pip install 'kexport[litert]'"
        ) from e
    try:
        return LiteRTArtifact(given, path)
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"Could not open '{given}' as a LiteRT file: {e}") from e

"""Reading what an artifact file says about itself, and recognising kexport's own.

Only reads files: the format writers (``kexport.formats``) record this
metadata, the runtimes (``kexport.runtime``) and the overwrite check
(:func:`kexport.artifact.is_kexport_artifact`) read it here. A recogniser
never raises: a file it cannot read is "no".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from kexport.artifact.manifest import MANIFEST_NAME, PRODUCER
from kexport.errors import ArtifactError

__all__ = [
    "LITERT_METADATA",
    "OPENVINO_MANIFEST_KEY",
    "OPENVINO_PRODUCER_KEY",
    "TORCH_PROGRAM_SUFFIX",
    "check_openvino_weights",
    "file_sha256",
    "is_litert_artifact",
    "is_onnx_artifact",
    "is_openvino_artifact",
    "is_torch_program_artifact",
    "read_litert_metadata",
    "read_openvino_metadata",
    "read_torch_program_metadata",
]

#: The flatbuffer metadata entry holding a LiteRT artifact's manifest.
LITERT_METADATA = MANIFEST_NAME
_TFLITE_MAGIC = b"TFL3"
#: The ``rt_info`` keys of an OpenVINO IR kexport wrote.
OPENVINO_PRODUCER_KEY = "kexport_producer"
OPENVINO_MANIFEST_KEY = "kexport_manifest"
#: The file suffix of a ``torch.export`` program.
TORCH_PROGRAM_SUFFIX = ".pt2"


def _by_kexport(meta: Any, format: str) -> bool:
    return isinstance(meta, dict) and meta.get("producer") == PRODUCER \
        and meta.get("format") == format


# -- LiteRT ---------------------------------------------------------------------------
def is_litert_artifact(path: str | os.PathLike[str]) -> bool:
    """A TFLite flatbuffer (``TFL3``) with kexport's metadata.

    Maps the file instead of reading it, so large models cost no memory.
    """
    import mmap

    path = Path(path)
    if not path.is_file() or path.stat().st_size < 8:
        return False
    with path.open("rb") as f:
        if f.read(8)[4:8] != _TFLITE_MAGIC:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b'"producer": "kexport"') >= 0 \
                and m.find(LITERT_METADATA.encode()) >= 0


def read_litert_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The kexport manifest stored in a ``.tflite`` file, or ``None``.

    Reads the flatbuffer with TensorFlow Lite's schema (TensorFlow needed).
    """
    from tensorflow.lite.tools import flatbuffer_utils  # heavy: TensorFlow

    with open(os.fspath(path), "rb") as f:
        model_obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    for entry in model_obj.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == LITERT_METADATA:
            data = bytes(model_obj.buffers[entry.buffer].data)
            return json.loads(data.decode())
    return None


# -- OpenVINO -------------------------------------------------------------------------
def read_openvino_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The kexport manifest of an IR (``.xml``) or IR folder, or ``None`` (no OpenVINO import)."""
    import html
    import re

    p = Path(os.fspath(path))
    if p.is_dir():
        m = p / MANIFEST_NAME
        return json.loads(m.read_text()) if m.is_file() else None
    if p.suffix != ".xml" or not p.is_file():
        return None
    text = p.read_text(errors="replace")
    found = re.search(rf'<{OPENVINO_MANIFEST_KEY} value="([^"]*)"', text)
    return json.loads(html.unescape(found.group(1))) if found else None


def is_openvino_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an IR kexport wrote (its ``.xml``, ``.bin`` or folder)."""
    try:
        p = Path(os.fspath(path))
        if p.suffix == ".bin":
            p = p.with_suffix(".xml")
        meta = read_openvino_metadata(p)
    except Exception:  # a broken file is "no"
        return False
    return _by_kexport(meta, "openvino")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_openvino_weights(xml: str | os.PathLike[str],
                           metadata: dict[str, Any] | None = None) -> None:
    """Refuse a single-file IR whose ``.bin`` is not the one its ``.xml`` was written with.

    The ``.xml``/``.bin`` pair is replaced by two atomic renames; a process
    killed between them leaves a new ``.bin`` beside the previous ``.xml``.
    The ``.xml`` records its weights' SHA-256 (``weights_sha256`` in the
    manifest), so kexport's readers detect that state instead of running
    wrong weights; the next export replaces both files.

    Args:
        xml: the ``.xml`` file.
        metadata: its manifest, when already read.

    Raises:
        ArtifactError: when the weights file is missing or does not match.
    """
    xml = Path(os.fspath(xml))
    meta = read_openvino_metadata(xml) if metadata is None else metadata
    want = (meta or {}).get("weights_sha256")
    if not want or xml.is_dir():
        return
    weights = xml.with_suffix(".bin")
    got = file_sha256(weights) if weights.is_file() else "missing"
    if got != want:
        raise ArtifactError(
            f"OpenVINO IR '{xml.name}': expected the weights file '{weights.name}' written "
            f"with it (sha256 {want[:12]}…). Received: sha256 {got[:12]}… — an export was "
            "interrupted between writing the .bin and the .xml. Next step: export again "
            "(it replaces both files)."
        )


# -- torch.export programs --------------------------------------------------------------
def read_torch_program_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The kexport manifest of a ``.pt2`` file or program folder, or ``None``.

    Reads the zip directly (no PyTorch import).
    """
    import zipfile

    p = Path(os.fspath(path))
    if p.is_dir():
        m = p / MANIFEST_NAME
        return json.loads(m.read_text()) if m.is_file() else None
    try:
        with zipfile.ZipFile(p) as z:
            for member in z.namelist():
                if member.endswith(f"/extra/{MANIFEST_NAME}"):
                    return json.loads(z.read(member).decode())
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return None


def is_torch_program_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ``.pt2`` file (or program folder) that kexport wrote."""
    try:
        meta = read_torch_program_metadata(path)
    except Exception:  # a broken file is "no"
        return False
    return _by_kexport(meta, "torch")


# -- ONNX -------------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _onnx_file_by_kexport(path: Path) -> bool:
    """Whether ``path`` is an ONNX ``ModelProto`` with producer_name ``kexport``.

    Reads only the file's first bytes: protobuf writes ``ir_version`` (field 1)
    and ``producer_name`` (field 2) first.
    """
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(4096)
        pos = 0
        while pos < len(head):
            key, pos = _varint(head, pos)
            field, wire = key >> 3, key & 7
            if field == 2 and wire == 2:
                length, pos = _varint(head, pos)
                return head[pos:pos + length] == PRODUCER.encode()
            if field > 2 or wire not in (0, 2):
                return False
            if wire == 0:
                _, pos = _varint(head, pos)
            else:
                length, pos = _varint(head, pos)
                pos += length
    except (OSError, ValueError):
        return False
    return False


def is_onnx_artifact(path: str | os.PathLike[str]) -> bool:
    """A kexport ONNX file, or a folder holding kexport graphs."""
    path = Path(path)
    if path.is_dir():
        return any(_onnx_file_by_kexport(f) for f in path.glob("*.onnx"))
    return _onnx_file_by_kexport(path)

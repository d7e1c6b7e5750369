"""Recognising a kexport ONNX artifact from its first bytes (the registry's recogniser)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_onnx_artifact"]


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
                return head[pos:pos + length] == b"kexport"
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


def is_onnx_artifact(path: Path) -> bool:
    """Registry recogniser: a kexport ONNX file, or a folder holding kexport graphs."""
    if path.is_dir():
        return any(_onnx_file_by_kexport(f) for f in path.glob("*.onnx"))
    return _onnx_file_by_kexport(path)

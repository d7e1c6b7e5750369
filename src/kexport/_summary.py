"""The short summary printed by ``verbose=True`` exports."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from kexport.artifact import artifact_files
from kexport.signature import flatten

__all__ = ["human_size", "print_summary", "size_of"]


def size_of(path: str | os.PathLike[str], format: str | None = None) -> int:
    """Total size in bytes of an artifact: a folder's files, or a file and its
    format's sidecars (ONNX external data, OpenVINO weights)."""
    return sum(f.stat().st_size for f in artifact_files(path, format))


def human_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def print_summary(format: str, endpoints: Sequence[Any], filepath: str | os.PathLike[str],
                  default: str | None = None,
                  say: Callable[[str], None] = print) -> None:
    """Print endpoints with their inputs/outputs, and the artifact written, with
    ``say`` (an export's :class:`~kexport.context.Printer`).

    The path is printed as the caller gave it, never resolved, so logs hold
    no more of the local filesystem than the caller chose to pass.
    """
    lines = [f"kexport: wrote {format} artifact '{os.fspath(filepath)}' "
             f"({human_size(size_of(filepath, format))})"]
    for e in endpoints:
        alias = " (also serving_default)" if e.name == default else ""
        lines.append(f"  endpoint '{e.name}'{alias}")
        for spec, name in zip(flatten(e.signature), e.input_names):
            lines.append(f"    input  {name}: {spec.dtype}{_shape(spec.shape)}")
        for spec in e.output_specs:
            lines.append(f"    output {spec.name}: {spec.dtype}{_shape(spec.shape)}")
    say("\n".join(lines))

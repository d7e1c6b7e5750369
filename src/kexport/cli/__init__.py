"""The ``kexport`` command line (help and version for now)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from kexport._version import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kexport",
        description="Export Keras 3 models from any backend to verified inference artifacts.",
    )
    parser.add_argument("--version", action="version", version=f"kexport {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0

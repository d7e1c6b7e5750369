"""How a verb's result reaches the user.

With ``--json`` a verb prints one JSON document, otherwise text, onto the
result stream (:func:`kexport.cli._quiet.result_stream`: the real stdout even
while ``--json`` sends everything else to stderr). A failed verb prints its
typed error the same way: as a JSON document with ``--json``, else as one line
on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kexport.cli._quiet import result_stream

__all__ = ["emit", "fail"]


def fail(args: argparse.Namespace, error: BaseException, code: int) -> int:
    """Print ``error`` as the verb's result; return ``code``."""
    if args.json:
        print(json.dumps({"ok": False, "error": {"type": type(error).__name__,
                                                  "message": str(error)}}, indent=2),
              file=result_stream())
    else:
        print(f"kexport {args.verb}: error: {type(error).__name__}: {error}", file=sys.stderr)
    return code


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """Print the verb's result: ``data`` as JSON with ``--json``, else ``text``."""
    print(json.dumps(data, indent=2, default=str) if args.json else text, file=result_stream())

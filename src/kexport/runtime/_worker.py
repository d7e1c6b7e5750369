"""The fresh child process that runs an artifact for :func:`kexport.verify`.

Started as ``python -m kexport.runtime._worker``; it never imports Keras or
the model's code, only the artifact's own runtime through :func:`kexport.load`.
It speaks JSON lines on stdin/stdout, each reply prefixed with
:data:`MARKER` so that anything a runtime prints is ignored:

- ``{"cmd": "open", "path": P, "precision": X}`` -> format, endpoints,
  default endpoint, the precision the runtime computes in;
- ``{"cmd": "run", "inputs": NPZ, "outputs": NPZ, "calls": [[key, endpoint], ...]}``
  runs each endpoint on the arrays ``key/<input name>`` of ``inputs`` and
  writes ``key/<output name>`` to ``outputs``;
- ``{"cmd": "exit"}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from kexport.runtime import load

MARKER = "@@kexport-worker@@ "


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _handle(request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    import numpy as np


    if request["cmd"] == "open":
        art = load(request["path"], precision=request.get("precision"))
        state["artifact"] = art
        return {"format": art.format, "default": art.default_endpoint,
                "precision": art.precision,
                "endpoints": {n: e.to_json() for n, e in art.endpoints.items()},
                "metadata": art.metadata}
    if request["cmd"] == "run":
        art = state["artifact"]
        data = np.load(request["inputs"], allow_pickle=False)
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key, endpoint in request["calls"]:
            info = art.endpoints[endpoint]
            feeds = {n: data[f"{key}/{n}"] for n in info.input_names}
            try:
                out = art.run(endpoint, feeds)
            except Exception as e:
                errors[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                continue
            for name, value in out.items():
                results[f"{key}/{name}"] = np.asarray(value)
        np.savez(request["outputs"], **results)
        return {"errors": errors}
    raise ValueError(f"unknown command {request['cmd']!r}")


class InProcess:
    """The worker's protocol answered in this process (the same requests and replies):
    the check an export runs on its staged artifact before placing it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def ask(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        try:
            return {"ok": True, **_handle(request, self.state)}
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    def close(self, goodbye: dict[str, Any] | None = None, wait: float = 0.0) -> None:
        self.state.clear()  # the runtime's session goes with it

    def log_tail(self, chars: int = 1500, lines: int | None = None) -> str:
        return ""

    def exit_code(self) -> int:
        return 0


def main() -> int:
    """Serve requests until ``exit`` or end of input."""
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("cmd") == "exit":
            break
        try:
            _reply({"ok": True, **_handle(request, state)})
        except Exception as e:
            _reply({"ok": False, "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=5)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

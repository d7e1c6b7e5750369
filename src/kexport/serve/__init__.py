"""``kexport serve``: any artifact over HTTP, with the protocols serving systems speak.

The Open Inference Protocol (KServe v2, also spoken by Triton, OpenVINO Model
Server and Seldon) with its binary-data extension, and TF-Serving's REST
``:predict``, on FastAPI + uvicorn. Artifacts are opened with
:func:`kexport.load`, so every format serves.

```python
import kexport.serve

app = kexport.serve.create_app("out/digits.onnx")        # a FastAPI app (ASGI)
kexport.serve.serve("out/", port=8000)                   # blocks; Ctrl-C stops it
```

FastAPI and uvicorn are imported when an app is built, not by
``import kexport.serve`` (``kexport.serve._app`` imports FastAPI at its top).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from kexport.errors import ArtifactError, SignatureError, describe
from kexport.serve._models import ServedModel, _models_in, open_models
from kexport.serve._values import BadRequest

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_BODY_BYTES", "BadRequest", "ServedModel", "_models_in",
           "bind", "create_app", "is_loopback", "serve"]

#: Where the server listens unless told: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: The largest request body accepted (413 above it): 32 MiB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SignatureError(f"Expected `{name}` to be a positive int. Received: "
                             f"{describe(value)}")
    return value


def _require_serving_packages() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ArtifactError(f"Expected fastapi and uvicorn to serve artifacts. Received: "
                            f"{missing} not installed; pip install 'kexport[serve]'")


def create_app(path: str | os.PathLike[str], *, name: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, workers: int | None = None) -> Any:
    """Open the artifacts under ``path`` and return the FastAPI app that serves them.

    Args:
        path: an artifact, or a folder of artifacts (one model per artifact,
            named by file stem).
        name: the model name for a single artifact (default: its file stem).
        max_body_bytes: larger request bodies get HTTP 413.
        workers: threads running inference (default: the CPU count, at most 8).

    Returns:
        A FastAPI application; ``app.state.models`` maps model names to
        :class:`ServedModel`. Run it with :func:`serve` or any ASGI server.

    Raises:
        ArtifactError: no artifact at ``path``, or names that clash.
        SignatureError: a non-positive ``max_body_bytes`` or ``workers``.
        ArtifactError: fastapi or uvicorn missing (``pip install 'kexport[serve]'``).
    """
    _require_serving_packages()
    from kexport.serve._app import build_app  # deferred: fastapi, starlette

    max_body_bytes = _positive_int("max_body_bytes", max_body_bytes)
    workers = _positive_int("workers", workers if workers is not None
                            else max(1, min(8, os.cpu_count() or 1)))
    artifacts, models = open_models(path, name)
    return build_app(artifacts, models, max_body_bytes=max_body_bytes, workers=workers)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str = DEFAULT_HOST, port: int = 8000) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one; read it from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(path: str | os.PathLike[str], *, host: str = DEFAULT_HOST, port: int = 8000,
          name: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
          workers: int | None = None, log_level: str = "warning",
          on_ready: Callable[[str, dict[str, ServedModel]], None] | None = None) -> None:
    """Serve the artifacts under ``path`` until interrupted (Ctrl-C or SIGTERM).

    Args:
        path, name, max_body_bytes, workers: as for :func:`create_app`.
        host: the address to listen on; loopback by default. Any other
            address exposes the models to whoever can reach it.
        port: the TCP port; 0 picks a free one.
        log_level: uvicorn's log level (its access log holds no local paths).
        on_ready: called with the base URL and the models once listening.
    """
    _require_serving_packages()
    import uvicorn

    app = create_app(path, name=name, max_body_bytes=max_body_bytes, workers=workers)
    if not is_loopback(host):
        print(f"kexport serve: listening on {host}, not loopback: anyone who can reach this "
              "address can run the models", file=sys.stderr)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}"
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5,
                            h11_max_incomplete_event_size=64 * 1024)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url, app.state.models)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

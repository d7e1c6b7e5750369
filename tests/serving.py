"""Start ``kexport serve`` in a subprocess on a free loopback port; stop it (tests, benchmark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any


class Server:
    """``python -m kexport serve PATH --port 0 --json ...`` until :meth:`stop`.

    Attributes:
        url: ``http://127.0.0.1:PORT``; ``host_port`` without the scheme.
        models: the JSON the server printed once listening (name -> format, endpoint, ...).
    """

    def __init__(self, path: str, *extra: str, timeout: float = 300.0,
                 env: dict[str, str] | None = None, wait: bool = True) -> None:
        args = [sys.executable, "-m", "kexport", "serve", os.fspath(path), "--port", "0",
                "--json", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = self.host_port = ""
        self.models: dict[str, Any] = {}
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 300.0) -> Server:
        """Block until the server has printed its URL (it listens from then on)."""
        started: dict[str, Any] = json.loads(self._first_line(timeout))
        self.url: str = started["url"]
        self.host_port = self.url.removeprefix("http://")
        self.models = started["models"]
        return self

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _first_line(self, timeout: float) -> str:
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0].strip():
            self.stop()
            raise RuntimeError("kexport serve did not start; stderr:\n" +
                               "".join(self.stderr)[-3000:])
        return box[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode


def wait_live(url: str, seconds: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/v2/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def send_and_close(host_port: str, data: bytes) -> None:
    """Send ``data`` on a fresh socket and hang up without reading (a client that leaves)."""
    import socket

    host, port = host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)

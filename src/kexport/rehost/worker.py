"""The child's lifecycle: one persistent worker process per target backend.

``python -m kexport.routing.rehost_child`` through
:class:`~kexport.check.worker.Worker` (never ``multiprocessing``), started on
first use with a clean environment and a private home folder, restarted if it
died, reused by later re-hosts onto the same backend (the backend import is
paid once) and stopped at exit (:func:`close_workers`). :func:`run_child`
hands it one :class:`~kexport.rehost.job.Job` and turns a failed job into the
typed error of the stage that failed.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from kexport.check.worker import Worker
from kexport.context import step_label
from kexport.errors import (
    CaptureError,
    KexportError,
    RouteRefused,
    SignatureError,
    UnsupportedRouteError,
    VerificationError,
    WriteError,
)
from kexport.rehost.job import Job

__all__ = ["CHILD_TIMEOUT_S", "close_workers", "run_child"]

CHILD_TIMEOUT_S = 900
#: The module the worker runs (the child's export needs the route tables).
CHILD_MODULE = "kexport.routing.rehost_child"


def _parent_path() -> list[str]:
    path = []
    for entry in sys.path:
        entry = os.path.abspath(entry or os.getcwd())
        if os.path.isdir(entry) and entry not in path:
            path.append(entry)
    return path


def _child_env(host: str, home: Path) -> dict[str, str]:
    """A clean environment: the target backend, the parent's import path, nothing else
    (:class:`~kexport.check.worker.Worker` states the float32 math on top)."""
    env = {"KERAS_BACKEND": host, "PYTHONPATH": os.pathsep.join(_parent_path()),
           "KERAS_HOME": str(home / ".keras"), "HOME": str(home),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    for key in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "CUDA_VISIBLE_DEVICES"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _start_worker(host: str) -> Worker:
    """One persistent ``python -m kexport.routing.rehost_child`` on ``host``.

    Fed one job folder per request, it answers one JSON line per job; it runs
    in a private home folder, removed when the worker is closed.
    """
    home = Path(tempfile.mkdtemp(prefix="kexport-rehost-worker-"))
    os.chmod(home, 0o700)
    return Worker(CHILD_MODULE, env=_child_env(host, home), cwd=home,
                  name=f"kexport-rehost-{host}",
                  on_close=functools.partial(shutil.rmtree, home, ignore_errors=True))


def _call(worker: Worker, host: str, work: Path, timeout: float) -> None:
    """Run the job in ``work``; raise :class:`CaptureError` if the worker fails."""
    try:
        reply = worker.ask({"work": str(work), "sys_path": _parent_path()}, timeout)
    except TimeoutError as e:
        worker.close(wait=10)
        raise CaptureError(
            f"{step_label('convert', f're-host onto {host}')}: the child process did not finish "
            f"in {timeout:g} s; it was stopped (the next re-host starts a new one)."
        ) from e
    if reply is None:
        code = worker.exit_code()
        tail = worker.log_tail(1500)
        worker.close(wait=10)
        raise CaptureError(
            f"{step_label('convert', f're-host onto {host}')}: the child process exited with "
            f"code {code} without a result. Its last output:\n{tail}"
        )


_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def close_workers() -> None:
    """Stop every re-host worker process of this process (also run at exit)."""
    with _WORKERS_LOCK:
        while _WORKERS:
            _WORKERS.popitem()[1].close(wait=10)


atexit.register(close_workers)


_ERRORS: dict[str, type[KexportError]] = {
    c.__name__: c for c in (SignatureError, CaptureError, RouteRefused, WriteError,
                            UnsupportedRouteError, VerificationError)}


def run_child(job: Job, work: Path) -> dict[str, Any]:
    """Run ``job`` in its host's worker (started, or restarted, as needed)."""
    host = job.host
    (work / "job.json").write_text(json.dumps(job.to_json()))
    with _WORKERS_LOCK:
        worker = _WORKERS.get(host)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.close(wait=10)
            worker = _WORKERS[host] = _start_worker(host)
        _call(worker, host, work, CHILD_TIMEOUT_S)
    result_file = work / "result.json"
    if not result_file.exists():
        raise CaptureError(
            f"{step_label('convert', f're-host onto {host}')}: the child process wrote no result."
        )
    result = json.loads(result_file.read_text())
    if result.get("ok"):
        return result
    stage, kind, message = result["stage"], result["type"], result["message"]
    if stage == "rebuild":
        # state the rebuilt model cannot carry (a variable or a layer's array without a
        # counterpart): refused, so that a further route of the cell can run
        raise (RouteRefused if kind == "RouteRefused" else UnsupportedRouteError)(
            f"{step_label('capture', f're-host: rebuild the model on the {host} backend')} failed: "
            f"{kind}: {message}")
    cls = _ERRORS.get(kind, CaptureError)
    prefix = {"export": step_label("convert", f"re-host: export on the {host} backend"),
              "run": step_label("check", f"re-host: run the artifact written on the {host} backend")}[stage]
    raise cls(f"{prefix} failed: {kind}: {message}")

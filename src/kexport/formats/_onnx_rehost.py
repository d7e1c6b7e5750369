"""Re-host a Keras model on TensorFlow in a child process and convert it there.

Keras picks its backend once per process, so a model living on JAX (or a
PyTorch model whose recurrent time axis must stay dynamic) is saved as a
``.keras`` file (config + weights), loaded by a worker process running the
TensorFlow backend, and converted by the TensorFlow ONNX route. The worker is
started once (``python -m kexport.formats._onnx_rehost``, never
``multiprocessing``, so user scripts without a ``__main__`` guard are safe)
and reused by later exports in the same process.

Custom layers and subclassed models must be importable in the worker: their
modules are imported there (with the parent's ``sys.path``) before loading.

This is a minimal helper owned by the ONNX format; the general re-host
machinery of issue 4 (``kexport.capture.rehost``) may replace it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from kexport.errors import CaptureError, KexportError

__all__ = ["ROUTE", "capture_rehost", "close_worker"]

ROUTE = "re-host on tensorflow (child process): tf.function -> tf2onnx"

_LOCK = threading.Lock()
_WORKER: _Worker | None = None


class _Worker:
    """A long-lived TensorFlow-backend child process answering JSON requests."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["KERAS_BACKEND"] = "tensorflow"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kexport.formats._onnx_rehost"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise CaptureError(
                f"Step 2/4 (capture, route: {ROUTE}): the TensorFlow worker process "
                f"exited with code {self.proc.wait()}. Its last output:\n{self.log_tail()}"
            )
        return json.loads(line)

    def close(self) -> None:
        if self.alive():
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def close_worker() -> None:
    """Stop the worker process, if one is running."""
    global _WORKER
    with _LOCK:
        if _WORKER is not None:
            _WORKER.close()
            _WORKER = None


atexit.register(close_worker)


def _custom_modules(model: Any) -> list[str]:
    modules = []
    for obj in [model, *model._flatten_layers(include_self=False)]:
        mod = type(obj).__module__
        if not mod.startswith("keras") and mod not in modules:
            modules.append(mod)
    return modules


def capture_rehost(model: Any, signature: list[Any], opset: int) -> Any:
    """Step 2 by re-hosting: returns a :class:`kexport.formats.onnx.RawGraph`."""
    import onnx

    from kexport.formats.onnx import RawGraph, spec_structure_to_json
    from kexport.signature import Spec

    global _WORKER
    modules = _custom_modules(model)
    if "__main__" in modules:
        raise CaptureError(
            f"Step 2/4 (capture, route: {ROUTE}): model '{model.name}' uses classes "
            "defined in the __main__ script, which the TensorFlow worker cannot "
            "import. Next steps: move the custom classes into an importable module "
            "(and register them with @keras.saving.register_keras_serializable), or "
            "export on the TensorFlow backend."
        )
    with tempfile.TemporaryDirectory(prefix="kexport-rehost-") as tmp:
        keras_path = Path(tmp) / "model.keras"
        out_path = Path(tmp) / "raw.onnx"
        try:
            model.save(keras_path)
        except Exception as e:
            raise CaptureError(
                f"Step 2/4 (capture: save config + weights, route: {ROUTE}) failed for "
                f"model '{model.name}': {type(e).__name__}: {e}\nNext steps: make the "
                "model serialisable (get_config on custom layers, "
                "@keras.saving.register_keras_serializable), or export on the "
                "TensorFlow backend."
            ) from e
        request = {"keras": str(keras_path), "out": str(out_path), "opset": opset,
                   "modules": modules, "signature": spec_structure_to_json(signature)}
        with _LOCK:
            if _WORKER is None or not _WORKER.alive():
                _WORKER = _Worker()
            reply = _WORKER.call(request)
        if not reply.get("ok"):
            raise CaptureError(
                f"Step 2/4 (capture in the TensorFlow worker, route: {ROUTE}) failed"
                + (f" in Keras layer '{reply['layer']}'" if reply.get("layer") else "")
                + f": {reply.get('error')}\nNext steps: {reply.get('next') or 'check that the model loads and runs on the TensorFlow backend'}"
            )
        proto = onnx.load(out_path)
    specs = [Spec(tuple(s["shape"]), s["dtype"], s["name"]) for s in reply["output_specs"]]
    return RawGraph(proto, reply["input_names"], reply["output_names"], specs, ROUTE)


def _serve() -> None:  # pragma: no cover - runs in the child process
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import importlib
    import traceback

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries goes to the log, not the protocol
    import keras

    from kexport.formats import onnx as kx_onnx

    for line in sys.stdin:
        request = json.loads(line)
        try:
            for mod in request["modules"]:
                importlib.import_module(mod)
            model = keras.saving.load_model(request["keras"])
            signature = kx_onnx.spec_structure_from_json(request["signature"])
            raw = kx_onnx.capture_tensorflow(model, signature, request["opset"], ROUTE)
            size = sum(len(t.raw_data) for t in raw.model.graph.initializer)
            onnx_mod = importlib.import_module("onnx")
            onnx_mod.save_model(raw.model, request["out"],
                                save_as_external_data=size > 2**30,
                                location="raw.onnx.data")
            reply = {"ok": True, "input_names": raw.input_names,
                     "output_names": raw.output_names,
                     "output_specs": [s.to_json() for s in raw.output_specs]}
        except KexportError as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}\n"
                     + "".join(traceback.format_exc(limit=-3)),
                     "next": "make sure the model reloads with keras.saving.load_model "
                             "on the TensorFlow backend"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()

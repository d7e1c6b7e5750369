"""The child side of re-hosting (``python -m kexport.capture._rehost_child WORKDIR``).

Runs with ``KERAS_BACKEND`` set to the target backend. Reads ``job.json``
written by :mod:`kexport.capture.rehost`, rebuilds the models, exports, runs
the artifact on the sample inputs with the format's own runtime, and writes
``result.json`` and ``outputs.npz``. Every failure is reported in
``result.json`` with the stage it happened in.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RUNNERS", "main"]


def _rebuild(work: Path, job: dict[str, Any]) -> list[Any]:
    import keras
    import numpy as np

    for module in job["imports"]:
        importlib.import_module(module)
    models = []
    for name in job["models"]:
        config = json.loads((work / f"{name}.json").read_text())
        # The config was produced by kexport from a live in-process model, not
        # read from an untrusted file, so Lambda layers may be rebuilt.
        model = keras.saving.deserialize_keras_object(config, safe_mode=False)
        with np.load(work / f"{name}.npz") as data:
            values = [data[f"v{j}"] for j in range(len(data.files))]
        variables = model.variables
        if len(variables) != len(values):
            raise ValueError(
                f"model '{model.name}' has {len(variables)} variables once rebuilt on "
                f"{keras.backend.backend()}, {len(values)} on the source backend")
        for v, value in zip(variables, values, strict=False):
            if tuple(v.shape) != tuple(value.shape):
                raise ValueError(
                    f"variable '{v.path}' has shape {tuple(v.shape)} once rebuilt, "
                    f"{tuple(value.shape)} on the source backend")
            v.assign(value)
        models.append(model)
    return models


def _endpoint_fn(model: Any, method: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
    bound = getattr(model, method)
    if not kwargs:
        return bound

    def call(*args: Any) -> Any:
        return bound(*args, **kwargs)

    return call


def _export(models: list[Any], job: dict[str, Any]) -> None:
    import kexport
    from kexport.capture.rehost import specs_from_json

    out = job["output"]
    if job["mode"] == "model":
        (endpoint,) = job["endpoints"]
        kexport.export_model(models[0], out, format=job["format"], verbose=job["verbose"],
                             input_signature=specs_from_json(endpoint["signature"]),
                             **job["kwargs"])
        return
    archive = kexport.ExportArchive()
    for m in models:
        archive.track(m)
    for ep in job["endpoints"]:
        fn = _endpoint_fn(models[ep["model"]], ep["method"], ep["kwargs"])
        archive.add_endpoint(ep["name"], fn, specs_from_json(ep["signature"]))
    for name, refs in job["collections"].items():
        archive.add_variable_collection(name, [models[i].variables[j] for i, j in refs])
    archive.write_out(out, verbose=job["verbose"], format=job["format"])


def _run_saved_model(path: str, endpoint: dict[str, Any], args: list[Any]) -> list[Any]:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    fn = getattr(loaded, endpoint["name"])
    outputs = fn(*tf.nest.map_structure(tf.constant, args))
    return [t.numpy() for t in tf.nest.flatten(outputs)]


def _run_onnx(path: str, endpoint: dict[str, Any], args: list[Any]) -> list[Any]:
    import onnxruntime as ort

    from kexport.capture.rehost import specs_from_json
    from kexport.signature import flat_names, flatten

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ours = flat_names(specs_from_json(endpoint["signature"]))
    flat = flatten(args)
    feed = dict(zip(ours, flat, strict=False)) if sorted(ours) == sorted(names) else dict(zip(names, flat, strict=False))
    return list(session.run(None, feed))


def _run_litert(path: str, endpoint: dict[str, Any], args: list[Any]) -> list[Any]:
    from kexport.formats.litert import run_flat
    from kexport.signature import flatten

    return run_flat(path, endpoint["name"], flatten(args))


def _run_torch_program(path: str, endpoint: dict[str, Any], args: list[Any]) -> list[Any]:
    from kexport.formats.torch_program import run_flat
    from kexport.signature import flatten

    return run_flat(path, endpoint["name"], flatten(args))


def _run_openvino(path: str, endpoint: dict[str, Any], args: list[Any]) -> list[Any]:
    from kexport.formats.openvino import run_flat
    from kexport.signature import flatten

    return run_flat(path, endpoint["name"], flatten(args))


# format -> function(path, endpoint json, structured args) -> flat outputs.
RUNNERS: dict[str, Callable[[str, dict[str, Any], list[Any]], list[Any]]] = {
    "tf_saved_model": _run_saved_model,
    "onnx": _run_onnx,
    "litert": _run_litert,
    "torch": _run_torch_program,
    "openvino": _run_openvino,
}


def _run(work: Path, job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from kexport.capture.rehost import specs_from_json
    from kexport.signature import pack_as

    runner = RUNNERS.get(job["format"])
    if runner is None:
        raise NotImplementedError(
            f"no runtime to check a re-hosted '{job['format']}' artifact; expected one of "
            f"{sorted(RUNNERS)}")
    outputs: dict[str, Any] = {}
    with np.load(work / "inputs.npz") as data:
        for ep in job["endpoints"]:
            signature = specs_from_json(ep["signature"])
            for case in job["cases"][ep["name"]]:
                key = case["key"]
                flat = [data[f"in__{key}__{i}"] for i in range(case["inputs"])]
                for i, y in enumerate(runner(job["output"], ep, pack_as(signature, flat))):
                    outputs[f"out__{key}__{i}"] = np.asarray(y)
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Run the job in the folder ``argv[0]``; always write ``result.json``."""
    import numpy as np

    work = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads((work / "job.json").read_text())
    stage = "rebuild"
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            models = _rebuild(work, job)
            stage = "export"
            _export(models, job)
            stage = "run"
            outputs = _run(work, job)
        np.savez(work / "outputs.npz", **outputs)
        result = {"ok": True, "stdout": buffer.getvalue()}
    except Exception as e:
        result = {"ok": False, "stage": stage, "type": type(e).__name__, "message": str(e),
                  "traceback": traceback.format_exc()[-4000:]}
    (work / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

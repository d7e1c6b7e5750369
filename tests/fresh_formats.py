"""Reload LiteRT, OpenVINO and .pt2 artifacts in a fresh process.

Only NumPy and each format's own runtime are imported here (no Keras, no
kexport): this is what a user's server does.
"""

from __future__ import annotations

import numpy as np


def litert_run(jobs):
    """``jobs``: ``[(path, signature_key, [inputs by name, ...])]`` ->
    ``[{"signatures": ..., "outputs": [dict, ...], "shape_signature": {...},
    "dtypes": [...]}]``."""
    import tensorflow as tf

    results = []
    for path, key, feeds in jobs:
        it = tf.lite.Interpreter(model_path=path)
        sigs = it.get_signature_list()
        runner = it.get_signature_runner(key)
        details = runner.get_input_details()
        outs = [{k: np.asarray(v) for k, v in runner(**feed).items()} for feed in feeds]
        results.append({
            "signatures": {k: {"inputs": list(v["inputs"]), "outputs": list(v["outputs"])}
                           for k, v in sigs.items()},
            "outputs": outs,
            "shape_signature": {n: d["shape_signature"].tolist() for n, d in details.items()},
            "dtypes": sorted({np.dtype(t["dtype"]).name for t in it.get_tensor_details()}),
        })
    return results


def openvino_run(jobs):
    """``jobs``: ``[(xml_path, [inputs by name, ...])]`` -> outputs by name, input names, dims.

    Compiled as a careful user's server does: in f32 whatever the CPU (OpenVINO
    runs f32 IR in bf16 by default on CPUs with bf16 units).
    """
    import openvino as ov

    core = ov.Core()
    results = []
    for path, feeds in jobs:
        compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        names = [p.get_any_name() for p in compiled.inputs]
        outs = []
        for feed in feeds:
            r = compiled(feed)
            outs.append({p.get_any_name(): np.asarray(r[p]) for p in compiled.outputs})
        results.append({"inputs": names,
                        "shapes": {p.get_any_name(): str(p.get_partial_shape())
                                   for p in compiled.inputs},
                        "outputs": outs})
    return results


def torch_run(jobs):
    """``jobs``: ``[(pt2_path, [[flat inputs], ...])]`` -> flat outputs per call, input names."""
    import torch

    results = []
    for path, calls in jobs:
        program = torch.export.load(path)
        module = program.module()
        names = [s.arg.name for s in program.graph_signature.input_specs
                 if s.kind.name == "USER_INPUT"]
        outs = []
        with torch.no_grad():
            for flat in calls:
                y = module(*[torch.from_numpy(np.asarray(x)) for x in flat])
                ys = list(y) if isinstance(y, (list, tuple)) else [y]
                outs.append([t.numpy() for t in ys])
        extra = {"kexport.json": ""}
        torch.export.load(path, extra_files=extra)
        results.append({"inputs": names, "outputs": outs, "manifest": extra["kexport.json"]})
    return results

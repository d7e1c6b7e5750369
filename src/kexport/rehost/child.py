"""The child side of a re-host that needs no route table: rebuilding the models,
running the written artifact, the rebuilt model's layer calls, the parent's
sample policy.

:mod:`kexport.routing.rehost_child` (the worker's entry point, which writes
the artifact with the host's own routes) calls these for each
:class:`~kexport.rehost.job.Job`.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kexport.check.calibration import EndpointBatches
from kexport.check.probe import recorded_arrays
from kexport.check.samples import SamplePolicy
from kexport.rehost.job import Job
from kexport.rehost.pairing import assign_values
from kexport.rehost.recipe import rebuild_model
from kexport.rehost.state import restore_layer_state
from kexport.runtime import load
from kexport.signature import flat_names, pack_as

__all__ = ["carried_calibration", "endpoint_fn", "layer_calls", "parent_policy", "rebuild",
           "run_artifact"]


def _rebuild_one(work: Path, name: str, imports: list[str]) -> Any:
    """One model, from its config (``<name>.json``) or else by value (``<name>.pkl``)."""
    import keras

    failures = []
    config_file, value_file = work / f"{name}.json", work / f"{name}.pkl"
    if config_file.exists():
        try:
            for module in imports:
                importlib.import_module(module)
            config = json.loads(config_file.read_text())
            # The config was produced by kexport from a live in-process model, not
            # read from an untrusted file, so Lambda layers may be rebuilt.
            return keras.saving.deserialize_keras_object(config, safe_mode=False)
        except Exception as e:
            failures.append(f"from its config: {type(e).__name__}: {e}")
    if value_file.exists():
        try:
            # kexport's own pickle, written by the parent into this job's
            # private (0700) folder: see kexport.rehost.recipe.
            return rebuild_model(value_file.read_bytes())
        except Exception as e:
            failures.append(f"by value: {type(e).__name__}: {e}")
    raise ValueError("; ".join(failures) or f"no description of {name} was written")


def rebuild(work: Path, job: Job) -> tuple[list[Any], list[list[Any]]]:
    """The models, and each model's variables in the source model's order."""
    import numpy as np

    models, ordered = [], []
    for name in job.models:
        model = _rebuild_one(work, name, list(job.imports))
        with np.load(work / f"{name}.npz") as data:
            values = [data[f"v{j}"] for j in range(len(data.files))]
        paths = json.loads((work / f"{name}.paths.json").read_text())
        ordered.append(assign_values(model, paths, values))
        _finalize_state(model)
        # then the tensors and arrays layers hold outside variables, as the source has them
        with np.load(work / f"{name}.state.npz") as data:
            arrays = {k: data[k] for k in data.files}
        restore_layer_state(model, json.loads((work / f"{name}.state.json").read_text()),
                            arrays)
        models.append(model)
    return models, ordered


def _finalize_state(model: Any) -> None:
    """Let layers rebuild what they derive from their variables.

    Variables are assigned directly, so layers that cache tensors computed
    from them (an adapted ``Normalization`` keeps ``mean``/``variance`` built
    from ``adapt_mean``/``adapt_variance``; lookup layers their tables) must
    recompute them, as Keras does after ``adapt``.
    """
    for layer in model._flatten_layers(include_self=True):
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize):
            finalize()


def endpoint_fn(model: Any, method: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The endpoint again; still describable as data (a host whose capture
    re-hosts or records endpoints, e.g. PyTorch, describes it once more)."""
    bound = getattr(model, method)
    return functools.partial(bound, **kwargs) if kwargs else bound


def carried_calibration(work: Path, layout: dict[str, Any]) -> EndpointBatches:
    """The archive's calibration batches, as the parent read them (``carried.npz``)."""
    import numpy as np

    batches = EndpointBatches()
    with np.load(work / "carried.npz", allow_pickle=False) as data:
        for name, entry in layout.items():
            e = entry["index"]
            batches[name] = [{n: np.array(data[f"cal__{e}__{b}__{i}"])
                              for i, n in enumerate(entry["names"])}
                             for b in range(entry["batches"])]
    return batches


def run_artifact(work: Path, job: Job) -> dict[str, Any]:
    """Run the artifact on the sample inputs with its own runtime (:func:`kexport.runtime.load`)."""
    import numpy as np

    artifact = load(job.output, format=job.format)
    outputs: dict[str, Any] = {}
    with np.load(work / "inputs.npz") as data:
        for ep in job.endpoints:
            ours = flat_names(ep.signature)
            info = artifact.endpoints.get(ep.name)
            theirs = info.input_names if info is not None else []
            for case in job.cases[ep.name]:
                key = case.key
                flat = [data[f"in__{key}__{i}"] for i in range(case.inputs)]
                # By name when the artifact kept the Keras input names, else in order.
                feeds: Any = (dict(zip(ours, flat, strict=True))
                              if sorted(ours) == sorted(theirs) else flat)
                result = artifact.run(ep.name, feeds)
                for i, y in enumerate(result.values()):
                    outputs[f"out__{key}__{i}"] = np.asarray(y)
    return outputs


def layer_calls(work: Path, job: Job, models: list[Any]
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rebuilt model's sublayer calls on one case's inputs, run eagerly (no
    export): the parent matches them with the live model's to name the first
    layer the host backend computes differently
    (:func:`kexport.check.localization.first_divergence`)."""
    import keras
    import numpy as np

    asked = job.layers
    assert asked is not None
    ep = job.endpoint(asked.endpoint)
    with np.load(work / "inputs.npz") as data:
        flat = [data[f"in__{asked.key}__{i}"] for i in range(asked.inputs)]
    args = pack_as(list(ep.signature), [keras.ops.convert_to_tensor(x) for x in flat])
    model = models[ep.model]
    rows = recorded_arrays(model, endpoint_fn(model, ep.method, ep.kwargs), args)
    arrays = {f"{kind}__{n}__{i}": x for n, row in enumerate(rows)
              for kind in ("inputs", "outputs") for i, x in enumerate(row[kind])}
    return arrays, [{"path": r["path"], "class_name": r["class_name"],
                     "inputs": len(r["inputs"]), "outputs": len(r["outputs"])} for r in rows]


def parent_policy(work: Path, job: Job) -> SamplePolicy | None:
    """The parent's sample policy (and user sample data), for the export's own checks."""
    import dataclasses

    import numpy as np

    if job.samples is None:
        return None
    policy = SamplePolicy.from_json(job.samples)
    names = job.sample_data
    if names is None:
        return policy
    with np.load(work / "sample_data.npz", allow_pickle=False) as data:
        arrays = {n: np.array(data[f"arr_{i}"]) for i, n in enumerate(names)}
    return dataclasses.replace(policy, data=arrays)

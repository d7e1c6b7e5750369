"""Why a re-host was refused: where the rebuilt model first computes differently.

When the artifact written on the host does not compute what the live model
computes, :func:`diagnosis` asks the same child for the rebuilt model's
sublayer calls, run eagerly on the first failing case (no export), and
matches them with the live model's
(:func:`kexport.check.localization.first_divergence`): a layer that differs
there is a difference of the two backends' own computations for the same
weights; none: the export on the host is at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kexport.capture.endpoint import EndpointRecipe
from kexport.check.localization import ENTERS, first_divergence
from kexport.check.probe import recorded_arrays
from kexport.rehost.cases import LiveCase, state_kept
from kexport.rehost.job import Job
from kexport.rehost.worker import run_child
from kexport.signature import pack_as

__all__ = ["diagnosis"]


def diagnosis(models: list[Any], recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
              failing: tuple[str, LiveCase] | None, job: Job, work: Path,
              atol: float, rtol: float) -> str:
    """Where a refused re-host goes wrong: the rebuilt model, run eagerly on the host
    backend (a second job of the same child), against the live model, sublayer call
    by sublayer call on the first failing case ``failing`` (endpoint name, live
    case; :func:`first_divergence`).

    A layer that differs there is a difference of the two backends' own
    computations for the same weights (no export can remove it); none: the
    export on the host is at fault. A hint only: ``""`` if it cannot be found.
    """
    import keras
    import numpy as np

    backend, host = job.source_backend, job.host
    if failing is None:
        return ""
    name, entry = failing
    recipe, fn = next((r, f) for r, f in recipes if r.name == name)
    try:
        with np.load(work / "inputs.npz") as data:
            flat = [data[f"in__{entry.key}__{i}"] for i in range(entry.inputs)]
        args = pack_as(list(recipe.signature), [keras.ops.convert_to_tensor(x) for x in flat])
        with state_kept(models):
            live = recorded_arrays(models[recipe.model], fn, args)
        result = run_child(job.diagnosis(name, entry.key, entry.inputs), work)
        with np.load(work / "layers.npz") as data:
            rebuilt = [{**c, **{kind: [data[f"{kind}__{n}__{i}"] for i in range(c[kind])]
                                for kind in ("inputs", "outputs")}}
                       for n, c in enumerate(result["calls"])]
    except Exception:  # a hint: without it, the refusal above still stands
        return ""
    found = first_divergence(live, rebuilt, atol, rtol)
    where = f"endpoint '{name}' batch {entry.batch}"
    if found is None:
        return (f"\nThe model rebuilt on the {host} backend computes what the live model "
                f"computes, sublayer call by sublayer call ({where}): the difference comes "
                f"from the export on {host}.")
    origin = (f"its inputs agree, so the difference enters in '{found['path']}' itself"
              if found["origin"] == ENTERS else
              "its inputs already differ while every earlier sublayer call agrees, so the "
              "difference enters in code between sublayer calls"
              + (f" inside '{found['enclosing']}'" if found["enclosing"] else ""))
    return (f"\nThe model rebuilt on the {host} backend already computes differently from "
            f"the live model on the {backend} backend, for the same weights and inputs, "
            f"before any export ({where}): the first sublayer call whose outputs differ is "
            f"'{found['path']}' ({found['class_name']}, max abs error "
            f"{found['max_abs_error']:.3g}); {origin}. This is a difference of the two "
            f"backends' implementations of the model's computation (e.g. values a backend "
            f"leaves undefined, such as attention rows that a mask leaves empty), which a "
            f"re-host cannot remove: export from the {host} backend, or with inputs whose "
            f"outputs the backends define alike (`sample_data=`).")

"""Models written for the child: their configs or pickles, variables and layer tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kexport.context import step_label
from kexport.errors import UnsupportedRouteError
from kexport.rehost.eligibility import config_json
from kexport.rehost.pairing import variable_paths
from kexport.rehost.recipe import describe_model
from kexport.rehost.state import layer_state

__all__ = ["serialize"]


def serialize(models: list[Any], host: str, work: Path) -> tuple[list[str], list[str]]:
    """Write each model's ways to the child and its variables; return file names and imports.

    Per model: its Keras config (``model<i>.json``) where every class is
    importable and configurable, the model by value (``model<i>.pkl``,
    :func:`~kexport.rehost.recipe.describe_model`) where it can be
    pickled, and the values (``model<i>.npz``) and paths
    (``model<i>.paths.json``) of all its variables, and the tensors its layers
    hold outside variables (``model<i>.state.npz`` and ``.state.json``,
    :func:`~kexport.rehost.state.layer_state`). The child tries the
    config first, then the pickle, assigns the values by path and sets the
    layer tensors again.

    Raises:
        RouteRefused: a layer holds a tensor that cannot travel (the message
            names the layer path and the attribute).
    """
    import keras
    import numpy as np

    files, modules = [], []
    for i, m in enumerate(models):
        text, why_not_config = config_json(m)
        try:
            blob: bytes | None = describe_model(m)
            why_not_value = ""
        except UnsupportedRouteError as e:
            blob, why_not_value = None, str(e)
        if text is None and blob is None:
            raise UnsupportedRouteError(
                f"{step_label('capture', f're-host onto {host}: describe the model')} failed for "
                f"'{m.name}': its config cannot travel ({why_not_config}) and neither can "
                f"the model by value: {why_not_value}")
        if text is not None:
            (work / f"model{i}.json").write_text(text)
        if blob is not None:
            # Read back only by kexport's own child process, from this private
            # (0700) temporary folder.
            (work / f"model{i}.pkl").write_bytes(blob)
        values = {f"v{j}": np.asarray(keras.ops.convert_to_numpy(v.value))
                  for j, v in enumerate(m.variables)}
        np.savez(work / f"model{i}.npz", **values)
        (work / f"model{i}.paths.json").write_text(json.dumps(variable_paths(m)))
        entries, arrays = layer_state(m)
        np.savez(work / f"model{i}.state.npz", **arrays)
        (work / f"model{i}.state.json").write_text(json.dumps(entries))
        files.append(f"model{i}")
        if text is not None:
            for layer in m._flatten_layers(include_self=True):
                mod = type(layer).__module__
                if mod.split(".")[0] != "keras" and mod not in modules:
                    modules.append(mod)
    return files, modules

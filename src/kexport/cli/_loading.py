"""Reading what the verbs are given.

The ``.keras`` model file (Keras safe mode unless ``--unsafe``), the
``--input-signature`` JSON, the ``.npz`` files of ``--data`` and
``--calibration``, and the Keras backend the model runs on; each refuses bad
input with a typed kexport error that says what was expected.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kexport._keras_file import load_keras_file
from kexport.errors import ArtifactError, SampleDataError, SignatureError
from kexport.signature import Spec

__all__ = ["keras_backend", "load_data", "load_model", "parse_signature"]


def load_model(path: str, unsafe: bool) -> Any:
    """Load a ``.keras`` file with Keras safe mode unless ``unsafe``."""

    if not os.path.isfile(path):
        raise ArtifactError(f"Expected a .keras model file. Received: '{path}', which "
                            f"{'is a folder' if os.path.isdir(path) else 'does not exist'}.")
    return load_keras_file(path, safe_mode=not unsafe)


def parse_signature(text: str | None) -> Any:
    """``--input-signature`` JSON -> specs (a list, dict or single spec).

    Raises:
        SignatureError: invalid JSON or specs, with what was expected.
    """
    if text is None:
        return None

    try:
        data = json.loads(text)
    except ValueError as e:
        raise SignatureError(f"Expected --input-signature to be JSON. Received: {text!r} "
                             f"({e})") from None

    def spec(item: Any) -> Any:
        if isinstance(item, dict) and "shape" in item:
            shape = item["shape"]
            if not isinstance(shape, list):
                raise SignatureError(f"Expected a list as 'shape'. Received: {shape!r}")
            return Spec(tuple(shape), str(item.get("dtype", "float32")), item.get("name"))
        if isinstance(item, list):
            return [spec(i) for i in item]
        if isinstance(item, dict):
            return {k: spec(v) for k, v in item.items()}
        raise SignatureError(
            'Expected --input-signature entries like {"shape": [null, 8], "dtype": '
            f'"float32", "name": "x"}}. Received: {item!r}')

    return spec(data)


def load_data(path: str | None, flag: str = "--data") -> dict[str, Any] | None:
    """The arrays of a ``--data FILE.npz`` (keyed by input name, or ``arr_<i>``)."""
    import numpy as np

    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise SampleDataError(
                    f"Expected {flag} to be a .npz file of named arrays. Received a "
                    f"single array in '{path}'.")
            return {k: np.array(data[k]) for k in data.files}
    except (ValueError, EOFError) as e:
        raise SampleDataError(f"Expected {flag} to be a .npz file. Received '{path}': "
                              f"{e}") from e


def keras_backend() -> str:
    """The name of the Keras backend (``KERAS_BACKEND``) the model runs on."""
    import keras

    return keras.backend.backend()

"""Checks and names for the JAX capture's options: ``jax2tf_kwargs`` platforms
refused when an endpoint is added, and ``tf.Variable`` names TensorFlow accepts."""

from __future__ import annotations

import re
from typing import Any

from kexport.errors import SignatureError

__all__ = ["check_platforms", "variable_name"]

_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_platforms(name: str, jax2tf_kwargs: Any) -> None:
    """Refuse unknown ``native_serialization_platforms`` when the endpoint is added,
    before anything is traced (jax2tf itself only fails when the endpoint is saved)."""
    platforms = (jax2tf_kwargs.get("native_serialization_platforms")
                 if isinstance(jax2tf_kwargs, dict) else None)
    if platforms is None:
        return
    given = [platforms] if isinstance(platforms, str) else list(platforms)
    unknown = [p for p in given if not isinstance(p, str) or p.lower() not in _PLATFORMS]
    if unknown or not given:
        raise SignatureError(
            f"Endpoint '{name}': expected jax2tf_kwargs['native_serialization_platforms'] to "
            f"name platforms among {list(_PLATFORMS)}. Received: "
            f"native_serialization_platforms={platforms!r} (unknown: {unknown!r})")


def variable_name(path: str | None) -> str | None:
    """A ``tf.Variable`` name for a Keras variable path: TensorFlow's root scope names
    must start with a letter, digit or dot (a subclassed model named ``_pair`` gives
    ``_pair/dense/kernel``)."""
    if not path:
        return None
    name = re.sub(r"[^A-Za-z0-9_.]", "_", path.replace("/", "_")).lstrip("_")
    return name or None

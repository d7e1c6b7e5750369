"""Capture: turn Keras endpoint functions into traced TensorFlow functions.

Each Keras backend has one capture module here. A capture takes plain Python
endpoint functions (``model.call``, lambdas, ``tf.function`` objects) and
returns ``tf.function`` objects over ``tf.Variable`` state, which the format
writers then serialise. :func:`for_backend` picks the module through the
route registry (:mod:`kexport.registry`), so no caller branches on the backend.
"""

from __future__ import annotations

from kexport.capture._base import Capture, discover_layers, owner_model

__all__ = ["Capture", "discover_layers", "for_backend", "owner_model"]


def for_backend(backend: str) -> Capture:
    """Return a fresh capture for ``backend`` (``keras.backend.backend()``).

    Raises:
        UnsupportedRouteError: when kexport has no capture for this backend.
    """
    from kexport import registry

    return registry.capture_for(backend)

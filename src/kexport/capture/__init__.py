"""Capture: turn Keras endpoint functions into traced TensorFlow functions.

Each Keras backend has one capture module here. A capture takes plain Python
endpoint functions (``model.call``, lambdas, ``tf.function`` objects) and
returns ``tf.function`` objects over ``tf.Variable`` state, which the format
writers then serialise. The route tables (:func:`kexport.routing.capture_for`)
pick the capture of a backend, so no caller branches on the backend. A
capture also records every endpoint as data
(:class:`~kexport.capture.endpoint.EndpointRecipe`) for formats that re-host.
"""

from __future__ import annotations

from kexport.capture._base import Capture, discover_layers, owner_model

__all__ = ["Capture", "discover_layers", "owner_model"]

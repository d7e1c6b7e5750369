"""An ``ExportArchive`` capture for backends that cannot trace TensorFlow functions.

On PyTorch (no ``torch_xla``), endpoints are recorded as data
(:class:`~kexport.capture.endpoint.EndpointRecipe`) and checked against the
live model when they are added; ``write_out`` re-hosts the archive
(:func:`kexport.rehost.write_archive_rehosted`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kexport.capture._base import Capture, TracedEndpoint, _check_positional, output_names
from kexport.capture.endpoint import describe_endpoint, is_layer
from kexport.check.live import flat_numpy
from kexport.context import step_label
from kexport.errors import (
    CaptureError,
    CaptureValueError,
    SignatureError,
    SignatureTypeError,
    UnsupportedRouteError,
    describe,
)
from kexport.rehost.cases import all_variables, samples_or_none, state_kept
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["RehostCapture"]


def _is_tf_trackable(obj: Any) -> bool:
    """A TensorFlow resource (lookup table, ``tf.Module``...), without importing TensorFlow
    for objects that cannot be one."""
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(obj, tf.__internal__.tracking.Trackable)


class RehostCapture(Capture):
    """An ``ExportArchive`` capture that records endpoints as data and re-hosts.

    Used where the backend has no way to produce TensorFlow functions (PyTorch
    without ``torch_xla``): ``track`` and ``add_endpoint`` record
    :class:`EndpointRecipe` objects and check them against the live model;
    ``write_out`` (:func:`write_archive_rehosted`, for every format not in
    the format's ``native_archives``) rebuilds the tracked models on ``host``
    in a child process, re-creates the archive there, writes it, and verifies
    every endpoint against the live functions before placing the artifact.
    """

    def __init__(self, host: str) -> None:
        import keras

        super().__init__()
        self.backend = keras.backend.backend()
        self.host = host

    def track(self, resource: Any) -> None:
        """Track a built Keras layer or model (TensorFlow resources cannot travel)."""
        if not is_layer(resource):
            if not _is_tf_trackable(resource):
                raise CaptureValueError(
                    f"Expected a Keras layer or model (on the {self.backend} backend, "
                    f"ExportArchive re-hosts them onto {self.host}). Received: "
                    f"{describe(resource)}")
            raise UnsupportedRouteError(
                f"On the {self.backend} backend, ExportArchive re-hosts tracked Keras "
                f"layers and models onto the {self.host} backend. Expected a Keras layer "
                f"or model. Received: {describe(resource)}. TensorFlow resources such "
                "as lookup tables can only be tracked with KERAS_BACKEND=tensorflow."
            )
        if self._is_tracked(resource):
            return
        # Whether the model can be rebuilt in another process is checked when a
        # format is written by re-hosting (the re-host refuses it then, with the
        # reason); formats written in process (.pt2, OpenVINO) need no rebuild.
        self._tracked_layers.append(resource)

    def _held(self, variable: Any) -> Any:
        return variable  # the Keras variable travels with its model

    def collection(self, variables: Any) -> list[Any]:
        """References ``(model index, variable index)`` for ``variables``."""
        refs = []
        for v in variables:
            ref = None
            for i, m in enumerate(self._tracked_layers):
                j = next((j for j, w in enumerate(m.variables) if w is v), None)
                if j is not None:
                    ref = (i, j)
                    break
            if ref is None:
                raise SignatureError(
                    f"Expected every variable of the collection to belong to a tracked "
                    f"layer or model (on the {self.backend} backend they travel with it). "
                    f"Received: variable '{getattr(v, 'path', getattr(v, 'name', v))}' of no tracked layer. Next step: "
                    "archive.track(the layer that owns it) first."
                )
            refs.append(ref)
        return refs

    def trace(self, name: str, fn: Callable[..., Any], signature: list[Any] | None,
              **kwargs: Any) -> TracedEndpoint:
        """Record ``fn`` as an :class:`EndpointRecipe`; check it on the live model."""
        import keras
        import numpy as np

        if kwargs:
            raise SignatureTypeError(
                f"Endpoint '{name}': unexpected keyword arguments for the {self.backend} "
                f"backend: {sorted(kwargs)}. `is_static` and `jax2tf_kwargs` only apply "
                "to the JAX backend."
            )
        if signature is None:
            raise SignatureError(
                f"Endpoint '{name}': the shapes and dtypes of the inputs of `fn` are "
                "unknown. Expected `input_signature=` (a list with one spec per "
                "positional argument). Received: input_signature=None"
            )
        models = list(self._tracked_layers)
        recipe = describe_endpoint(name, fn, models, signature, self.backend, self.host)
        for m in models[len(self._tracked_layers):]:
            self.track(m)
        _check_positional(name, fn, signature)
        owner = self._tracked_layers[recipe.model]
        flat = samples_or_none(flatten(signature), 2, np.random.default_rng(0), name)
        outputs: Any = None
        if flat is not None:
            args = pack_as(list(signature), [keras.ops.convert_to_tensor(x) for x in flat])
            try:
                with state_kept(self._tracked_layers):
                    outputs = fn(*args)
            except Exception as e:
                raise CaptureError(
                    f"{step_label('capture', f'{self.backend} backend')}: calling endpoint "
                    f"'{name}' on sample inputs failed: {type(e).__name__}: {e}"
                ) from e
        self._described[name] = (recipe, fn)
        endpoint = TracedEndpoint(name=name, function=fn, signature=signature,
                                  input_names=flat_names(signature), owner=owner)
        if outputs is not None:
            endpoint.output_names = output_names(outputs, owner)
            endpoint.output_specs = [
                Spec((None, *tuple(a.shape)[1:]) if a.ndim else (), str(a.dtype), n)
                for a, n in zip(flat_numpy(outputs), endpoint.output_names, strict=False)]
        return endpoint

    def trackables(self) -> dict[str, Any]:
        """Tracked layers and their Keras variables (nothing here is a TF object)."""
        split = self.tracked_variables(held=True)
        return {"variables": all_variables(self._tracked_layers), "resources": [],
                "tracked": all_variables(self._tracked_layers),
                "tracked_trainable": split["trainable_variables"],
                "tracked_non_trainable": split["non_trainable_variables"],
                "tracked_layers": list(self._tracked_layers), "tracked_resources": []}

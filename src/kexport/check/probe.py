"""A probe of a model: the same computation, with every sublayer's tensors as outputs.

:func:`kexport.localize` exports a probe through the failing artifact's own
route and compares it with the live model tensor by tensor. One mechanism
serves Functional, Sequential and subclassed models (nested models
included): while :class:`Probe` calls the model, a scoped patch of Keras's
``Layer.__call__`` (:func:`kexport._patch.scoped_patch`, active only for the
calls a :class:`Recorder` in force watches) records the inputs and outputs of
every sublayer call. The probe returns those tensors, each once, as a flat
list; it traces like the model itself under ``tf.function``, ``jax2tf``/JAX
and ``torch.export``, and travels to a re-host child by value like any
model (the paths are computed again there from the model it holds).

The rows of a probe (:class:`ProbeCall`) come from one eager call of it
(:func:`plan_of`): which layer (path and class), which probe outputs hold its
inputs and its outputs. Rows are in the order the calls *returned*, which is
topological: a layer returns after every layer computing its inputs, and a
nested model after its own sublayers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kexport._inference import infer
from kexport._patch import scoped_patch

__all__ = ["MODEL_INPUT", "ProbeCall", "Recorder", "layer_paths", "plan_of", "recorded_arrays",
           "recording"]

#: The probe output index standing for a model input (its error is 0 by construction).
MODEL_INPUT = -1


@dataclass(frozen=True)
class ProbeCall:
    """One recorded sublayer call.

    Attributes:
        path: the layer's path below the model (``"block/dense"``); a layer
            called more than once gets ``@2``, ``@3``... on later calls.
        class_name: the layer's class name.
        inputs: probe output indices of its input tensors (:data:`MODEL_INPUT`
            for a model input).
        outputs: probe output indices of its output tensors (likewise).
    """

    path: str
    class_name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def layer_paths(model: Any) -> dict[int, tuple[str, Any]]:
    """``id(layer) -> (path, layer)`` for every sublayer of ``model``, at any depth.

    The path joins the layer names from the model down (the model's own name
    left out), e.g. ``"encoder/dense_1"``; the first path found wins for a
    layer reachable twice.
    """
    found: dict[int, tuple[str, Any]] = {}

    def walk(layer: Any, prefix: str) -> None:
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            if id(sub) in found:
                continue
            path = f"{prefix}{sub.name}"
            found[id(sub)] = (path, sub)
            walk(sub, path + "/")

    walk(model, "")
    return found


def _is_tensor(value: Any) -> bool:
    import keras

    return isinstance(value, keras.KerasTensor) or keras.ops.is_tensor(value)


def _tensors(values: Any) -> list[Any]:
    import keras

    return [v for v in keras.tree.flatten(values) if _is_tensor(v)]


@dataclass
class Recorded:
    """One sublayer call seen by a :class:`Recorder`: its tensors, flat."""

    layer: Any
    inputs: list[Any]
    outputs: list[Any]


class Recorder:
    """The sublayer calls made while it is in force (see :func:`recording`)."""

    def __init__(self, model: Any) -> None:
        self.paths = layer_paths(model)
        self.calls: list[Recorded] = []

    def record(self, layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
               outputs: Any) -> None:
        named = [v for k, v in sorted(kwargs.items()) if k not in ("training", "mask")]
        self.calls.append(Recorded(layer, _tensors([list(args), named]), _tensors(outputs)))


# The one context variable of kexport: Keras calls back into kexport (the scoped
# ``Layer.__call__`` hook below), and a callback takes no argument from us.
_RECORDER: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar(
    "kexport_probe_recorder", default=None)


def _recording_call(original: Any) -> Any:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorder = _RECORDER.get()
        if recorder is None or id(self) not in recorder.paths:
            return original(self, *args, **kwargs)
        outputs = original(self, *args, **kwargs)
        recorder.record(self, args, kwargs, outputs)
        return outputs

    return __call__


@contextlib.contextmanager
def recording(model: Any) -> Iterator[Recorder]:
    """Record every call of a sublayer of ``model`` made inside."""
    import keras

    recorder = Recorder(model)
    token = _RECORDER.set(recorder)
    try:
        with scoped_patch(keras.layers.Layer, "__call__", _recording_call):
            yield recorder
    finally:
        _RECORDER.reset(token)


def _probe_class() -> type:
    import keras

    class Probe(keras.Model):
        """``model`` with every recorded sublayer tensor as a flat list of outputs.

        Args:
            model: the model probed.
            slots: its outputs: ``(call, "in" | "out", position)`` of the
                recorded sublayer calls (:func:`plan_of`).
            spread: whether the probe's one input is the tuple of the model's
                positional arguments (a model of several arguments).
        """

        def __init__(self, model: Any, slots: Sequence[Sequence[Any]] = (),
                     spread: bool = False, **kwargs: Any) -> None:
            super().__init__(name=kwargs.pop("name", "kexport_probe"), **kwargs)
            self.probed = model
            self.slots = tuple((int(c), str(k), int(p)) for c, k, p in slots)
            self.spread = bool(spread)

        def call(self, inputs: Any) -> Any:
            args = tuple(inputs) if self.spread else (inputs,)
            with recording(self.probed) as recorder:
                infer(self.probed, *args)
            import keras

            calls, outputs, emitted = recorder.calls, [], set()
            for c, kind, p in self.slots:
                tensor = getattr(calls[c], "inputs" if kind == "in" else "outputs")[p]
                if id(tensor) in emitted:
                    # one tensor returned twice (a layer that passes its input
                    # through): a copy, as some converters refuse repeated outputs
                    # (OpenVINO's PyTorch frontend refuses a clone too: ``* 1``)
                    floating = "float" in keras.backend.standardize_dtype(tensor.dtype)
                    tensor = tensor * 1.0 if floating else keras.ops.copy(tensor)
                emitted.add(id(tensor))
                outputs.append(tensor)
            return outputs

    Probe.__module__ = __name__
    Probe.__qualname__ = "Probe"
    return Probe


_PROBE: list[type] = []


def __getattr__(name: str) -> Any:
    # ``Probe`` subclasses keras.Model: made on first use, so importing this
    # module imports no Keras (and a re-host child finds it by name)
    if name == "Probe":
        if not _PROBE:
            _PROBE.append(_probe_class())
        return _PROBE[0]
    raise AttributeError(name)


def plan_of(model: Any, args: Sequence[Any]) -> tuple[list[ProbeCall], list[tuple[int, str, int]]]:
    """The rows of a probe of ``model`` and its outputs (slots), from one eager,
    recorded call of ``model`` on ``args`` (its positional arguments).

    Every output of every call is a slot of its own (a layer that returns its
    input unchanged here may not in the artifact). An input is the slot of
    the last call that returned that tensor, the model's input
    (:data:`MODEL_INPUT`), or else (a tensor made between layers) a slot of its
    own. The same calls happen in the same order when the probe is traced,
    so the slots name the same tensors there.
    """
    import keras

    args = keras.tree.map_structure(keras.ops.convert_to_tensor, list(args))
    given = {id(t) for t in keras.tree.flatten(args)}
    with recording(model) as recorder:
        infer(model, *args)
    paths = recorder.paths
    producer: dict[int, int] = {}
    slots: list[tuple[int, str, int]] = []
    calls: list[ProbeCall] = []
    seen: dict[str, int] = {}
    for i, call in enumerate(recorder.calls):
        ins = []
        for p, t in enumerate(call.inputs):
            if id(t) in producer:
                ins.append(producer[id(t)])
            elif id(t) in given:
                ins.append(MODEL_INPUT)
            else:
                producer[id(t)] = len(slots)
                ins.append(len(slots))
                slots.append((i, "in", p))
        outs = []
        for p, t in enumerate(call.outputs):
            producer[id(t)] = len(slots)
            outs.append(len(slots))
            slots.append((i, "out", p))
        path = paths[id(call.layer)][0]
        count = seen[path] = seen.get(path, 0) + 1
        calls.append(ProbeCall(path if count == 1 else f"{path}@{count}",
                               type(call.layer).__name__, tuple(ins), tuple(outs)))
    return calls, slots


def recorded_arrays(model: Any, fn: Any, args: Sequence[Any]) -> list[dict[str, Any]]:
    """Every sublayer call of ``model`` made by one eager call ``fn(*args)``, as
    NumPy: ``{"path", "class_name", "inputs", "outputs"}`` per call, in the order
    the calls returned (topological); ``path`` as in :class:`ProbeCall` (``@2``
    on later calls of a layer).

    Unlike a probe, nothing is exported: the same model rebuilt on another
    backend (a re-host) is recorded the same way and matched by path, which
    holds even where the two backends call different sublayers.
    """
    import keras
    import numpy as np

    def arrays(tensors: list[Any]) -> list[Any]:
        return [np.asarray(keras.ops.convert_to_numpy(t)) for t in tensors]

    with recording(model) as recorder:
        fn(*args)
    rows, seen = [], {}
    for call in recorder.calls:
        path = recorder.paths[id(call.layer)][0]
        count = seen[path] = seen.get(path, 0) + 1
        rows.append({"path": path if count == 1 else f"{path}@{count}",
                     "class_name": type(call.layer).__name__,
                     "inputs": arrays(call.inputs), "outputs": arrays(call.outputs)})
    return rows

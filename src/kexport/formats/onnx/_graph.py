"""What the ONNX writer's stages hand each other: constants, the raw graph, strategies.

The bottom of :mod:`kexport.formats.onnx`: every other module of the package
imports from here, and this module imports none of them.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kexport.errors import CaptureError, KexportError
from kexport.formats.onnx._accept import NotTraceable
from kexport.signature import Spec

__all__ = ["ARCHIVE_WEIGHTS",
           "DEFAULT_EXTERNAL_DATA_THRESHOLD", "DEFAULT_OPSET", "INLINE_LIMIT", "Attempt",
           "RawGraph", "Strategy", "TORCH_ENDPOINT_ATTRIBUTE"]

DEFAULT_OPSET = 18
"""Opset used when ``opset_version`` is not given (ONNX Runtime >= 1.14 runs it)."""
#: Above this many bytes of weights a graph cannot be stored inline
#: (protobuf's 2 GiB message limit, with room for the graph itself): external
#: data is then written whatever ``external_data_threshold`` says.
INLINE_LIMIT = 2**31 - (64 << 20)
DEFAULT_EXTERNAL_DATA_THRESHOLD = INLINE_LIMIT
"""Weights above this many bytes go to external data (protobuf's 2 GiB limit, less headroom)."""
ARCHIVE_WEIGHTS = "weights.data"


#: The attribute holding the model in the ``torch.nn.Module`` both PyTorch
#: strategies export: the first segment of their nodes' module paths.
TORCH_ENDPOINT_ATTRIBUTE = "model"


@dataclass
class RawGraph:
    """What a capture route hands to the finishing steps.

    Attributes:
        model: the converted ONNX model, names not yet final.
        input_names: the Keras name of each flat graph input, in order.
        output_names: the Keras name of each flat graph output, in order.
        output_specs: one :class:`Spec` per flat output.
        route: the route taken, for metadata and error messages.
        accept: for a fast converter's graph, the check the *finished* graph
            (its serialized bytes, or the staged file with external data:
            exactly what will be written) must pass before anything is
            placed; raises
            :class:`~kexport.formats.onnx._accept.NotTraceable` to send the
            export to the next strategy.
    """

    model: Any
    input_names: list[str]
    output_names: list[str]
    output_specs: list[Spec] = field(default_factory=list)
    route: str = ""
    accept: Callable[[bytes | str], None] | None = None


@dataclass
class Attempt:
    """What one strategy gave: its graph, or the reason it refused the model.

    Attributes:
        strategy: the strategy that ran.
        graph: the captured graph (``None`` once refused, or once the
            finishing step took it).
        refused: why this strategy's graph is not used; the export moves on
            to the next strategy (or raises this from the last).
    """

    strategy: Strategy
    graph: RawGraph | None = None
    refused: Exception | None = None  # NotTraceable, or a CaptureError the converter raised


class Strategy(abc.ABC):
    """One way to capture a model as a raw ONNX graph, in process.

    A backend's strategies are tried in order (the table is in
    :mod:`kexport.formats.onnx._export`); calling one returns an
    :class:`Attempt`. A strategy refuses a model it cannot be trusted with
    by raising :class:`NotTraceable` from :meth:`capture`; any other error is
    a real failure and propagates.
    """

    #: How the verbose output names this strategy's graph ("not using ...").
    description: str = "the converter's graph"
    #: The route recorded in the graph's metadata.
    route: str = ""
    #: How the graph's node names carry the Keras layers they came from
    #: (:data:`kexport.artifact.exclusion.NAMINGS`; ``None``: they do not),
    #: for ``quantization_exclude``.
    naming: str | None = None

    @abc.abstractmethod
    def capture(self, model: Any, signature: list[Any], opset: int) -> RawGraph:
        """Convert ``model(..., training=False)`` on ``signature`` at ``opset``.

        Raises:
            NotTraceable: this strategy refuses the model.
        """

    def __call__(self, model: Any, signature: list[Any], opset: int) -> Attempt:
        """:meth:`capture`, with a refusal held in the result instead of raised."""
        try:
            return Attempt(self, graph=self.capture(model, signature, opset))
        except (NotTraceable, CaptureError) as e:
            # a converter that fails on this model is a refusal too: the next
            # strategy, else the next route (re-host), may deliver
            return Attempt(self, refused=e)


def _step_error(cls: type[KexportError], step: str, route: str, cause: BaseException,
                layer: str | None = None, next_steps: str = "") -> KexportError:
    where = f" in Keras layer '{layer}'" if layer else ""
    text = (f"{step} (route: {route}) failed{where}: {type(cause).__name__}: "
            f"{str(cause).strip()[:1500]}")
    if next_steps:
        text += f"\nNext steps: {next_steps}"
    return cls(text)


def _guess_layer(model: Any, cause: BaseException) -> str | None:
    """The name of a layer of ``model`` that the error text mentions, if any."""
    text = str(cause)
    try:
        layers = list(model._flatten_layers(include_self=False))
    except Exception:
        return None
    best = None
    for layer in layers:
        name = getattr(layer, "name", "")
        if name and (f"/{name}/" in text or f"'{name}'" in text or f"{name}_" in text
                     or f" {name}" in text) and (best is None or len(name) > len(best)):
            best = name
    return best


def _spec_json(specs: Sequence[Spec], names: Sequence[str]) -> str:
    return json.dumps([dict(s.to_json(), name=n) for s, n in zip(specs, names, strict=False)],
                      separators=(",", ":"))

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

from kexport._inference import inference_fn
from kexport._outcome import Outcome
from kexport.artifact import DEFAULT_ENDPOINT
from kexport.context import ExportContext
from kexport.errors import CaptureError, KexportError
from kexport.formats.onnx._accept import NotTraceable
from kexport.signature import Spec

__all__ = ["ARCHIVE_WEIGHTS",
           "DEFAULT_EXTERNAL_DATA_THRESHOLD", "DEFAULT_OPSET", "INLINE_LIMIT", "Attempt",
           "RawGraph", "Source", "Strategy", "TORCH_ENDPOINT_ATTRIBUTE"]

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


@dataclass(frozen=True)
class Source:
    """One endpoint to convert, as every strategy reads it.

    A single-model export is one :meth:`of` the model (the default endpoint,
    ``model(..., training=False)``); an ``ExportArchive`` gives one per
    endpoint.

    Attributes:
        name: the endpoint's name.
        call: the endpoint's function on structured inputs (the signature's
            structure), in inference mode.
        signature: one spec structure per positional argument of ``call``.
        model: the Keras layer or model ``call`` runs (output names, layer
            names in errors, large weights lifted); ``None`` when unknown.
        variables: ``(trainable, non-trainable)`` Keras variables ``call`` reads
            (a live reference runs it on their values, statelessly).
        traced: the endpoint as the archive's capture traced it (a
            ``tf.function``; the TensorFlow strategy converts it as it is).
        in_archive: an ``ExportArchive``'s endpoint (recorded in the route).
        weight_bytes: the bytes of every weight the endpoint can reach
            (tf2onnx's large-model mode above 1 GiB).
    """

    name: str
    call: Callable[..., Any]
    signature: list[Any]
    model: Any | None = None
    variables: tuple[list[Any], list[Any]] = ([], [])
    traced: Any | None = None
    in_archive: bool = False
    weight_bytes: int | None = None

    @classmethod
    def of(cls, model: Any, signature: list[Any], name: str = DEFAULT_ENDPOINT) -> Source:
        """The default endpoint of ``model``: ``model(*inputs, training=False)``."""
        return cls(name, inference_fn(model), signature, model,
                   (list(model.trainable_variables), list(model.non_trainable_variables)))


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


class Attempt(Outcome["RawGraph"]):
    """What one strategy gave: its graph, or the reason it refused the model; the
    :class:`~kexport._outcome.Outcome` of a strategy, as a route's is of a route.

    Attributes:
        strategy: the strategy that ran (:attr:`Outcome.by`).
        graph: the captured graph (:attr:`Outcome.value`; ``None`` once
            refused, or once the finishing step took it).
        refused: why this strategy's graph is not used (``NotTraceable``, or a
            ``CaptureError`` the converter raised); the export moves on to the
            next strategy (or raises this from the last).
    """

    def __init__(self, strategy: Strategy, graph: RawGraph | None = None,
                 refused: Exception | None = None) -> None:
        super().__init__(strategy, graph, refused)

    @property
    def strategy(self) -> Strategy:
        return self.by

    @property
    def graph(self) -> RawGraph | None:
        return self.value

    @graph.setter
    def graph(self, graph: RawGraph | None) -> None:
        self.value = graph


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
    def capture(self, source: Source, opset: int, context: ExportContext) -> RawGraph:
        """Convert the endpoint ``source`` at ``opset`` (``context``: the export's,
        whose sample policy a graph's acceptance draws its inputs under).

        Raises:
            NotTraceable: this strategy refuses the endpoint.
        """

    def route_for(self, source: Source) -> str:
        """The route recorded for ``source``'s graph (an archive's says so)."""
        if not source.in_archive:
            return self.route
        backend, _, how = self.route.partition(": ")
        return f"{backend}: ExportArchive {how}"

    def __call__(self, source: Source, opset: int, context: ExportContext) -> Attempt:
        """:meth:`capture`, with a refusal held in the result instead of raised."""
        try:
            return Attempt(self, graph=self.capture(source, opset, context))
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

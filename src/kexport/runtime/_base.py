"""The one interface every artifact runtime implements: :class:`Artifact`.

A format's runtime module (``kexport/runtime/<format>.py``) subclasses
:class:`Artifact`, fills :attr:`Artifact.endpoints` and implements
:meth:`Artifact._run` on its own runtime (TensorFlow, ONNX Runtime, ...).
Everything users see in common — input normalisation and checking, the
default endpoint, file sizes, the stored verification report — lives here so
that each format module stays small.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kexport.artifact import artifact_files
from kexport.errors import SignatureError, UnsupportedRouteError, describe
from kexport.generation import GenerativeSpec
from kexport.generation import generate as _generate

__all__ = ["Artifact", "EndpointInfo", "TensorInfo", "feeds_for", "format_shape"]


def format_shape(shape: Sequence[int | str | None]) -> str:
    """``(None, 3)`` -> ``'(None, 3)'``; symbolic dims print by name."""
    dims = ["None" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one endpoint input or output.

    Attributes:
        name: the tensor's name in the artifact (the Keras input/output name).
        shape: one entry per axis; ``None`` for a dynamic dimension.
        dtype: a NumPy dtype name (``"float32"``), or ``"string"``.
        symbols: the symbol of each dynamic axis when the artifact records
            them (``None`` at static axes), else ``None``.
        bounds: the largest size of each dynamic axis when recorded, else ``None``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    symbols: tuple[str | None, ...] | None = None
    bounds: tuple[int | None, ...] | None = None

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        """Positions of the dynamic dimensions."""
        return tuple(i for i, d in enumerate(self.shape) if d is None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description."""
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape),
                               "dtype": self.dtype}
        if self.symbols is not None:
            out["symbols"] = list(self.symbols)
        if self.bounds is not None:
            out["bounds"] = list(self.bounds)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorInfo:
        """Inverse of :meth:`to_json`; a manifest entry (symbols and bounds optional)."""
        symbols, bounds = data.get("symbols"), data.get("bounds")
        return cls(data["name"], tuple(data["shape"]), data["dtype"],
                   None if symbols is None else tuple(symbols),
                   None if bounds is None else tuple(bounds))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{format_shape(self.shape)}"


@dataclass(frozen=True)
class EndpointInfo:
    """The inputs and outputs of one endpoint, in the artifact's flat order.

    Attributes:
        name: the endpoint's name.
        inputs: one :class:`TensorInfo` per flat input.
        outputs: one :class:`TensorInfo` per flat output.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs, in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in order."""
        return [t.name for t in self.outputs]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description."""
        return {"inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> EndpointInfo:
        """Inverse of :meth:`to_json`."""
        def infos(items: list[dict[str, Any]]) -> tuple[TensorInfo, ...]:
            return tuple(TensorInfo.from_json(t) for t in items)

        return cls(name, infos(data["inputs"]), infos(data["outputs"]))


@dataclass
class Artifact(abc.ABC):
    """An exported artifact opened with its own runtime.

    Open one with :func:`kexport.load`. Calling the artifact runs its default
    endpoint; :meth:`run` runs any endpoint by name. Inputs are NumPy arrays
    given positionally, as a list, or as a dict keyed by input name; outputs
    come back as a dict keyed by output name.

    Example:

    ```python
    artifact = kexport.load("out/model")
    print(artifact.format, artifact.endpoints)
    probs = artifact(x)["probs"]
    outputs = artifact.run("serve", {"features": x})
    ```

    Attributes:
        path: the artifact's path as the caller gave it.
        format: the format name (``"tf_saved_model"``, ``"onnx"``, ...).
        endpoints: endpoint name -> :class:`EndpointInfo`, in artifact order.
        default_endpoint: the endpoint ``__call__`` runs.
        metadata: what the artifact says about itself (producer, versions,
            backend, ...); empty for artifacts kexport did not write.
        precision: the precision the runtime computes in, as the runtime
            reports it after compiling (``"float32"`` unless asked otherwise
            with ``kexport.load(path, precision=...)``).
        thread_safe: whether several threads may call :meth:`run` at once
            (ONNX Runtime sessions and TensorFlow functions are; the LiteRT
            interpreter, OpenVINO's compiled-model call and torch's process-wide
            matmul precision are not). ``kexport serve`` serialises the calls of
            artifacts that are not.
    """

    thread_safe: ClassVar[bool] = False
    path: str
    format: str = ""
    endpoints: dict[str, EndpointInfo] = field(default_factory=dict)
    default_endpoint: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"

    # -- what each format implements -----------------------------------------
    @abc.abstractmethod
    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run ``endpoint`` on checked NumPy ``feeds``; return outputs by name."""

    @property
    def verification(self) -> dict[str, Any] | None:
        """The verification report stored in the artifact, or ``None``."""
        return None

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """Operator type -> count for each endpoint (graph formats), else ``None``."""
        return None

    # -- common behaviour -----------------------------------------------------
    @property
    def files(self) -> dict[str, int]:
        """Relative file name -> size in bytes of every file of the artifact."""
        p = Path(self.path)
        root = p if p.is_dir() else p.parent
        return {f.relative_to(root).as_posix(): f.stat().st_size
                for f in artifact_files(p, self.format)}

    @property
    def size(self) -> int:
        """Total size in bytes."""
        return sum(self.files.values())

    def __call__(self, *inputs: Any, **named: Any) -> dict[str, Any]:
        """Run the default endpoint; see :meth:`run` for the accepted inputs."""
        if named and inputs:
            raise SignatureError(
                "Expected inputs either positionally or by keyword, not both. "
                f"Received: {len(inputs)} positional and keywords {sorted(named)}"
            )
        if named:
            return self.run(self.default_endpoint, named)
        if len(inputs) == 1:
            return self.run(self.default_endpoint, inputs[0])
        return self.run(self.default_endpoint, list(inputs))

    def run(self, endpoint: str, inputs: Any) -> dict[str, Any]:
        """Run ``endpoint`` on NumPy inputs.

        Args:
            endpoint: an endpoint name (see :attr:`endpoints`).
            inputs: one array (single-input endpoints), a list/tuple with one
                array per input in order, or a dict keyed by input name.

        Returns:
            The outputs as NumPy arrays, keyed by output name, in order.

        Raises:
            SignatureError: unknown endpoint, or inputs whose names, count,
                rank, static dimensions or dtype do not fit.
        """
        info = self._endpoint(endpoint)
        feeds = self._feeds(info, inputs)
        return self._run(info, feeds)

    def generate(self, prompt_ids: Any, *, max_new_tokens: int = 16,
                 stop_token_ids: Sequence[int] | None = None, sampler: str = "greedy",
                 k: int = 5, seed: int | None = None,
                 on_token: Callable[[int, int], None] | None = None) -> list[Any]:
        """Generate token ids from prompts with the artifact's prefill/decode endpoints.

        For artifacts exported with ``task="generate"``; greedy generation gives
        ``lm.generate()``'s tokens (see docs/generation.md).

        Args:
            prompt_ids: one prompt (a list of token ids) or a list of prompts
                of any lengths.
            max_new_tokens: tokens generated after each prompt, at most.
            stop_token_ids: ids that end a row (kept in its output).
            sampler: ``"greedy"`` or ``"top_k"`` (``k`` candidates, ``seed``).
            on_token: called as ``on_token(row, token_id)`` for each new token
                as soon as it is chosen (to stream them).

        Returns:
            One int32 array per prompt: the prompt followed by its new tokens.

        Example:

        ```python
        rows = kexport.load("out/gpt2").generate([[5, 9, 2], [7]], max_new_tokens=8)
        ```

        Raises:
            UnsupportedRouteError: the artifact has no generative endpoints.
            SignatureError: prompts, ``max_new_tokens`` or ``sampler`` that do not fit.
        """
        spec = GenerativeSpec.of_metadata(self.metadata, os.fspath(self.path))
        return _generate(spec, self.run, prompt_ids, max_new_tokens=max_new_tokens,
                         stop_token_ids=stop_token_ids, sampler=sampler, k=k, seed=seed,
                         run_with_state=self.run_with_state, on_token=on_token)

    def run_with_state(self, endpoint: str, inputs: dict[str, Any],
                       states: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a stateful endpoint once from ``states`` (name -> array; ``None``: the
        variables' initial values); return its outputs and the variables after.

        Raises:
            UnsupportedRouteError: the format's runtime keeps no state.
        """
        raise UnsupportedRouteError(
            f"Expected a stateful artifact (OpenVINO). Received: a {self.format} artifact, "
            "whose endpoints keep no state.")

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: format, endpoints, files, metadata, report."""
        return {
            "format": self.format,
            "precision": self.precision,
            "default_endpoint": self.default_endpoint,
            "endpoints": {n: e.to_json() for n, e in self.endpoints.items()},
            "files": self.files,
            "size": self.size,
            "metadata": self.metadata,
            "verification": self.verification,
            "op_counts": self.op_counts(),
        }

    def __repr__(self) -> str:
        return (f"<kexport.Artifact format={self.format!r} precision={self.precision!r} "
                f"endpoints={list(self.endpoints)} path={os.fspath(self.path)!r}>")

    # -- helpers --------------------------------------------------------------
    def _endpoint(self, name: Any) -> EndpointInfo:
        if not isinstance(name, str) or name not in self.endpoints:
            raise SignatureError(
                f"Expected `endpoint` to be one of {list(self.endpoints)}. "
                f"Received: {describe(name)}"
            )
        return self.endpoints[name]

    def _feeds(self, info: EndpointInfo, inputs: Any) -> dict[str, Any]:
        return feeds_for(info, inputs)


def feeds_for(info: EndpointInfo, inputs: Any) -> dict[str, Any]:
    """Check ``inputs`` against ``info``; return NumPy arrays keyed by input name.

    Args:
        info: the endpoint.
        inputs: one array, a list/tuple in input order, or a dict by name.

    Raises:
        SignatureError: wrong names, count, rank, static dims or dtype.
    """
    import numpy as np

    names = info.input_names
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise SignatureError(
                f"Endpoint '{info.name}': expected inputs named {names}. "
                f"Received: {sorted(inputs)} (missing {missing}, unknown {unknown})"
            )
        values = [inputs[n] for n in names]
    elif isinstance(inputs, (list, tuple)):
        values = list(inputs)
    else:
        values = [inputs]
    if len(values) != len(names):
        raise SignatureError(
            f"Endpoint '{info.name}': expected {len(names)} input(s) {names}. "
            f"Received: {len(values)} value(s)"
        )
    feeds = {}
    for spec, value in zip(info.inputs, values, strict=True):
        feeds[spec.name] = _check_array(info.name, spec, np.asarray(value))
    return feeds


def _check_array(endpoint: str, spec: TensorInfo, array: Any) -> Any:
    import numpy as np

    where = f"Endpoint '{endpoint}', input '{spec.name}'"
    if array.ndim != len(spec.shape):
        raise SignatureError(
            f"{where}: expected rank {len(spec.shape)} with shape "
            f"{format_shape(spec.shape)}. Received: shape {tuple(array.shape)}"
        )
    for want, got in zip(spec.shape, array.shape, strict=True):
        if want is not None and want != got:
            raise SignatureError(
                f"{where}: expected shape {format_shape(spec.shape)}. Received: "
                f"shape {tuple(array.shape)}"
            )
    if spec.dtype == "string":
        if array.dtype.kind not in "OSU":
            raise SignatureError(
                f"{where}: expected strings. Received: dtype {array.dtype.name}")
        return _as_text(where, array)
    want = np.dtype(spec.dtype)
    if array.dtype == want:
        return array
    safe = np.can_cast(array.dtype, want, casting="same_kind")
    if not safe or (array.dtype.kind == "f" and want.kind in "iub"):
        raise SignatureError(
            f"{where}: expected dtype {spec.dtype}. Received: dtype {array.dtype.name}"
        )
    return array.astype(want)


def _as_text(where: str, array: Any) -> Any:
    """A string input as an object array of Python ``str`` (``bytes`` decoded
    as UTF-8), which every runtime takes."""
    import numpy as np

    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SignatureError(f"{where}: expected UTF-8 text. Received bytes that are "
                                     f"not UTF-8: {value[:40]!r}") from e
        elif not isinstance(value, str):
            raise SignatureError(f"{where}: expected str or bytes values. Received: "
                                 f"{type(value).__name__}")
        flat[i] = value
    return out

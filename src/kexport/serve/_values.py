"""Request values -> NumPy arrays checked against an endpoint; arrays -> JSON.

Shared by both protocols :mod:`kexport.serve` speaks (the Open Inference
Protocol and TF-Serving's REST API). Every refusal is a :class:`BadRequest`
whose message names what the endpoint expects and what the request holds;
the app answers it with HTTP 400 (or the status it carries).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kexport.runtime import EndpointInfo, TensorInfo

__all__ = ["BadRequest", "array_from_json", "check_shape", "check_symbols", "json_values",
           "numpy_dtype", "scrub"]


class BadRequest(Exception):
    """A request the server refuses; ``status`` is the HTTP status (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def numpy_dtype(name: str) -> Any:
    """The NumPy dtype of a :class:`TensorInfo` dtype name (``"string"`` -> object)."""
    import numpy as np

    if name == "string":
        return np.dtype(object)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def show_shape(shape: Sequence[int | None]) -> str:
    """``(None, 64)`` -> ``'[-1, 64]'``, the way both protocols print shapes."""
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def check_shape(where: str, spec: TensorInfo, shape: Sequence[int]) -> None:
    """Refuse ``shape`` unless it has ``spec``'s rank and static dimensions."""
    if len(shape) != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, shape, strict=False)):
        raise BadRequest(f"{where}: expected shape {show_shape(spec.shape)} (-1: any size). "
                         f"Received: shape {list(shape)}")


def check_symbols(endpoint: EndpointInfo, shapes: Mapping[str, Sequence[int]]) -> None:
    """Dynamic axes that share a symbol in the artifact must have one size in the request."""
    seen: dict[str, tuple[str, int, int]] = {}
    for spec in endpoint.inputs:
        if spec.symbols is None or spec.name not in shapes:
            continue
        for axis, symbol in enumerate(spec.symbols):
            if symbol is None or axis >= len(shapes[spec.name]):
                continue
            size = shapes[spec.name][axis]
            if symbol in seen and seen[symbol][2] != size:
                other, other_axis, other_size = seen[symbol]
                raise BadRequest(
                    f"Inputs '{other}' (axis {other_axis}) and '{spec.name}' (axis {axis}) share "
                    f"the dimension '{symbol}': expected equal sizes. Received: {other_size} "
                    f"and {size}")
            seen.setdefault(symbol, (spec.name, axis, size))


def _decode_b64(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise BadRequest("Expected {\"b64\": <base64 text>}. Received: text that is "
                                 "not base64") from None
        return value
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


_KIND = {"f": "floating-point numbers", "i": "integers", "u": "non-negative integers",
         "b": "booleans (true/false)", "O": "strings", "U": "strings", "S": "strings"}


def array_from_json(where: str, spec: TensorInfo, values: Any, datatype: str | None = None) -> Any:
    """JSON ``values`` (nested lists or one scalar) -> an array of ``spec``'s dtype.

    Numbers are never converted across kinds that lose information: floats for
    an integer input, numbers for a boolean or string input, integers out of
    the input's range are refused. Strings may be given as ``{"b64": ...}``.
    """
    import numpy as np

    want = numpy_dtype(spec.dtype)
    named = datatype or spec.dtype
    if want.kind == "O":
        values = _decode_b64(values)
    try:
        array = np.asarray(values)
    except ValueError as e:  # ragged nested lists
        raise BadRequest(f"{where}: expected a rectangular array of {_KIND[want.kind]}. "
                         f"Received: nested lists of uneven lengths ({e})") from None
    got = array.dtype.kind
    if array.size == 0:
        return array.astype(want)
    if want.kind == "O":
        if got not in "US" and not (got == "O" and all(isinstance(v, (str, bytes))
                                                        for v in array.ravel())):
            raise BadRequest(f"{where}: expected strings ({named}). Received: "
                             f"{_received(array)}")
        return array.astype(object)
    accepted = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}[want.kind]
    if got not in accepted:
        raise BadRequest(f"{where}: expected {_KIND[want.kind]} ({named}). Received: "
                         f"{_received(array)}")
    if want.kind in "iu":
        info = np.iinfo(want)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise BadRequest(f"{where}: expected {named} values in [{info.min}, {info.max}]. "
                             f"Received: values from {low} to {high}")
    return array.astype(want)


def _received(array: Any) -> str:
    if array.dtype.kind == "O":
        kinds = sorted({type(v).__name__ for v in array.ravel()})
        return f"values of types {kinds}"
    return f"{_KIND.get(array.dtype.kind, array.dtype.name)}, e.g. {array.ravel()[0].item()!r}"


def json_values(array: Any, b64: bool = False) -> Any:
    """An output array as JSON lists (row-major, nested); bytes as text or ``{"b64": ...}``."""
    if array.dtype.kind in "OSU":
        def text(v: Any) -> Any:
            if isinstance(v, bytes):
                if not b64:
                    try:
                        return v.decode("utf-8")
                    except UnicodeDecodeError:
                        pass
                return {"b64": base64.b64encode(v).decode("ascii")}
            return str(v)
        flat = [text(v) for v in array.ravel().tolist()]
        import numpy as np

        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.ndim \
            else flat[0]
    if array.dtype.name == "bfloat16":
        array = array.astype("float32")
    return array.tolist()


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:,;()\[\]]+){2,}[/\\]?")


def scrub(message: str) -> str:
    """The first line of a runtime's message, local file paths replaced by ``<path>``."""
    first = (message.strip().splitlines() or [""])[0]
    return _PATH.sub("<path>", first)[:500]

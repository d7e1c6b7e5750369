"""The sample policy of one model, read from the model once at export.

:func:`policy_for` reads, from the model and its signature, what check
inputs must respect (:class:`~kexport.check.samples.SamplePolicy`): which
integer inputs are ids and below which bound (the ``input_dim`` of the
``Embedding``, or any layer with an ``input_dim``, that consumes them), and
which inputs are masks. Nothing here branches on a model class:

- a Functional model: the graph is walked from each integer input to the
  layers that consume it; the first layer on each path that has an
  ``input_dim`` (or holds layers that have one) bounds the ids (the smallest
  bound over the paths); a nested Functional model (a backbone inside a task
  model) is walked from its own matching input; an input that reaches none
  keeps the default policy;
- any other model: the smallest ``input_dim`` among all its layers, a safe
  bound for every integer input that is not a mask;
- a float input of a Functional model that every consumer reads through a
  ``Rescaling`` layer (directly, or as the first layer of a nested model)
  takes the values that layer maps onto ``[0, 1]`` (``offset >= 0``) or
  ``[-1, 1]`` (``offset < 0``): pixels ``[0, 255]`` for ``Rescaling(1/255)``
  and for ``Rescaling(1/127.5, offset=-1)``. Standard-normal "images" drive
  such a model far outside what it was built for, where float32 rounding is
  amplified and two correct artifacts disagree.

:func:`flat_sample_data` checks user sample data against the signature and
flattens it (expected vs received in every error, before anything is
written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kexport.check.samples import SamplePolicy, TensorSpec, is_mask_name
from kexport.errors import SampleDataError, describe
from kexport.signature import flat_names, flatten

__all__ = ["flat_sample_data", "policy_for"]


def _input_dim(layer: Any) -> int | None:
    value = getattr(layer, "input_dim", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _smallest_input_dim(layer: Any) -> int | None:
    """The smallest ``input_dim`` of ``layer`` and the layers it holds."""
    dims = []
    walk = getattr(layer, "_flatten_layers", None)
    for sub in (walk(include_self=True) if walk else [layer]):
        d = _input_dim(sub)
        if d is not None:
            dims.append(d)
    return min(dims) if dims else None


def _consumers(model: Any) -> dict[int, list[tuple[Any, int, int, list[Any]]]]:
    """id(tensor) -> [(operation, the tensor's flat position among the node's
    inputs, their count, the node's output tensors)] over the Functional graph."""
    out: dict[int, list[tuple[Any, int, int, list[Any]]]] = {}
    for op in getattr(model, "operations", []):
        for node in getattr(op, "_inbound_nodes", []):
            inputs = flatten(list(getattr(node, "input_tensors", [])))
            outputs = list(getattr(node, "output_tensors", []))
            for j, t in enumerate(inputs):
                out.setdefault(id(t), []).append((op, j, len(inputs), outputs))
    return out


def _graph_bound(tensor: Any, model: Any) -> int | None:
    """The smallest ``input_dim`` first met on each path from ``tensor`` in
    ``model``'s graph; a nested Functional model is walked from its own input."""
    consumers = _consumers(model)
    bounds, seen, todo = [], set(), [tensor]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for op, position, count, outputs in consumers.get(id(t), []):
            nested = _functional_inputs(op, count) if op is not model else None
            bound = (_graph_bound(nested[position], op) if nested is not None
                     else _smallest_input_dim(op))
            if bound is not None:
                bounds.append(bound)
            else:
                todo.extend(flatten(outputs))
    return min(bounds) if bounds else None


def policy_for(model: Any, signature: list[Any], sample_data: Any | None = None
               ) -> SamplePolicy:
    """The check-input policy of ``model`` called with ``signature``.

    Args:
        model: the Keras model or layer being exported.
        signature: its normalised input signature.
        sample_data: user sample data (see :func:`flat_sample_data`), or ``None``.

    Raises:
        SampleDataError: ``sample_data`` does not fit the signature.
    """
    specs = flatten(signature)
    names = flat_names(signature)
    data = None if sample_data is None else flat_sample_data(sample_data, specs, names)
    masks = tuple(n for n, s in zip(names, specs, strict=True)
                  if s.dtype == "bool" or (_is_int(s.dtype) and is_mask_name(n)))
    ids_inputs = [(i, n) for i, (n, s) in enumerate(zip(names, specs, strict=True))
                  if _is_int(s.dtype) and n not in masks]
    ids: dict[str, int] = {}
    if ids_inputs:
        functional = _functional_inputs(model, len(specs))
        fallback = _smallest_input_dim(model) if functional is None else None
        for i, n in ids_inputs:
            bound = (_graph_bound(functional[i], model) if functional is not None
                     else fallback)
            if bound is not None:
                ids[n] = bound
    ranges: dict[str, tuple[float, float]] = {}
    floats = [(i, n) for i, (n, s) in enumerate(zip(names, specs, strict=True))
              if _is_float(s.dtype)]
    functional = _functional_inputs(model, len(specs)) if floats else None
    for i, n in floats if functional is not None else ():
        span = _graph_range(functional[i], model)
        if span is not None:
            ranges[n] = span
    strings = [(i, n) for i, (n, s) in enumerate(zip(names, specs, strict=True))
               if s.dtype == "string"]
    functional = _functional_inputs(model, len(specs)) if strings else None
    texts = {n: found for i, n in strings
             if (found := _text_source(model, functional[i] if functional else None))}
    return SamplePolicy(ids=ids, masks=masks, names=tuple(names), data=data, ranges=ranges,
                        texts=texts)


_VOCABULARY_WORDS = 256  # at most this many words of a vocabulary are recorded


def _vocabulary(layer: Any) -> tuple[tuple[str, ...], bool] | None:
    """The words a ``TextVectorization``/``StringLookup`` knows (special tokens
    left out) and whether it splits its input; ``None`` for another layer."""
    get = getattr(layer, "get_vocabulary", None)
    if get is None or type(layer).__name__ not in ("TextVectorization", "StringLookup"):
        return None
    try:
        words = get(include_special_tokens=False)
    except Exception:
        return None
    words = [w.decode("utf-8", "replace") if isinstance(w, bytes) else str(w) for w in words]
    split = type(layer).__name__ == "TextVectorization" and getattr(layer, "_split", None) \
        is not None
    return tuple(w for w in words if w)[:_VOCABULARY_WORDS], split


def _text_source(model: Any, tensor: Any | None) -> tuple[tuple[str, ...], bool] | None:
    """The vocabulary of the lookup layer that reads a string input: the first
    one on its paths in a Functional model (``tensor`` is the input), else the
    first one in the model."""
    if tensor is None:
        walk = getattr(model, "_flatten_layers", None)
        layers = walk(include_self=True) if walk else [model]
        return next((v for v in map(_vocabulary, layers) if v is not None), None)
    consumers = _consumers(model)
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        for op, _, _, outputs in consumers.get(id(t), []):
            found = _vocabulary(op) or (_text_source(op, None) if op is not model else None)
            if found is not None:
                return found
            todo.extend(flatten(outputs))
    return None


def _rescaling_range(layer: Any) -> tuple[float, float] | None:
    """The input range a ``Rescaling`` layer maps onto ``[0, 1]`` (or ``[-1, 1]``
    with a negative offset); ``None`` for another layer or a non-scalar scale."""
    import numpy as np

    if type(layer).__name__ != "Rescaling":
        return None
    try:
        scale, offset = float(np.asarray(layer.scale)), float(np.asarray(layer.offset))
    except (TypeError, ValueError):
        return None
    if scale <= 0 or not np.isfinite(scale) or not np.isfinite(offset):
        return None
    low, high = (-1.0, 1.0) if offset < 0 else (0.0, 1.0)
    return ((low - offset) / scale, (high - offset) / scale)


def _graph_range(tensor: Any, model: Any) -> tuple[float, float] | None:
    """The range of ``tensor`` when every consumer in ``model`` reads it through
    one ``Rescaling`` layer (a nested Functional model: from its own input)."""
    users = _consumers(model).get(id(tensor), [])
    spans = []
    for op, position, count, _ in users:
        inner = getattr(op, "_functional", None) or op  # a built Sequential's graph
        nested = _functional_inputs(inner, count) if op is not model else None
        spans.append(_graph_range(nested[position], inner) if nested is not None
                     else _rescaling_range(op))
    if not spans or any(s is None for s in spans) or len(set(spans)) != 1:
        return None
    return spans[0]


def _is_float(dtype: str) -> bool:
    import numpy as np

    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _is_int(dtype: str) -> bool:
    import numpy as np

    try:
        return np.dtype(dtype).kind in "iu"
    except TypeError:
        return False


def _functional_inputs(model: Any, count: int) -> list[Any] | None:
    """The model's input tensors in the signature's flat order, for a Functional model."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is None or not getattr(model, "operations", None):
        return None
    tensors = flatten(struct if isinstance(struct, (list, tuple, Mapping)) else [struct])
    return tensors if len(tensors) == count else None


def _describe_names(names: Sequence[str]) -> str:
    return "[" + ", ".join(repr(n) for n in names) + "]"


def flat_sample_data(data: Any, specs: Sequence[TensorSpec], names: Sequence[str]
                     ) -> dict[str, Any]:
    """``data`` as ``{flat input name: array}``, checked against ``specs``.

    ``data`` has the model's input structure: one array (a one-input model),
    a tuple/list (nested as the inputs are, or flat in input order), or a
    dict keyed by input name (a ``.npz`` file's content: input names, or
    ``arr_0``, ``arr_1``, ... in input order). Arrays of the same dtype kind
    are cast to the input's dtype (``int64`` ids for an ``int32`` input).

    Raises:
        SampleDataError: wrong names or count, a dtype of another kind, a
            wrong rank, a size that conflicts with a static dimension, or
            inputs with different numbers of rows; the message says what was
            expected and what was received.
    """
    import numpy as np

    names = list(names)
    expected = ", ".join(f"{n}: {tuple(s.shape)} {s.dtype}" for n, s in zip(
        names, specs, strict=True))
    if isinstance(data, Mapping):
        keys = [str(k) for k in data]
        positional = [f"arr_{i}" for i in range(len(names))]
        if sorted(keys) == sorted(names):
            flat = [data[n] for n in names]
        elif sorted(keys) == sorted(positional) and set(keys).isdisjoint(names):
            flat = [data[k] for k in positional]
        else:
            missing = [n for n in names if n not in keys]
            unknown = [k for k in keys if k not in names]
            raise SampleDataError(
                f"Expected sample data keyed by the model's input names "
                f"{_describe_names(names)} (or arr_0..arr_{len(names) - 1} in that order). "
                f"Received keys {_describe_names(keys)}"
                + (f"; missing {_describe_names(missing)}" if missing else "")
                + (f"; unknown {_describe_names(unknown)}" if unknown else "") + ".")
    elif isinstance(data, (list, tuple)):
        flat = flatten(list(data))
    else:
        flat = [data]
    if len(flat) != len(names):
        raise SampleDataError(
            f"Expected sample data for {len(names)} input(s) ({expected}). "
            f"Received {len(flat)} array(s): {describe(data)}")
    out: dict[str, Any] = {}
    rows: dict[str, int] = {}
    for name, spec, value in zip(names, specs, flat, strict=True):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            try:
                value = np.asarray(value)
            except Exception as e:
                raise SampleDataError(
                    f"Expected an array for input '{name}' ({tuple(spec.shape)} "
                    f"{spec.dtype}). Received: {describe(value)}") from e
        array = np.asarray(value)
        got, want = array.dtype, np.dtype("object" if spec.dtype == "string" else spec.dtype)
        same_kind = (got.kind == want.kind or (got.kind in "iu" and want.kind in "iu")
                     or (want.kind == "O" and got.kind in "OUS"))
        if not same_kind:
            raise SampleDataError(
                f"Expected sample data for input '{name}' of dtype {spec.dtype}. "
                f"Received dtype {got.name} (shape {tuple(array.shape)}).")
        if array.ndim != len(spec.shape):
            raise SampleDataError(
                f"Expected sample data for input '{name}' of rank {len(spec.shape)} "
                f"(shape {tuple(spec.shape)}). Received rank {array.ndim} "
                f"(shape {tuple(array.shape)}).")
        for axis, (d, n) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if d is not None and d != n:
                raise SampleDataError(
                    f"Expected sample data for input '{name}' with size {d} on axis {axis} "
                    f"(shape {tuple(spec.shape)}). Received shape {tuple(array.shape)}.")
        if array.ndim and spec.shape[0] is None:
            if len(array) == 0:
                raise SampleDataError(
                    f"Expected at least one row of sample data for input '{name}'. "
                    f"Received shape {tuple(array.shape)}.")
            rows[name] = len(array)
        out[name] = array if want.kind == "O" else array.astype(want, copy=False)
    if len(set(rows.values())) > 1:
        raise SampleDataError(
            "Expected every input of the sample data to have the same number of rows "
            f"(axis 0, the batch). Received: {rows}")
    return out

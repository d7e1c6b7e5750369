"""The one sample generator: seeded random inputs for a list of input specs.

Policy (every check uses it: :func:`kexport.verify`, the re-host check, the
ONNX acceptance of fast converters):

- floats: standard normal, or uniform over the range a ``Rescaling`` layer
  that reads the input declares (:class:`SamplePolicy` ``ranges``: an image
  model that rescales pixels by ``1/255`` takes ``[0, 255]``);
- integer ids: uniform over ``[0, input_dim)`` for an input the model feeds
  to an ``Embedding`` (any layer with ``input_dim``), as a
  :class:`SamplePolicy` read from the model at export says
  (:mod:`kexport.check.policy`);
- masks (booleans, or integer inputs whose name says ``mask``): a kept
  prefix and a masked suffix along the last axis, at least one position kept
  per row and real padding in some row, so no attention row is fully masked;
- other integers: ``0`` or ``1``, safe ids for any lookup;
- strings: text from the vocabulary the model's lookup layers hold
  (:class:`SamplePolicy` ``texts``), with out-of-vocabulary words, upper
  case, punctuation, non-ASCII text, empty strings and varied lengths
  (:mod:`kexport.check.text`).

User sample data (a :class:`SamplePolicy` with ``data``) replaces all of it:
each case takes the first ``size`` rows of it (repeated when it has fewer).
The policy is the one given: an export passes its context's
(:attr:`kexport.context.ExportContext.samples`) to every check it runs, so the
re-host check, the ONNX acceptance and ``verify`` all draw the same kind of
inputs; without one, the rules above by dtype and name.

Sizes: a check runs one *case* per size (:data:`CASE_SIZES` unless the
caller gives others). Axis 0, when dynamic, takes the case's size; the other
dynamic axes follow the dimension plan (:mod:`kexport._dims`): axes that
share a symbol share a size, distinct symbols get distinct sizes, never 1 and
within the axis's bound (an unplanned axis ``k`` takes ``size + k + 1``,
:func:`dynamic_size`), so a converter that wrongly unified two dynamic
dimensions, or fixed one to the size it traced with, fails the check. Static
dimensions keep their size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kexport._dims import symbol_at, symbol_sizes
from kexport.check.text import sample_strings
from kexport.errors import SignatureError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CASE_SIZES", "SamplePolicy", "TensorSpec", "dynamic_size", "is_mask_name",
           "recorded_policy", "sample_inputs"]

# The sizes every check runs its cases at: 1 (where exporters that specialise
# size-1 dimensions break) and 3.
CASE_SIZES: tuple[int, ...] = (1, 3)


class TensorSpec(Protocol):
    """What the generator reads of an input: :class:`kexport.signature.Spec`,
    or a runtime's ``TensorInfo``."""

    @property
    def shape(self) -> tuple[int | None, ...]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def name(self) -> str | None: ...


def is_mask_name(name: str | None) -> bool:
    """Whether an integer input's name says it is a padding/attention mask."""
    return bool(name) and "mask" in str(name).lower()


@dataclass(frozen=True)
class SamplePolicy:
    """What the check inputs of one model must respect, read once at export.

    Attributes:
        ids: input name -> exclusive upper bound of its ids (``input_dim`` of
            the ``Embedding`` it feeds).
        masks: names of the inputs that are padding/attention masks.
        names: the flat input names in order (inputs whose spec has no name
            are found by position).
        data: user sample data, flat input name -> array (never recorded).
        endpoint: the endpoint the policy is for (an archive's default), or
            ``None`` for every endpoint; other endpoints get the rules by
            dtype and name.
        ranges: float input name -> ``(low, high)`` of the values the model
            expects (read from a ``Rescaling`` layer on the input).
        texts: string input name -> ``(vocabulary, split)``: the words its
            lookup layer knows, and whether the model splits the string into
            words (else it reads each string as one token).
    """

    ids: Mapping[str, int] = field(default_factory=dict)
    masks: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    data: Mapping[str, Any] | None = None
    endpoint: str | None = None
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    texts: Mapping[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What the manifest records (``"samples"``); the data is not recorded."""
        out: dict[str, Any] = {"ids": {k: int(v) for k, v in sorted(self.ids.items())},
                               "masks": sorted(self.masks), "names": list(self.names)}
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.ranges:
            out["ranges"] = {k: [float(lo), float(hi)] for k, (lo, hi) in
                             sorted(self.ranges.items())}
        if self.texts:
            out["texts"] = {k: {"vocabulary": list(v), "split": bool(split)}
                            for k, (v, split) in sorted(self.texts.items())}
        return out

    def key(self, specs: Sequence[TensorSpec], i: int) -> str | None:
        """The name this policy knows input ``i`` of ``specs`` by."""
        name = specs[i].name
        known = (*self.names, *self.ids, *self.masks, *self.ranges, *self.texts,
                 *(self.data or {}))
        if name is not None and name in known:
            return name
        if self.names and len(self.names) == len(specs):
            return self.names[i]
        if self.data is not None and len(self.data) == len(specs):
            return list(self.data)[i]
        return name

    @classmethod
    def from_json(cls, value: Any) -> SamplePolicy:
        """The policy a manifest recorded (a dict, or its JSON text); anything
        malformed (or absent, in older artifacts) is the default policy."""
        import json

        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError:
                return cls()
        if not isinstance(value, Mapping):
            return cls()
        ids = value.get("ids", {})
        masks = value.get("masks", [])
        ok_ids = isinstance(ids, Mapping) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
            for k, v in ids.items())
        names = value.get("names", [])
        ok_masks = isinstance(masks, list) and all(isinstance(m, str) for m in masks)
        ok_names = isinstance(names, list) and all(isinstance(m, str) for m in names)
        endpoint = value.get("endpoint")
        ranges = value.get("ranges", {})
        ok_ranges = isinstance(ranges, Mapping) and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            and v[0] < v[1] for k, v in ranges.items())
        return cls(dict(ids) if ok_ids else {}, tuple(masks) if ok_masks else (),
                   tuple(names) if ok_names else (),
                   endpoint=endpoint if isinstance(endpoint, str) else None,
                   ranges={k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
                   if ok_ranges else {}, texts=_texts(value.get("texts")))

    def __bool__(self) -> bool:
        return bool(self.ids or self.masks or self.ranges or self.texts
                    or self.data is not None)


def _texts(value: Any) -> dict[str, tuple[tuple[str, ...], bool]]:
    """A manifest's ``texts`` (malformed: none)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for k, v in value.items():
        words = v.get("vocabulary") if isinstance(v, Mapping) else None
        if isinstance(k, str) and isinstance(words, list) and all(
                isinstance(w, str) for w in words):
            out[k] = (tuple(words), bool(v.get("split", True)))
    return out


def recorded_policy(metadata: Mapping[str, Any]) -> SamplePolicy:
    """The policy an artifact's metadata recorded (``samples`` in a manifest,
    ``kexport.samples`` in ONNX metadata), else the default policy."""
    return SamplePolicy.from_json(metadata.get("samples", metadata.get("kexport.samples")))


def _rows(array: Any, size: int, batch_dynamic: bool) -> Any:
    """The case of ``size`` from user data: its first ``size`` rows (repeated
    when it has fewer) where axis 0 is the dynamic batch, else all of it."""
    import numpy as np

    array = np.asarray(array)
    if not batch_dynamic or array.ndim == 0 or len(array) == size:
        return array
    return np.take(array, np.arange(size) % max(len(array), 1), axis=0)


def _mask(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A prefix mask on the last axis: ``1 <= kept <= length`` per row, and
    real padding in some row when the length allows it."""
    import numpy as np

    if not shape or shape[-1] == 0:
        return np.ones(shape, dtype=dtype)
    length = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    kept = rng.integers(1, length + 1, size=rows)
    if length > 1 and rows and bool(np.all(kept == length)):
        kept[rng.integers(rows)] = rng.integers(1, length)
    mask = np.arange(length)[None, :] < kept[:, None]
    return mask.reshape(shape).astype(dtype)


def dynamic_size(axis: int, size: int) -> int:
    """The size of dynamic axis ``axis`` in the case of size ``size``.

    Axis 0 (the batch) is ``size``; axis ``k > 0`` is ``size + k + 1``:
    distinct per axis, so unrelated dynamic axes are not unified.
    """
    return size if axis == 0 else size + axis + 1


def sample_inputs(specs: Sequence[TensorSpec], size: int, seed: int | np.random.Generator,
                  *, sized_as: int | None = None, endpoint: str | None = None,
                  policy: SamplePolicy | None = None, data: bool = True
                  ) -> list[np.ndarray]:
    """Random inputs for ``specs``, one array per spec, in order (see the module doc).

    Args:
        specs: the inputs (shape with ``None`` for dynamic dims, dtype, name).
        size: the case's size: axis 0, when dynamic, has this size.
        seed: an int seed, or a ``numpy.random.Generator`` to draw from.
        sized_as: size the other dynamic axes as for this case size instead
            of ``size`` (cases that share them can be concatenated on axis 0).
        endpoint: the endpoint's name, for the error message.
        policy: id ranges, mask inputs and user data (an export's
            :attr:`~kexport.context.ExportContext.samples`); ``None``: the
            rules by dtype and name.
        data: whether the policy's user data (if any) is used; ``False``
            for a converter's tracing sample, which should not share the
            checked sizes.

    Raises:
        SignatureError: for an input of another non-numeric dtype, which
            cannot be generated: inputs must be given.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    others = size if sized_as is None else sized_as
    sizes = symbol_sizes(specs, others)
    if policy is not None and policy.endpoint and endpoint and endpoint != policy.endpoint:
        policy = None  # the policy of another endpoint of the archive
    out = []
    for i, spec in enumerate(specs):
        key = policy.key(specs, i) if policy is not None else spec.name
        given = (policy.data.get(key or "") if data and policy is not None
                 and policy.data is not None else None)
        if given is not None:
            out.append(_rows(given, size, bool(spec.shape) and spec.shape[0] is None))
            continue
        where = (f"Endpoint '{endpoint}', input" if endpoint else "Input") + \
            (f" '{spec.name}'" if spec.name else f" #{i}")
        shape = tuple((size if axis == 0 else sizes[symbol_at(spec, axis)]) if d is None else d
                      for axis, d in enumerate(spec.shape))
        if spec.dtype == "string":
            vocab, split = policy.texts.get(key or "", ((), True)) if policy is not None \
                else ((), True)
            out.append(sample_strings(rng, shape, vocab, split))
            continue
        kind = np.dtype(spec.dtype).kind
        span = policy.ranges.get(key or "") if policy is not None and kind == "f" else None
        if span is not None:
            out.append(rng.uniform(span[0], span[1], size=shape).astype(spec.dtype))
        elif kind == "f":
            out.append(rng.standard_normal(shape).astype(spec.dtype))
        elif kind == "b" or (kind in "iu" and (
                is_mask_name(key) or (policy is not None and key in policy.masks))):
            out.append(_mask(rng, shape, spec.dtype))
        elif kind in "iu":
            high = policy.ids.get(key or "", 2) if policy is not None else 2
            out.append(rng.integers(0, high, size=shape).astype(spec.dtype))
        else:
            raise SignatureError(
                f"{where} has dtype {spec.dtype}, which cannot be generated at random. "
                "Expected `inputs=` with sample values.")
    return out


"""What a subclassed model's first call left unsaid: integer ids, and axes it does not fix.

Keras records only the *shapes* of a subclassed model's first call
(``_build_shapes_dict``), not their dtypes, and only that one length. A
``TextModel()(np.array([[1, 2, 3, 4, 5]], "int32"))`` would otherwise export
as ``float32 (None, 5)``: a client sending int32 ids gets a type error, and
ids of length 7 are refused. So the live model is probed, eagerly and in
inference mode (a handful of calls on tiny inputs):

- **dtype**: an input whose values reach the indices of an ``Embedding`` or a
  lookup layer (``IntegerLookup``, ``Hashing``, ``CategoryEncoding``) is ids:
  ``int32``. Found by a scoped ``Layer.__call__`` hook recording what those
  layers receive, with the input at two different values;
- **dynamic axes** (of ids and other integer or boolean inputs such as masks; float
  inputs keep their recorded sizes): a non-batch axis is dynamic when the model runs with that
  axis at another size (alone, or together with the other axes of the same
  recorded size: ids and their mask); an axis the model refuses stays static.

Nothing is probed when the model cannot be called on made-up inputs of the
recorded shapes at all: the signature then stays as recorded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from kexport._inference import infer
from kexport._patch import scoped_patch
from kexport.signature._spec import Spec
from kexport.signature._structure import flatten, pack_as

__all__ = ["refine_first_call"]

_PROBE_BATCH = 2
#: how much longer a probed axis is made (a size the recorded call did not use)
_STRETCH = 2


def _index_layers() -> tuple[type, ...]:
    """Layers whose input is indices (looked up in a table, never multiplied)."""
    import keras

    names = ("Embedding", "IntegerLookup", "Hashing", "CategoryEncoding")
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))


def _array(spec: Spec, shape: tuple[int, ...], value: int) -> Any:
    import numpy as np

    return np.full(shape, value, dtype=spec.dtype)


class _Prober:
    """Calls of ``model`` on made-up inputs of the recorded structure."""

    def __init__(self, model: Any, signature: list[Any]) -> None:
        self.model = model
        self.signature = signature
        self.flat: list[Spec] = flatten(signature)
        self.seen: list[Any] = []

    def shapes(self, stretched: Sequence[tuple[int, int]] = ()) -> list[tuple[int, ...]]:
        out = []
        for i, spec in enumerate(self.flat):
            out.append(tuple(
                _PROBE_BATCH if a == 0 else d + _STRETCH * ((i, a) in stretched)  # type: ignore[operator]
                for a, d in enumerate(spec.shape)))
        return out

    def call(self, values: Sequence[int] | None = None,
             stretched: Sequence[tuple[int, int]] = ()) -> bool:
        """Whether the model runs; what its index layers received is in ``seen``."""
        import keras

        values = values or [1] * len(self.flat)
        arrays = [keras.ops.convert_to_tensor(_array(s, shape, v))
                  for s, shape, v in zip(self.flat, self.shapes(stretched), values, strict=True)]
        self.seen = []
        kinds, seen = _index_layers(), self.seen

        def recording(original: Callable[..., Any]) -> Callable[..., Any]:
            def __call__(layer: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(layer, kinds) and args:
                    seen.append(keras.ops.convert_to_numpy(args[0]))
                return original(layer, *args, **kwargs)
            return __call__

        try:
            with warnings.catch_warnings(), scoped_patch(keras.layers.Layer, "__call__",
                                                         recording):
                warnings.simplefilter("ignore")
                infer(self.model, *pack_as(list(self.signature), arrays))
        except Exception:  # any refusal of these inputs is the answer
            return False
        return True


def _ids_inputs(prober: _Prober) -> set[int]:
    """Flat positions of the float inputs whose values reach an index layer."""
    import numpy as np

    if not prober.call():
        return set()
    base = [np.asarray(x) for x in prober.seen]
    if not base:
        return set()
    found = set()
    for i, spec in enumerate(prober.flat):
        if not spec.dtype.startswith("float"):
            continue
        values = [1] * len(prober.flat)
        values[i] = 0
        if prober.call(values) and (len(prober.seen) != len(base) or any(
                a.shape != b.shape or not np.array_equal(a, b)
                for a, b in zip(prober.seen, base))):
            found.add(i)
    return found


def _free_axes(prober: _Prober) -> set[tuple[int, int]]:
    """(flat input, axis) of the static non-batch axes of integer and boolean inputs
    (ids, already ``int32`` here, and masks) the model runs without. Float inputs keep their recorded sizes: an image's spatial axes that a
    model would take at another size are still sized by its kernels (a check drawing
    small sizes would fail on them), so they stay as first called."""
    axes = [(i, a) for i, s in enumerate(prober.flat)
            if not str(s.dtype).startswith(("float", "bfloat"))
            for a, d in enumerate(s.shape) if a > 0 and d is not None]
    if not axes or not prober.call():
        return set()
    free = {f for f in axes if prober.call(stretched=[f])}
    by_size: dict[int, list[tuple[int, int]]] = {}
    for i, a in axes:
        if (i, a) not in free:
            by_size.setdefault(prober.flat[i].shape[a], []).append((i, a))  # type: ignore[arg-type]
    for group in by_size.values():
        if len(group) > 1 and prober.call(stretched=group):
            free.update(group)
    return free


def refine_first_call(model: Any, signature: list[Any]) -> list[Any]:
    """``signature`` (recorded from ``model``'s first call) with ids typed ``int32`` and
    the axes the model does not fix made dynamic (see the module docstring)."""
    flat: list[Spec] = flatten(signature)
    if not flat or any(s.dtype == "string" for s in flat):
        return signature
    prober = _Prober(model, signature)
    ids = _ids_inputs(prober)
    flat = [Spec(s.shape, "int32", s.name) if i in ids else s for i, s in enumerate(flat)]
    prober = _Prober(model, pack_as(list(signature), flat))
    free = _free_axes(prober)
    flat = [Spec(tuple(None if (i, a) in free else d for a, d in enumerate(s.shape)),
                 s.dtype, s.name) for i, s in enumerate(flat)]
    return pack_as(list(signature), flat)

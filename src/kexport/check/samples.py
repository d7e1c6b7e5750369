"""The one sample generator: seeded random inputs for a list of input specs.

Policy (every check uses it: :func:`kexport.verify`, the re-host check, the
ONNX acceptance of fast converters):

- floats: standard normal;
- integers: ``0`` or ``1``, safe ids for any ``Embedding`` or lookup (ids
  drawn from a wider range can be out of vocabulary);
- booleans: fair coins;
- strings: cannot be made up, a :class:`~kexport.errors.SignatureError`
  says that inputs must be given.

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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from kexport._dims import symbol_at, symbol_sizes
from kexport.errors import SignatureError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CASE_SIZES", "TensorSpec", "dynamic_size", "sample_inputs"]

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


def dynamic_size(axis: int, size: int) -> int:
    """The size of dynamic axis ``axis`` in the case of size ``size``.

    Axis 0 (the batch) is ``size``; axis ``k > 0`` is ``size + k + 1``:
    distinct per axis, so unrelated dynamic axes are not unified.
    """
    return size if axis == 0 else size + axis + 1


def sample_inputs(specs: Sequence[TensorSpec], size: int, seed: int | np.random.Generator,
                  *, sized_as: int | None = None, endpoint: str | None = None
                  ) -> list[np.ndarray]:
    """Random inputs for ``specs``, one array per spec, in order (see the module doc).

    Args:
        specs: the inputs (shape with ``None`` for dynamic dims, dtype, name).
        size: the case's size: axis 0, when dynamic, has this size.
        seed: an int seed, or a ``numpy.random.Generator`` to draw from.
        sized_as: size the other dynamic axes as for this case size instead
            of ``size`` (cases that share them can be concatenated on axis 0).
        endpoint: the endpoint's name, for the error message.

    Raises:
        SignatureError: for a string (or other non-numeric) input, which
            cannot be generated: inputs must be given.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    others = size if sized_as is None else sized_as
    sizes = symbol_sizes(specs, others)
    out = []
    for i, spec in enumerate(specs):
        where = (f"Endpoint '{endpoint}', input" if endpoint else "Input") + \
            (f" '{spec.name}'" if spec.name else f" #{i}")
        if spec.dtype == "string":
            raise SignatureError(
                f"{where} takes strings, which cannot be generated at random. "
                "Expected `inputs=` with sample text.")
        shape = tuple((size if axis == 0 else sizes[symbol_at(spec, axis)]) if d is None else d
                      for axis, d in enumerate(spec.shape))
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            out.append(rng.standard_normal(shape).astype(spec.dtype))
        elif kind in "iu":
            out.append(rng.integers(0, 2, size=shape).astype(spec.dtype))
        elif kind == "b":
            out.append(rng.random(shape) < 0.5)
        else:
            raise SignatureError(
                f"{where} has dtype {spec.dtype}, which cannot be generated at random. "
                "Expected `inputs=` with sample values.")
    return out


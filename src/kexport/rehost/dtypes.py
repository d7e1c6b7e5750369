"""A re-hosted program returns the source model's integer and boolean dtypes.

Backends differ in the integer dtype of the same Keras op (``ops.top_k``
indices are int64 on PyTorch, int32 on TensorFlow and JAX), so a model
rebuilt on the host can return other dtypes than the live model. The parent
reads the live outputs' dtypes (:func:`source_dtypes`); the child casts the
host's integer and boolean outputs to them inside the traced function
(:func:`with_output_dtypes`), so the written program itself returns them and
the signature it declares is the live model's. Float outputs are left as the
host computes them (their precision is the route's, and the check judges them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kexport.capture.endpoint import DESCRIBES_AS
from kexport.signature import flatten, pack_as

__all__ = ["source_dtypes", "with_output_dtypes"]


def _exact(dtype: Any) -> bool:
    import numpy as np

    return np.dtype(dtype).kind in "iub"


def source_dtypes(live: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, tuple[str | None, ...]]:
    """Endpoint -> the dtype of each flat live output that is integer or boolean
    (``None`` for the others), from the first case's live arrays; endpoints with
    no such output are left out."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, cases in live.items():
        if not cases:
            continue
        dtypes = tuple(str(a.dtype) if _exact(a.dtype) else None for a in cases[0])
        if any(d is not None for d in dtypes):
            out[name] = dtypes
    return out


def with_output_dtypes(fn: Callable[..., Any], dtypes: Sequence[str | None] | None
                       ) -> Callable[..., Any]:
    """``fn`` with its flat outputs (:func:`kexport.signature.flatten` order) cast to
    ``dtypes``; ``None`` (or no ``dtypes``) leaves an output as it is."""
    wanted = list(dtypes or ())
    if all(d is None for d in wanted):
        return fn

    def cast(*args: Any, **kwargs: Any) -> Any:
        import keras

        outputs = fn(*args, **kwargs)
        flat = flatten(outputs)
        if len(flat) != len(wanted):  # the check names the difference
            return outputs
        return pack_as(outputs, [
            x if d is None or keras.backend.standardize_dtype(x.dtype) == d
            else keras.ops.cast(x, d) for x, d in zip(flat, wanted, strict=True)])

    # described as data as ``fn`` (a capture that records endpoints): the values are the same
    setattr(cast, DESCRIBES_AS, fn)
    return cast

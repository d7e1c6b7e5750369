"""What Keras's PyTorch backend needs while ``torch.export`` traces it.

One workaround, scoped to kexport's own ``torch.export`` calls (the ``.pt2``
writer and the ONNX ``torch.export`` strategy) through :func:`symbolic_sizes`:

- **Symbolic sizes as Python numbers.** Under ``torch.export`` with dynamic
  dimensions, a size read from a tensor (``x.shape[1]``) is a ``torch.SymInt``,
  not an ``int``. Keras resolves the dtype of Python scalars from their type
  (``keras.ops.arange(length)`` asks for ``type(length)``), does not know
  ``SymInt`` and raises ``Invalid dtype: SymInt`` (keras_hub's T5 attention
  computes its relative positions that way). Within the context Keras's dtype
  rules treat ``SymInt``/``SymFloat``/``SymBool`` exactly as ``int``/``float``/
  ``bool`` (same dtype, same weak typing), which is what they stand for; the
  traced program then keeps the size symbolic. Outside the context Keras is
  unchanged. Test: ``tests/test_torch_program.py::test_keras_ops_on_symbolic_sizes``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["symbolic_sizes"]


def _as_python_type(value: Any) -> Any:
    import torch

    return {torch.SymInt: int, torch.SymFloat: float, torch.SymBool: bool}.get(value, value)


@contextlib.contextmanager
def symbolic_sizes() -> Iterator[None]:
    """Keras's dtype rules read torch's symbolic scalars as Python scalars, for one trace."""
    try:
        from keras.src.backend.common import dtypes
    except ImportError:  # Keras moved it: its own behaviour applies
        yield
        return

    def make(original: Any) -> Any:
        def dtype_and_weaktype(value: Any) -> Any:
            return original(_as_python_type(value))
        return dtype_and_weaktype

    def make_map(original: dict[Any, str]) -> dict[Any, str]:
        import torch

        return {**original, torch.SymInt: original[int], torch.SymFloat: original[float],
                torch.SymBool: original[bool]}

    with scoped_patch(dtypes, "_dtype_and_weaktype", make), \
            scoped_patch(dtypes, "PYTHON_DTYPES_MAP", make_map):
        yield

"""Workarounds of Keras's PyTorch backend while a cached call is captured (keras 3.15).

- :func:`traceable_slices`: Keras's torch ``slice`` with a tensor start (the
  position embedding read at ``cache_update_index``) calls ``torch.narrow``,
  whose start becomes an unbacked size ``torch.export`` cannot carry; such
  slices are read with ``index_select`` instead (the same values).
- :func:`onnx_slice_updates`: Keras's torch ``slice_update`` with tensor starts
  stacks int32 and int64 starts; ``torch.onnx`` writes that as a ``Concat`` of
  mixed types, which ONNX Runtime refuses. Inside, an update whose starts are
  zero on every axis but one (the cache write at ``cache_update_index``) is an
  ``index_copy`` along that axis with int64 indices (the same values).

Both are scoped to kexport's capture (:func:`kexport._patch.scoped_patch`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["onnx_slice_updates", "traceable_slices"]


def _traceable_slice(original: Any) -> Any:
    def traced_slice(inputs: Any, start_indices: Any, shape: Any) -> Any:
        import torch

        if not isinstance(start_indices, (list, tuple)) or not any(
                isinstance(s, torch.Tensor) for s in start_indices):
            return original(inputs, start_indices, shape)
        result = torch.as_tensor(inputs)
        for axis, (start, size) in enumerate(zip(start_indices, shape, strict=True)):
            if isinstance(start, int) and start == 0 and size == result.shape[axis]:
                continue
            index = torch.arange(size, device=result.device) + torch.as_tensor(
                start, device=result.device).to(torch.int64)
            result = torch.index_select(result, axis, index)
        return result
    return traced_slice


@contextlib.contextmanager
def traceable_slices() -> Iterator[None]:
    """Keras's torch ``slice`` with tensor starts as ``index_select``, in this scope."""
    from keras.src.backend.torch import core

    with scoped_patch(core, "slice", _traceable_slice):
        yield


def _index_copy_update(original: Any) -> Any:
    def slice_update(inputs: Any, start_indices: Any, updates: Any) -> Any:
        import torch

        if not isinstance(start_indices, (list, tuple)) or not any(
                isinstance(s, torch.Tensor) for s in start_indices):
            return original(inputs, start_indices, updates)
        moving = [a for a, s in enumerate(start_indices)
                  if not (isinstance(s, int) and s == 0)]
        inputs, updates = torch.as_tensor(inputs), torch.as_tensor(updates)
        if len(moving) != 1 or any(updates.shape[a] != inputs.shape[a]
                                   for a in range(inputs.ndim) if a not in moving):
            return original(inputs, start_indices, updates)
        axis = moving[0]
        start = torch.as_tensor(start_indices[axis], device=inputs.device).to(torch.int64)
        index = torch.arange(updates.shape[axis], dtype=torch.int64,
                             device=inputs.device) + start
        return inputs.index_copy(axis, index, updates.to(inputs.dtype))
    return slice_update


@contextlib.contextmanager
def onnx_slice_updates() -> Iterator[None]:
    """Keras's torch ``slice_update`` along one axis as ``index_copy``, in this scope."""
    from keras.src.backend.torch import core

    with scoped_patch(core, "slice_update", _index_copy_update):
        yield

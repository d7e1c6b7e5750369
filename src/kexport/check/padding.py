"""Positions a padding mask marks as padding are not compared.

A sequence model's outputs at padded positions are undefined: nothing reads
them, and the backends compute them differently. keras_hub's Mistral, with a
sliding window, has padded queries that see no key at all; its fused
attention (JAX, PyTorch) averages every value there, its ``Softmax`` path
(TensorFlow) gives zeros, for the same weights. A re-host from JAX or PyTorch
onto TensorFlow was refused for outputs no user reads, while every real
token agreed to 1e-7.

So every check (:func:`kexport.verify`, a re-host's comparison with the live
model, the zoo benchmark) compares a sequence output only where the inputs'
padding mask keeps the position:

- mask inputs are found as the sample policy finds them
  (:func:`kexport.check.samples.is_mask_name`): booleans, or integers whose
  name says ``mask``; of rank 2 (batch, length), with some position padded;
- an output of rank 3 or more whose first two dims are a mask's shape is
  compared where the mask is nonzero (rank-2 outputs are compared whole:
  ``(batch, features)`` may have the length by chance);
- several masks of that shape (encoder and decoder lengths alike): the one
  whose name stem starts the output's name (``decoder_padding_mask`` for
  ``decoder_sequence_output``), else every one of them (a position kept by
  all).

What is left out is counted and reported (``OutputCheck.padded``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kexport.check.samples import is_mask_name

__all__ = ["drop_padded", "kept_positions", "padding_masks"]


def padding_masks(feeds: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of ``feeds`` (``{name: array}``) that are padding masks with
    some position padded, as boolean arrays of shape (batch, length)."""
    import numpy as np

    masks = {}
    for name, value in feeds.items():
        array = np.asarray(value)
        if array.ndim != 2 or not (array.dtype == bool or (
                array.dtype.kind in "iu" and is_mask_name(name))):
            continue
        keep = array != 0
        if not keep.all():
            masks[str(name)] = keep
    return masks


def _stem(name: str) -> str:
    lowered = name.lower()
    for suffix in ("padding_mask", "attention_mask", "mask"):
        if lowered.endswith(suffix):
            return lowered[: -len(suffix)].rstrip("_")
    return ""


def kept_positions(masks: Mapping[str, Any], output: str | None,
                   shape: tuple[int, ...]) -> Any | None:
    """The (batch, length) positions of an output of ``shape`` to compare, or
    ``None`` to compare it whole (no mask applies)."""
    import numpy as np

    if len(shape) < 3:
        return None
    fitting = {n: m for n, m in masks.items() if tuple(m.shape) == tuple(shape[:2])}
    if not fitting:
        return None
    if len(fitting) > 1 and output:
        named = {n: m for n, m in fitting.items()
                 if _stem(n) and str(output).lower().startswith(_stem(n))}
        fitting = named or fitting
    return np.logical_and.reduce(list(fitting.values()))


def drop_padded(expected: Any, received: Any, keep: Any | None) -> tuple[Any, Any, int]:
    """``expected`` and ``received`` at the kept positions only (each kept
    position's features as a row), and how many positions were left out.
    Unchanged when ``keep`` is ``None`` or the shapes differ."""
    import numpy as np

    expected, received = np.asarray(expected), np.asarray(received)
    if keep is None or expected.shape != received.shape:
        return expected, received, 0
    return expected[keep], received[keep], int(keep.size - keep.sum())

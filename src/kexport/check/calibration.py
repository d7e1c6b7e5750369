"""Calibration data for ``quantization="int8"``: the user's batches, checked and flattened.

``calibration_data`` is what a user has at hand: one batch in the model's
input structure (one array, a tuple/list, a dict keyed by input name), an
iterable of such batches (a list, a generator), or a ``tf.data.Dataset``
yielding them (elements ``(x, y)`` or ``(x, y, sample_weight)`` give their
``x``). Every batch is checked against the inputs by the same rule as
``sample_data`` (:func:`kexport.check.policy.flat_sample_data`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kexport.check.policy import flat_sample_data
from kexport.check.samples import TensorSpec
from kexport.errors import QuantizationError, SampleDataError, describe

__all__ = ["calibration_batches", "calibration_rows"]


def _one_batch(item: Any, specs: Sequence[TensorSpec], names: Sequence[str]
               ) -> dict[str, Any]:
    try:
        return flat_sample_data(item, specs, names)
    except SampleDataError as e:
        # not a batch of inputs: a dataset element (x, y) or (x, y, sample_weight)?
        if isinstance(item, tuple) and len(item) in (2, 3):
            try:
                return flat_sample_data(item[0], specs, names)
            except SampleDataError:
                pass
        raise e


def calibration_batches(data: Any, specs: Sequence[TensorSpec], names: Sequence[str]
                        ) -> list[dict[str, Any]]:
    """``data`` as a list of ``{flat input name: array}`` batches.

    One batch in the input structure is read as one batch; anything else
    iterable (a list of batches, a generator, a ``tf.data.Dataset``) as the
    batches it yields.

    Raises:
        QuantizationError: no batch, or a batch that does not fit the inputs
            (names, count, dtype kind, rank, a static size); the message says
            what was expected and what was received.
    """
    try:
        return [flat_sample_data(data, specs, names)]
    except SampleDataError as e:
        first_error: SampleDataError = e
    if isinstance(data, (str, bytes, Mapping)) or hasattr(data, "shape") \
            or not isinstance(data, Iterable):
        raise QuantizationError(f"Expected `calibration_data` to fit the model's inputs: "
                                f"{first_error}") from first_error
    if hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        data = data.as_numpy_iterator()
    batches = []
    for number, item in enumerate(data, start=1):
        try:
            batches.append(_one_batch(item, specs, names))
        except SampleDataError as e:
            raise QuantizationError(
                f"Expected every batch of `calibration_data` to fit the model's inputs; "
                f"batch {number} does not: {e}") from e
    if not batches:
        raise QuantizationError(
            f"Expected `calibration_data` to hold at least one batch. Received: "
            f"{describe(data)}, which yielded none.")
    return batches


def calibration_rows(batches: Sequence[Mapping[str, Any]]) -> int:
    """How many input rows (samples) the batches hold."""
    total = 0
    for batch in batches:
        first = next(iter(batch.values()), None)
        shape = getattr(first, "shape", ())
        total += int(shape[0]) if len(shape) else 1
    return total

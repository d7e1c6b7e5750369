"""Calibration data for ``quantization="int8"``: the user's batches, checked and flattened.

``calibration_data`` is what a user has at hand: one batch in the model's
input structure (one array, a tuple/list, a dict keyed by input name), an
iterable of such batches (a list, a generator), or a ``tf.data.Dataset``
yielding them (elements ``(x, y)`` or ``(x, y, sample_weight)`` give their
``x``). Every batch is checked against the inputs by the same rule as
``sample_data`` (:func:`kexport.check.policy.flat_sample_data`).

The same data is what a quantized artifact is verified on when the user
gives no data of their own (:func:`calibration_sample`): an artifact
calibrated on images in ``[0, 1]`` is meaningless on standard-normal inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from kexport.check.policy import flat_sample_data
from kexport.check.samples import TensorSpec
from kexport.errors import QuantizationError, SampleDataError, describe
from kexport.signature import flatten

__all__ = ["CHECK_ROWS", "EndpointBatches", "calibration_batches", "calibration_by_endpoint", "calibration_rows",
           "calibration_sample"]


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


class EndpointBatches(dict):  # type: ignore[type-arg]
    """Calibration batches already read, by endpoint name:
    ``{endpoint: [{input name: array}, ...]}``. What a re-hosted archive
    carries to the process that writes it (the batches were read against
    each endpoint's inputs there, before the child started);
    :func:`calibration_by_endpoint` takes them as they are."""


def calibration_by_endpoint(endpoints: Iterable[Any], data: Any
                            ) -> dict[str, list[dict[str, Any]]]:
    """Each endpoint's calibration batches (``{input name: array}``), read by
    :func:`calibration_batches` against its inputs before any work; ``{}``
    without data. ``endpoints`` have ``name``, ``signature`` and ``input_names``.
    :class:`EndpointBatches` are taken as they are.

    Raises:
        QuantizationError: data that does not fit an endpoint (named).
    """
    if isinstance(data, EndpointBatches):
        return {e.name: list(data[e.name]) for e in endpoints if e.name in data}
    batches = {}
    for endpoint in endpoints if data is not None else ():
        try:
            batches[endpoint.name] = calibration_batches(
                data, flatten(endpoint.signature), endpoint.input_names)
        except QuantizationError as e:
            raise QuantizationError(f"Endpoint '{endpoint.name}': {e}") from e
    return batches


def calibration_rows(batches: Sequence[Mapping[str, Any]]) -> int:
    """How many input rows (samples) the batches hold."""
    total = 0
    for batch in batches:
        first = next(iter(batch.values()), None)
        shape = getattr(first, "shape", ())
        total += int(shape[0]) if len(shape) else 1
    return total


#: At most this many calibration rows are checked (as ``verify(data=...)`` takes).
CHECK_ROWS = 1024


def calibration_sample(data: Any, specs: Sequence[TensorSpec], names: Sequence[str]
                       ) -> dict[str, Any] | None:
    """The calibration data as one ``{flat input name: array}`` batch of at most
    :data:`CHECK_ROWS` rows, for checking the artifact it calibrated.

    Read like :func:`calibration_batches` (a callable is called for its
    batches, as LiteRT's ``representative_dataset`` may be). ``None`` when
    there is nothing to read again: ``None`` itself, or a one-pass iterator
    (a generator) that the export has consumed.

    Raises:
        QuantizationError: the data does not fit the inputs.
    """
    import numpy as np

    if callable(data):  # a fresh pass at each call
        data = data()
        data = list(data) if isinstance(data, Iterator) else data
    if data is None or isinstance(data, Iterator):
        return None
    batches = calibration_batches(data, specs, names)

    def trailing(batch: Mapping[str, Any]) -> list[tuple[int, ...]]:
        return [tuple(np.shape(batch[n])[1:]) if np.ndim(batch[n]) else () for n in names]

    # batches of other sizes on a dynamic axis (e.g. sequence length) cannot be
    # stacked with the first: they are left out
    alike = [b for b in batches if trailing(b) == trailing(batches[0])]
    if any(np.ndim(alike[0][n]) == 0 for n in names):  # scalar inputs: no batch axis
        return dict(alike[0])
    return {n: np.concatenate([np.asarray(b[n]) for b in alike], axis=0)[:CHECK_ROWS]
            for n in names}

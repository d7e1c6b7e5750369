"""Calling a Keras model or layer in inference mode, whatever its ``call`` takes.

Every default endpoint, every live reference and every trace that kexport
makes runs the model with ``training=False`` (no dropout, no augmentation,
frozen batch-norm statistics). Users write ``call(self, inputs)`` without a
``training`` parameter all the time, so ``training`` must never reach ``call``
as an argument it does not take. Keras's ``Layer.__call__`` does exactly
that: it passes ``training`` on to ``call`` only when ``call`` accepts it,
and in every case records it in the call context that every inner layer
reads (a ``Dropout`` inside a model whose ``call`` has no ``training`` still
runs in inference mode). So the helpers here always go through ``__call__``,
never through ``call`` or ``stateless_call`` (which hand their keyword
arguments to ``call`` unchecked).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["infer", "inference_fn", "stateless_infer", "stateless_run"]


def infer(layer: Any, *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)`` in inference mode (``training=False``).

    ``layer`` is a Keras layer or model; ``training`` reaches its ``call`` only
    when ``call`` takes it, and every inner layer runs in inference mode.
    """
    return layer(*args, training=False, **kwargs)


def inference_fn(layer: Any) -> Callable[..., Any]:
    """``layer`` as a function of its inputs in inference mode (the default endpoint).

    ``functools.partial(layer.__call__, training=False)``: :func:`infer` as a
    value that captures can also record as data (model, ``__call__``,
    ``{"training": False}``) for a re-host.
    """
    return functools.partial(layer.__call__, training=False)


def stateless_run(fn: Callable[..., Any], trainable: Sequence[Any], frozen: Sequence[Any],
                  trainable_values: Sequence[Any], frozen_values: Sequence[Any],
                  *args: Any) -> tuple[Any, list[Any]]:
    """``fn(*args)`` with the Keras variables ``trainable`` and ``frozen`` read as the
    given values: ``(outputs, frozen values after the call)``.

    Nothing is assigned; the non-trainable values the call would have updated
    (seed counters, batch-norm statistics in training) come back instead.
    """
    import keras

    mapping = list(zip(trainable, trainable_values, strict=True)) + list(
        zip(frozen, frozen_values, strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        outputs = fn(*args)
    updated = []
    for v, old in zip(frozen, frozen_values, strict=True):
        new = scope.get_current_value(v)
        updated.append(old if new is None else new)
    return outputs, updated


def stateless_infer(layer: Any, trainable_values: Sequence[Any],
                    non_trainable_values: Sequence[Any], *args: Any) -> tuple[Any, list[Any]]:
    """:func:`infer` on given variable values: ``(outputs, non-trainable values after)``.

    What ``layer.stateless_call(trainable, non_trainable, *args, training=False)``
    means, for every ``call``: the values replace ``layer.trainable_variables``
    and ``layer.non_trainable_variables`` (in that order) for this call only
    (see :func:`stateless_run`).
    """
    return stateless_run(functools.partial(infer, layer), list(layer.trainable_variables),
                         list(layer.non_trainable_variables), trainable_values,
                         non_trainable_values, *args)

"""The check an export runs on its staged artifact before placing it.

:func:`staged_check` builds the :attr:`kexport.context.ExportContext.check` of one
export: :func:`kexport.verify.verify_on` on the staged path with the format's runtime in
this process, judged by the one verdict, the model's state put back afterwards
(docs/verification.md, "What runs by default"); :func:`archive_check` does it for an
``ExportArchive``'s endpoints, each compared with the function it was added with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kexport.check.report import raise_if_failed
from kexport.check.samples import SamplePolicy
from kexport.signature import pack_as
from kexport.verify import verify_on

__all__ = ["archive_check", "staged_check"]


#: The options of :func:`kexport.verify` that the check before placement takes too.
_STAGED_OPTIONS = ("atol", "rtol", "seed", "sizes", "precision", "data", "scores", "inputs")


def staged_check(model: Any, filepath: str | os.PathLike[str], options: Mapping[str, Any],
                 policy: SamplePolicy | None, calibration: Any | None = None,
                 state: Sequence[Any] | None = None) -> Callable[[Path], None]:
    """The check of a staged artifact before it is placed at ``filepath``
    (:attr:`kexport.context.ExportContext.check`): its runtime in this process,
    compared with ``model`` (a Keras model, or live functions by endpoint name)
    on inputs drawn under ``policy``, judged by the one verdict; raises
    :class:`~kexport.errors.VerificationError` when it differs (nothing is placed).
    ``options``: those of :func:`verify` that apply (tolerances, seed, sizes...).

    The export must not change the model: the values of its non-trainable
    variables (``state``; by default the model's: batch-norm statistics,
    random seed states) are put back after the live calls. A model with
    random layers runs each case twice; outputs that differ are compared by
    shape only."""
    import keras

    staged = {k: v for k, v in options.items() if k in _STAGED_OPTIONS}
    staged.setdefault("calibration_data", calibration)
    variables = list(state if state is not None else
                     getattr(model, "non_trainable_variables", []))
    twice = isinstance(model, Mapping) or any(
        "seed_generator" in getattr(v, "path", "") for v in variables)

    def check(path: Path) -> None:
        saved = [keras.ops.convert_to_numpy(v.value) for v in variables]
        try:
            report = verify_on(model, path, store=False, policy=policy, in_process=True,
                               twice=twice, **staged)
        finally:
            for v, value in zip(variables, saved, strict=True):
                v.assign(value)
        raise_if_failed(report, filepath, placed=False)

    return check



def archive_check(described: Mapping[str, tuple[Any, Any]], endpoints: Mapping[str, Any],
                  layers: Sequence[Any], filepath: str | os.PathLike[str],
                  policy: SamplePolicy | None, calibration: Any | None
                  ) -> Callable[[Path], None]:
    """:func:`staged_check` for an archive: each endpoint (``endpoints``, traced) against
    the live function it was added with (``described``: name -> (recipe, function)),
    taking the artifact's flat inputs; the tracked ``layers``' non-trainable variables
    are put back after the live calls."""
    live = {}
    for name, endpoint in endpoints.items():
        fn = described.get(name, (None, None))[1]
        if fn is not None:
            live[name] = _packed(fn, list(endpoint.signature))
    state: list[Any] = []
    for layer in layers:
        for v in getattr(layer, "non_trainable_variables", []):
            if all(v is not o for o in state):
                state.append(v)
    return staged_check(live, filepath, {}, policy, calibration, state=state)


def _packed(fn: Callable[..., Any], signature: list[Any]) -> Callable[..., Any]:
    """``fn`` taking its inputs flat, packed as its signature nests them."""

    def call(*flat: Any) -> Any:
        return fn(*pack_as(signature, list(flat)))

    return call

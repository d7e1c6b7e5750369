"""The live side of a re-host check: sample inputs per endpoint and case, and
the live model's outputs on them, without leaving a trace in its state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kexport.capture.endpoint import EndpointRecipe
from kexport.check.live import flat_numpy
from kexport.check.report import VerificationReport
from kexport.check.samples import CASE_SIZES, SamplePolicy, sample_inputs
from kexport.check.tolerance import thresholds_for
from kexport.check.verdict import Case, verdict
from kexport.errors import SignatureError
from kexport.signature import Spec, flat_names, flatten, pack_as

__all__ = ["LiveCase", "all_variables", "live_cases", "report_on", "samples_or_none",
           "state_kept"]

#: The seed of a re-host's sample inputs.
SEED = 20240607


@dataclass(frozen=True)
class LiveCase:
    """One endpoint's case: its inputs (``in__<key>__<i>`` in ``inputs.npz``) and the
    live outputs on them.

    Attributes:
        key: the case's key in the job's arrays.
        batch: its batch size.
        feeds: the inputs by name, in signature order.
        live: the live model's outputs.
        deterministic: whether two identical live calls gave the same outputs
            (``False``: only shapes are compared).
    """

    key: str
    batch: int
    feeds: dict[str, Any]
    live: list[Any]
    deterministic: bool

    @property
    def inputs(self) -> int:
        return len(self.feeds)


def samples_or_none(specs: list[Spec], size: int, rng: Any, endpoint: str | None = None,
                    policy: SamplePolicy | None = None) -> list[Any] | None:
    """Check inputs for ``specs`` (:mod:`kexport.check.samples`, under the export's
    sample ``policy``), or ``None`` for string inputs that cannot be made up: such
    an endpoint is not compared."""
    try:
        return sample_inputs(specs, size, rng, endpoint=endpoint, policy=policy)
    except SignatureError:
        return None


def all_variables(models: list[Any]) -> list[Any]:
    out: list[Any] = []
    for m in models:
        for v in m.variables:
            if all(v is not o for o in out):
                out.append(v)
    return out


@contextlib.contextmanager
def state_kept(models: list[Any]) -> Any:
    """Run live calls without leaving a trace in the models' state."""
    import numpy as np

    variables = all_variables(models)
    saved = [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in variables]
    try:
        yield
    finally:
        for v, value in zip(variables, saved, strict=False):
            v.assign(value)


def _same(a: list[Any], b: list[Any]) -> bool:
    import numpy as np

    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=False))


def live_cases(recipes: list[tuple[EndpointRecipe, Callable[..., Any]]],
               models: list[Any],
               given: list[list[Any]] | Mapping[str, list[list[Any]]] | None = None,
               policy: SamplePolicy | None = None,
               ) -> tuple[dict[str, Any], dict[str, list[LiveCase]]]:
    """Sample inputs per endpoint and batch, and the live outputs for them.

    ``given`` replaces the random samples: one flat list of input arrays per
    batch (e.g. calibration data, on which a full-integer artifact must be
    accurate), or such lists by endpoint name (endpoints not named keep
    random samples, drawn under the export's sample ``policy``). An endpoint whose live outputs differ between two identical
    calls (random layers in training mode) is marked ``deterministic=False``:
    only shapes are compared for it.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(SEED)
    arrays: dict[str, Any] = {}
    cases: dict[str, list[LiveCase]] = {}
    for recipe, fn in recipes:
        entries: list[LiveCase] = []
        flat_specs = flatten(recipe.signature)
        mine = given.get(recipe.name) if isinstance(given, Mapping) else given
        for b, case in enumerate(CASE_SIZES if mine is None else mine):
            flat = (samples_or_none(flat_specs, case, rng, recipe.name, policy) if mine is None
                    else [np.asarray(x) for x in case])
            if flat is None:
                entries = []
                break
            batch = case if mine is None else (
                int(np.shape(flat[0])[0]) if flat and np.ndim(flat[0]) else b + 1)
            args = pack_as(list(recipe.signature),
                           [keras.ops.convert_to_tensor(x) for x in flat])
            with state_kept(models):
                first = flat_numpy(fn(*args))
                second = flat_numpy(fn(*args))
            key = f"{recipe.name}__b{b}"
            for i, x in enumerate(flat):
                arrays[f"in__{key}__{i}"] = x
            entries.append(LiveCase(key, batch, dict(zip(flat_names(recipe.signature), flat,
                                                         strict=True)),
                                    first, _same(first, second)))
        cases[recipe.name] = entries
    return arrays, cases


def report_on(cases: Mapping[str, list[LiveCase]], outputs: Mapping[str, Any], format: str,
              atol: float, rtol: float, quantized: str | None = None,
              given: bool = False) -> VerificationReport:
    """The artifact's outputs (``out__<key>__<i>``, as the child ran them) against
    the live ones, judged by :func:`kexport.check.verdict.verdict` (the rule of
    :func:`kexport.verify`): ``atol``/``rtol``, or a ``quantized`` mode's
    thresholds on the quality pooled over each endpoint's cases."""
    import numpy as np

    report = VerificationReport(format, quantized or "float32", atol, rtol, SEED,
                                quantization=quantized, thresholds=thresholds_for(quantized),
                                inputs="given" if given else "generated")
    judged = []
    for name, entries in cases.items():
        labels = [f"batch {e.batch}" for e in entries]
        for b, entry in enumerate(entries):
            prefix = f"out__{entry.key}__"
            got = [np.asarray(outputs[f"{prefix}{i}"])
                   for i in range(sum(k.startswith(prefix) for k in outputs))]
            label = labels[b] if labels.count(labels[b]) == 1 else f"{labels[b]}#{b}"
            judged.append(Case(name, label, entry.feeds, entry.live, got,
                               values=entry.deterministic))
    return verdict(report, judged)

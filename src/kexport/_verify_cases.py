"""The cases of a verification: inputs per endpoint and size, the live outputs, and each
case as the one verdict takes it (:mod:`kexport.check.verdict`); used by
:func:`kexport.verify.verify_on`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kexport.check.report import VerificationReport
from kexport.check.samples import SamplePolicy, sample_inputs
from kexport.check.verdict import Case, verdict
from kexport.errors import SampleDataError
from kexport.runtime._base import EndpointInfo

__all__ = ["QUANTIZED_ROWS"]

#: Rows of the extra case a quantized artifact is checked on: every row of the
#: sample data up to this many, else this many generated rows.
QUANTIZED_ROWS = 64
_MAX_DATA_ROWS = 1024

def _cases(endpoint: EndpointInfo, sizes: Sequence[int], seed: int,
           policy: SamplePolicy | None = None) -> dict[str, dict[str, Any]]:
    """One case per size (``"dyn=<size>"``), or one ``"static"`` case without dynamic dims."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = endpoint.input_names

    def case(size: int) -> dict[str, Any]:
        arrays = sample_inputs(endpoint.inputs, size, rng, endpoint=endpoint.name,
                               policy=policy)
        return dict(zip(names, arrays, strict=True))

    if not any(t.dynamic_axes for t in endpoint.inputs):
        return {"static": case(1)}
    return {f"dyn={s}": case(s) for s in sizes}


def _quantized_case(info: EndpointInfo, sizes: Sequence[int], seed: int,
                    policy: SamplePolicy) -> dict[str, dict[str, Any]]:
    """The larger case a quantized artifact's statistics need: every row of the
    sample data (at most 1024), else :data:`QUANTIZED_ROWS` generated rows;
    none when the batch is not dynamic or the rows are no more than the cases'."""
    import numpy as np

    if not info.inputs or not all(t.shape and t.shape[0] is None for t in info.inputs):
        return {}
    rows = QUANTIZED_ROWS
    if policy.data is not None:
        lengths = [len(np.asarray(v)) for v in policy.data.values() if np.ndim(v)]
        rows = min(min(lengths, default=0), _MAX_DATA_ROWS)
    if rows <= max(sizes):
        return {}
    rng = np.random.default_rng(seed + 1)
    arrays = sample_inputs(info.inputs, rows, rng, endpoint=info.name, policy=policy)
    label = "data" if policy.data is not None else "dyn"
    return {f"{label}={rows}": dict(zip(info.input_names, arrays, strict=True))}


def _checked(report: VerificationReport, endpoints: Mapping[str, EndpointInfo],
             cases: Mapping[str, tuple[str, str, dict[str, Any]]],
             refs: Mapping[str, Callable[[dict[str, Any]], list[Any]]],
             received: dict[str, Any], errors: Mapping[str, str],
             scores: Sequence[str] | None, twice: bool = False) -> VerificationReport:
    """The live outputs of every case (``refs``) and the artifact's, through the one verdict.

    With ``twice`` (live functions an archive's endpoints were made of, which may
    call layers in training mode), each case runs twice and one whose two live
    calls differ is compared by shapes only."""
    checked = []
    for key, (name, case, feeds) in cases.items():
        try:
            expected = refs[name](feeds)
            same = not twice or _same(expected, refs[name](feeds))
        except Exception as e:  # the live model's own failure on these inputs
            text = next((line for line in str(e).splitlines() if line.strip()), "")
            raise SampleDataError(
                f"Endpoint '{name}': the live model raised on the check's inputs (case "
                f"{case}): {type(e).__name__}: {text[:300]}. Expected inputs it takes: pass "
                "sample_data= to the export (data= or inputs= to kexport.verify), or "
                "verify=False to skip the check.") from e
        checked.append(_case(endpoints[name], case, feeds, expected, received, key,
                             errors.get(key), values=same))
    return verdict(report, checked, scores)


def _same(a: list[Any], b: list[Any]) -> bool:
    import numpy as np

    def equal(x: Any, y: Any) -> bool:
        try:
            return bool(np.array_equal(x, y, equal_nan=True))
        except TypeError:  # strings: no NaN
            return bool(np.array_equal(x, y))

    return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))


def _case(info: EndpointInfo, case: str, feeds: dict[str, Any], expected: list[Any],
          received: dict[str, Any], key: str, error: str | None, values: bool = True) -> Case:
    """One case of ``info`` as the verdict takes it (:class:`kexport.check.verdict.Case`):
    the runtime worker's outputs (``received``, keyed ``<key>/<output name>``) in the
    artifact's output order."""
    return Case(info.name, case, feeds, expected,
                [received.get(f"{key}/{t.name}") for t in info.outputs],
                [t.name for t in info.outputs], error, values)

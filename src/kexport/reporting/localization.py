"""The localiser's finding in a report: which Keras layer goes wrong first.

The report asks the localiser only about an artifact whose verification
failed, through :func:`_localize_finding`, the one place that calls it. The
localiser is used through the small protocol below (``kexport.localize``,
issue #17 item 1: ``localize(model, artifact_path, data=None)`` returning a
report with ``.culprit``, ``.layers`` and ``.to_json()``); its finding enters
the report as JSON, whatever the localiser's own classes are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kexport.localize import localize

__all__ = ["LOCALIZER", "Localization", "Localizer", "finding_json"]


class Localization(Protocol):
    """What a localiser returns (``kexport.localize``'s ``LocalizationReport``).

    ``layers`` holds one row per layer, in the model's topological order, with
    ``path``, ``class_name``, ``input_error``, ``output_error``, ``tolerance``,
    ``ok``, ``origin`` (whether the error enters at the layer or grows from
    upstream) and ``ops`` (the artifact's first op kinds that came from it).
    """

    culprit: str | None
    layers: Sequence[Any]

    def to_json(self) -> dict[str, Any]: ...


class Localizer(Protocol):
    """``kexport.localize``'s signature."""

    def __call__(self, model: Any, artifact_path: str | os.PathLike[str],
                 data: Any | None = None) -> Localization: ...


#: The localiser a report calls for a failed artifact (:func:`kexport.localize`;
#: tests swap it). ``None``: the report says no localiser ran.
LOCALIZER: Localizer | None = localize

#: The finding when the artifact fails verification but a probe exported now through
#: the same route matches the model layer by layer.
NOT_REPRODUCED = ("a fresh export of this model through the artifact's route matches it layer "
                  "by layer: the difference is not in the route. The artifact was written from "
                  "other weights or another model, or has changed since; export it again.")

#: Layer rows a report keeps around the culprit (before it, and after it).
ROWS_BEFORE, ROWS_AFTER = 12, 3

_ROW_KEYS = ("path", "class_name", "input_error", "output_error", "tolerance", "ok",
             "origin", "ops", "failed")


def _localize_finding(model: Any, artifact_path: str | os.PathLike[str],
                      data: Any | None = None) -> dict[str, Any]:
    """The localiser's finding for an artifact that failed verification, as JSON.

    The one call of the localiser in the report (``LOCALIZER``). Its failure (e.g. a format that keeps no
    intermediate outputs) is part of the finding, never an error of the
    report.
    """
    localizer = LOCALIZER
    if localizer is None:
        return {"status": "unavailable", "culprit": None, "layer": None, "layers": [],
                "message": "no localiser in this kexport (kexport.localize)"}
    try:
        found = localizer(model, artifact_path, data=data)
    except Exception as e:  # the report records why, and goes on
        return {"status": "error", "culprit": None, "layer": None, "layers": [],
                "message": f"{type(e).__name__}: {e}"}
    finding = finding_json(found)
    if finding["status"] == "clean":  # the artifact fails, a fresh probe export does not
        finding["status"] = "not_reproduced"
        finding["message"] = NOT_REPRODUCED
    return finding


def finding_json(found: Localization) -> dict[str, Any]:
    """A localiser's report as the report's JSON: ``status`` (``"found"``:
    a culprit; ``"clean"``: every layer matches), ``culprit``, its row
    (``layer``), the rows around it (``layers``), how many rows there were and the
    ``method`` the localiser compared by."""
    data = found.to_json()
    rows = [_row(r) for r in data.get("layers", []) if isinstance(r, Mapping)]
    culprit = found.culprit
    at = next((i for i, r in enumerate(rows) if r.get("path") == culprit), None)
    kept = rows[max(0, at - ROWS_BEFORE):at + ROWS_AFTER + 1] if at is not None \
        else rows[:ROWS_BEFORE]
    return {"status": "found" if culprit is not None else "clean",
            # "artifact": the artifact's own intermediate values; "probe": a fresh export
            "method": data.get("method", "probe"),
            "culprit": culprit, "layer": rows[at] if at is not None else None,
            "layers": kept, "total_layers": len(rows),
            "message": _message(rows[at]) if at is not None
            else "every layer matches the live model within tolerance"}


def _row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in _ROW_KEYS}
    for key in ("input_error", "output_error"):  # {"max_abs", "max_rel"}: the page's number
        if isinstance(out[key], Mapping):        # is max_abs; max_rel is kept beside it
            out[key.replace("_error", "_rel_error")] = out[key].get("max_rel")
            out[key] = out[key].get("max_abs")
    if out["ops"] is not None and not isinstance(out["ops"], list):
        out["ops"] = list(out["ops"]) if isinstance(out["ops"], (tuple, set)) else [out["ops"]]
    return out


def _message(row: Mapping[str, Any]) -> str:
    origin = row.get("origin")
    where = f" (error {origin})" if origin else ""
    return (f"first diverging layer: {row.get('path')} ({row.get('class_name')}), "
            f"output error {row.get('output_error')}{where}")

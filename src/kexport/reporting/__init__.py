"""One self-contained HTML report of a model and its artifacts: :func:`report`.

:mod:`~kexport.reporting.gather` gathers the data (a JSON-able dict, what
``--json`` writes), :mod:`~kexport.reporting.render` turns that dict into one
HTML page with inline SVG histograms (:mod:`~kexport.reporting.svg`), and
:mod:`~kexport.reporting.localization` holds the one call of the localiser.
The package is ``reporting``, not ``report``: ``kexport.report()`` is public
API, and a subpackage of that name would shadow it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from kexport._atomic import atomic_target
from kexport.check.report import VerificationReport
from kexport.errors import SignatureError, describe
from kexport.reporting.gather import BATCH_SIZES, SCHEMA, SECONDS, collect
from kexport.reporting.render import render_html

__all__ = ["SCHEMA", "collect", "render_html", "report", "write_json"]


def report(model: Any, artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
           path: str | os.PathLike[str] | None = None, *,
           json_path: str | os.PathLike[str] | None = None, data: Any | None = None,
           calibration_data: Any | None = None,
           batch_sizes: Sequence[int] = BATCH_SIZES, seconds: float = SECONDS, seed: int = 0,
           precision: str | None = None, model_file: str | os.PathLike[str] | None = None,
           verified: Mapping[str, VerificationReport] | None = None) -> dict[str, Any]:
    """Write one self-contained HTML report of ``model`` and its ``artifacts``.

    Per artifact: the route it was made by, files and sizes, endpoints with
    shapes and dtypes, operator counts, the verification table with the
    tolerances used (:func:`kexport.verify`, run in a fresh process; nothing
    is stored in the artifact), a histogram of ``|artifact - model|`` per
    output, p50/p90 latency at each batch size next to the live model, the
    precision or quantization mode, and, where verification failed, the first
    Keras layer that goes wrong (the localiser). The page needs no network
    and runs no script; it holds no local path (artifacts are named by their
    base names).

    Args:
        model: the live Keras model the artifacts were exported from.
        artifacts: one artifact path or a list of them.
        path: where to write the HTML page (``None``: write none).
        json_path: where to write the same data as JSON (``None``: none).
        data: sample data in the model's input structure, used instead of
            generated inputs (verification and histograms).
        calibration_data: what a quantized artifact was calibrated on (as
            given to its export). Without ``data``, the artifacts are
            checked on it, as their export checked them: a statically
            quantized artifact judged on generated inputs, outside the range
            it was calibrated for, can fail although it is good.
        batch_sizes: batch sizes to time (default ``(1, 8)``).
        seconds: time budget per runner and batch size (at least 3 calls).
        seed: seed of the generated inputs.
        precision: the runtimes' compute precision (see :func:`kexport.load`).
        model_file: the ``.keras`` file the model came from, if any (its
            base name is shown).
        verified: verification reports already computed, by artifact path as
            given in ``artifacts``; those artifacts are not verified again.

    Returns:
        The report's data (what ``json_path`` receives); ``data["ok"]`` says
        whether every artifact passed verification.

    Example:

    ```python
    data = kexport.report(model, ["out/model.onnx", "out/model.tflite"], "report.html")
    assert data["ok"]
    ```

    Raises:
        SignatureError: bad arguments (no artifacts, a model that is not a
            Keras model, bad batch sizes or time budget).
        ArtifactError: a path that does not exist or is no artifact.
        WriteError: the page or the JSON could not be written.
    """
    for name, value in (("path", path), ("json_path", json_path)):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise SignatureError(f"Expected `{name}` to be a file path or None. Received: "
                                 f"{describe(value)}")
    data_out = collect(model, artifacts, data=data, calibration_data=calibration_data,
                       batch_sizes=batch_sizes, seconds=seconds,
                       seed=seed, precision=precision, model_file=model_file, verified=verified)
    if path is not None:
        _write(path, render_html(data_out))
    if json_path is not None:
        write_json(json_path, data_out)
    return data_out


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write a report's data as JSON (atomically)."""
    _write(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _write(path: str | os.PathLike[str], text: str) -> None:
    with atomic_target(path, is_dir=False, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")

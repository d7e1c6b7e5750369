"""Verification: does the artifact compute what the live model computes?

:func:`verify` runs the artifact with its own runtime in a fresh child
process (:mod:`kexport.runtime._worker`, which never imports Keras or the
model's code), runs the live model on the same inputs here, and compares
every output of every checked endpoint. Without explicit inputs, seeded
random inputs are generated from the artifact's signature, and every
dynamic dimension is exercised at several sizes, 1 included.

The :class:`VerificationReport` prints as a table, has ``.ok``, converts to
JSON, and is stored inside the artifact (SavedModel: a JSON file in
``assets.extra/``; ONNX: ``metadata_props``), without any local path.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kexport._numerics import child_env, short
from kexport.artifact import FORMATS
from kexport.errors import SignatureError, VerificationError, describe
from kexport.runtime._base import EndpointInfo, TensorInfo, feeds_for, format_shape

__all__ = ["TOLERANCES", "OutputCheck", "VerificationReport", "declared_tolerances",
           "default_tolerances",
           "raise_if_failed", "sample_inputs", "store_report", "verify"]

# (atol, rtol) by the artifact's compute precision. Outputs are compared like
# numpy.allclose: |artifact - model| <= atol + rtol * |model|.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "bfloat16": (5e-2, 5e-2),
    "float16": (1e-2, 1e-2),
    "int8": (5e-2, 5e-2),
}
DEFAULT_SIZES: tuple[int, ...] = (1, 3)


def default_tolerances(precision: str) -> tuple[float, float]:
    """``(atol, rtol)`` for an artifact computing in ``precision``."""
    return TOLERANCES.get(precision, TOLERANCES["float32"])


def _looser(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (max(a[0], b[0]), max(a[1], b[1]))


def _tolerances_for(format: str, metadata: Mapping[str, Any], precision: str,
                    runtime_precision: str) -> tuple[tuple[float, float], str]:
    """``((atol, rtol), precision)`` for an artifact of ``precision`` run in ``runtime_precision``.

    The artifact's own precision (or its format's declared tolerance, e.g. by
    LiteRT quantization mode) applies; a runtime computing in less than
    float32 widens it to that precision's tolerance, and names it.
    """
    tol = declared_tolerances(format, metadata) or default_tolerances(precision)
    if runtime_precision in TOLERANCES and runtime_precision not in ("float32", "float64"):
        runtime_tol = default_tolerances(runtime_precision)
        if runtime_tol[0] > tol[0]:
            precision = runtime_precision
        tol = _looser(tol, runtime_tol)
    return tol, precision


def declared_tolerances(format: str, metadata: Mapping[str, Any]) -> tuple[float, float] | None:
    """The tolerances a format declares for one of its artifacts, if it does.

    A format's descriptor (:data:`kexport.artifact.FORMATS`) may declare
    ``tolerance(metadata) -> (atol, rtol) | None``; e.g. LiteRT answers by the
    quantization mode its metadata records, so verify and the format share one
    table. Formats without one get :data:`TOLERANCES` by precision.
    """
    descriptor = FORMATS.get(format)
    if descriptor is None or descriptor.tolerance is None:
        return None
    return descriptor.tolerance(metadata)


def _precision(metadata: Mapping[str, Any], endpoints: Mapping[str, EndpointInfo]) -> str:
    """The artifact's compute precision: stated in its metadata, else from its dtypes."""
    for key in ("precision", "quantization", "dtype"):
        value = metadata.get(key)
        if isinstance(value, str) and value in TOLERANCES:
            return value
    floats = {t.dtype for e in endpoints.values() for t in (*e.inputs, *e.outputs)
              if t.dtype in TOLERANCES}
    for low in ("int8", "float16", "bfloat16", "float32", "float64"):
        if low in floats:
            return low
    return "float32"


@dataclass(frozen=True)
class OutputCheck:
    """One output of one endpoint on one input case.

    Attributes:
        endpoint: the endpoint's name.
        output: the output's name.
        case: which inputs, e.g. ``"dyn=1"`` (every dynamic dim 1) or ``"given"``.
        input_shapes: the input shapes of the case.
        expected_shape: the live model's output shape.
        received_shape: the artifact's output shape (``None`` if it failed).
        max_abs: max absolute error (``inf`` when shapes differ).
        max_rel: max relative error, over elements where the model's value
            exceeds ``atol`` in magnitude.
        atol: absolute tolerance used.
        rtol: relative tolerance used.
        ok: whether shapes match and every element is within tolerance.
        error: why the artifact produced no output, if it did not.
    """

    endpoint: str
    output: str
    case: str
    input_shapes: dict[str, list[int]]
    expected_shape: list[int]
    received_shape: list[int] | None
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool
    error: str | None = None

    @property
    def shape_ok(self) -> bool:
        """Whether the artifact's output has the model's shape."""
        return self.received_shape == self.expected_shape


@dataclass
class VerificationReport:
    """The outcome of :func:`verify`.

    Attributes:
        format: the artifact's format.
        precision: the compute precision the tolerances were chosen for.
        atol: default absolute tolerance of the run.
        runtime_precision: the precision the artifact's runtime computed in,
            as the runtime reported it (``"float32"`` unless asked otherwise).
        rtol: default relative tolerance of the run.
        seed: seed of the generated inputs.
        checks: one :class:`OutputCheck` per endpoint, output and case.
        error: why the artifact could not be opened or run at all.
    """

    format: str
    precision: str
    atol: float
    rtol: float
    seed: int
    checks: list[OutputCheck] = field(default_factory=list)
    error: str | None = None
    runtime_precision: str = "float32"

    @property
    def ok(self) -> bool:
        """True when every check passed (and there was at least one)."""
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[OutputCheck]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    @property
    def max_abs(self) -> float:
        """The largest absolute error over every check."""
        return max((c.max_abs for c in self.checks), default=0.0)

    def summary(self) -> list[dict[str, Any]]:
        """One row per endpoint and output, worst case over the input cases."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.checks:
            row = rows.setdefault((c.endpoint, c.output), {
                "endpoint": c.endpoint, "output": c.output, "cases": [],
                "shape_match": True, "max_abs": 0.0, "max_rel": 0.0,
                "atol": c.atol, "rtol": c.rtol, "ok": True})
            row["cases"].append(c.case)
            row["shape_match"] &= c.shape_ok
            row["max_abs"] = max(row["max_abs"], c.max_abs)
            row["max_rel"] = max(row["max_rel"], c.max_rel)
            row["ok"] &= c.ok
        return list(rows.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what is stored in the artifact)."""
        from kexport._version import __version__

        return {
            "producer": "kexport", "producer_version": __version__,
            "ok": self.ok, "format": self.format, "precision": self.precision,
            "runtime_precision": self.runtime_precision, "atol": self.atol, "rtol": self.rtol, "seed": self.seed,
            "error": self.error, "summary": self.summary(),
            "checks": [_finite(asdict(c)) for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VerificationReport:
        """Rebuild a report from :meth:`to_json` output."""
        checks = [OutputCheck(**{k: _unfinite(v) for k, v in c.items()})
                  for c in data.get("checks", [])]
        return cls(data["format"], data["precision"], data["atol"], data["rtol"],
                   data["seed"], checks, data.get("error"),
                   data.get("runtime_precision", "float32"))

    def table(self) -> str:
        """The report as a text table, one row per endpoint and output."""
        head = ("endpoint", "output", "cases", "shape", "max abs err", "max rel err",
                "tolerance", "result")
        rows = [head]
        for r in self.summary():
            rows.append((r["endpoint"], r["output"], " ".join(r["cases"]),
                         "ok" if r["shape_match"] else "MISMATCH",
                         f"{r['max_abs']:.3g}", f"{r['max_rel']:.3g}",
                         f"atol={r['atol']:g} rtol={r['rtol']:g}",
                         "pass" if r["ok"] else "FAIL"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        verdict = "PASSED" if self.ok else "FAILED"
        title = (f"Verification {verdict} ({self.format}, runtime {short(self.runtime_precision)}"
                 f", tolerances for {self.precision}, seed {self.seed})")
        out = [title, *lines] if self.checks else [title]
        if self.error:
            out.append(f"error: {self.error}")
        for c in self.failures:
            if c.error:
                out.append(f"error in {c.endpoint}/{c.output} [{c.case}]: {c.error}")
            elif not c.shape_ok:
                out.append(f"shape mismatch in {c.endpoint}/{c.output} [{c.case}]: expected "
                           f"{format_shape(c.expected_shape)}, received "
                           f"{format_shape(c.received_shape or [])}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf/nan: store them as strings."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


def _unfinite(v: Any) -> Any:
    return float(v) if v in ("inf", "nan") else v


# -- inputs -----------------------------------------------------------------

def sample_inputs(endpoint: EndpointInfo, size: int, rng: Any) -> dict[str, Any]:
    """Random inputs for ``endpoint`` with every dynamic dim set to ``size``.

    Floats are standard normal, integers in ``[0, 5)``, booleans fair coins.

    Raises:
        SignatureError: for string inputs, which cannot be made up.
    """
    import numpy as np

    out = {}
    for t in endpoint.inputs:
        shape = tuple(size if d is None else d for d in t.shape)
        if t.dtype == "string":
            raise SignatureError(
                f"Endpoint '{endpoint.name}', input '{t.name}' takes strings, which "
                "cannot be generated at random. Expected `inputs=` with sample text."
            )
        kind = np.dtype(t.dtype).kind
        if kind == "f":
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        elif kind == "b":
            out[t.name] = rng.random(shape) < 0.5
        else:
            out[t.name] = rng.integers(0, 5, size=shape).astype(t.dtype)
    return out


def _cases(endpoint: EndpointInfo, sizes: Sequence[int], seed: int) -> dict[str, dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    dynamic = any(t.dynamic_axes for t in endpoint.inputs)
    if not dynamic:
        return {"static": sample_inputs(endpoint, 1, rng)}
    return {f"dyn={s}": sample_inputs(endpoint, s, rng) for s in sizes}


# -- the live model ---------------------------------------------------------

def _reference(model: Any, endpoint: EndpointInfo) -> Callable[[dict[str, Any]], list[Any]]:
    """A function: named NumPy inputs -> flat NumPy outputs of the live model."""
    import keras

    from kexport.signature import flat_names, flatten, infer_model_signature, pack_as

    if isinstance(model, keras.layers.Layer):
        try:
            structure: list[Any] | None = infer_model_signature(model)
        except SignatureError:
            structure = None
        names = endpoint.input_names
        if structure is not None and len(flatten(structure)) == len(names):
            own = flat_names(structure)
            order = own if sorted(own) == sorted(names) else names

            def call(feeds: dict[str, Any]) -> list[Any]:
                args = pack_as(structure, [feeds[n] for n in order])
                return _flat_numpy(model(*args, training=False))
        else:
            def call(feeds: dict[str, Any]) -> list[Any]:
                return _flat_numpy(model(*[feeds[n] for n in names], training=False))
        return call

    def call_plain(feeds: dict[str, Any]) -> list[Any]:
        return _flat_numpy(model(*[feeds[n] for n in endpoint.input_names]))

    return call_plain


def _flat_numpy(outputs: Any) -> list[Any]:
    import keras
    import numpy as np

    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def _compare(expected: Any, received: Any, atol: float, rtol: float) -> tuple[float, float, bool]:
    import numpy as np

    if expected.shape != received.shape:
        return float("inf"), float("inf"), False
    if expected.size == 0:
        return 0.0, 0.0, True
    e = expected.astype(np.float64) if expected.dtype.kind != "b" else expected.astype(np.int8)
    r = received.astype(np.float64) if received.dtype.kind != "b" else received.astype(np.int8)
    nan_e, nan_r = np.isnan(e), np.isnan(r)
    if np.any(nan_e != nan_r):
        return float("nan"), float("nan"), False
    mask = ~nan_e
    diff = np.abs(e[mask] - r[mask])
    if diff.size == 0:
        return 0.0, 0.0, True
    mag = np.abs(e[mask])
    big = mag > max(atol, 1e-12)
    max_rel = float(np.max(diff[big] / mag[big])) if np.any(big) else 0.0
    ok = bool(np.all(diff <= atol + rtol * mag))
    return float(np.max(diff)), max_rel, ok


# -- the child process ------------------------------------------------------

class _Worker:
    """A fresh Python process running :mod:`kexport.runtime._worker`."""

    def __init__(self, timeout: float) -> None:
        env = child_env(os.environ)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kexport.runtime._worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        self._timer = threading.Timer(timeout, self._proc.kill)
        self._timer.daemon = True
        self._timer.start()
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        from kexport.runtime._worker import MARKER

        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        for line in self._proc.stdout:
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER):])
        tail = "".join(self._stderr[-5:]).strip()
        return {"ok": False, "error": f"the child process ended (exit code "
                                      f"{self._proc.wait()}): {tail[-500:]}"}

    def close(self) -> None:
        self._timer.cancel()
        if self._proc.returncode is not None or (self._proc.stdin and self._proc.stdin.closed):
            return
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self._proc.stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()


# -- verify -----------------------------------------------------------------

def _references(model: Any, endpoints: dict[str, EndpointInfo], default: str
                ) -> dict[str, Callable[[dict[str, Any]], list[Any]]]:
    import keras

    if isinstance(model, keras.layers.Layer):
        return {default: _reference(model, endpoints[default])}
    if isinstance(model, Mapping):
        out = {}
        for name, fn in model.items():
            if name not in endpoints:
                raise SignatureError(
                    f"Expected `model` keys to be endpoints of the artifact "
                    f"{list(endpoints)}. Received: {name!r}"
                )
            if not callable(fn):
                raise SignatureError(
                    f"Expected a callable reference for endpoint '{name}'. "
                    f"Received: {describe(fn)}"
                )
            out[name] = _reference(fn, endpoints[name])
        return out
    raise SignatureError(
        "Expected `model` to be a Keras model/layer, or a dict mapping endpoint "
        f"names to callables. Received: {describe(model)}"
    )


def verify(model: Any, path: str | os.PathLike[str], inputs: Any | None = None, *,
           atol: float | None = None, rtol: float | None = None, seed: int = 0,
           sizes: Sequence[int] = DEFAULT_SIZES, store: bool = True,
           timeout: float = 600.0, precision: str | None = None) -> VerificationReport:
    """Compare the artifact at ``path`` with the live ``model``.

    The artifact is opened with its own runtime in a fresh child process;
    the model runs here with ``training=False``.

    Args:
        model: the Keras model (checked against the artifact's default
            endpoint), or a dict ``{endpoint name: callable}`` for archives.
        path: the artifact.
        inputs: inputs for the default endpoint (one array, a list, or a dict
            by input name), or ``{endpoint: inputs}`` when ``model`` is a dict.
            ``None``: seeded random inputs, every dynamic dim at each of
            ``sizes``.
        atol: absolute tolerance; ``None`` picks it from the artifact's
            precision (see :data:`TOLERANCES`).
        rtol: relative tolerance; ``None`` likewise.
        seed: seed of the generated inputs.
        sizes: sizes given to dynamic dims (two or more, 1 included, by default).
        store: also store the report inside the artifact.
        timeout: seconds the child process may take in all.
        precision: the precision the artifact's runtime computes in (see
            :func:`kexport.load`): ``None``/``"f32"`` by default on every CPU;
            ``"bf16"``/``"f16"`` where the runtime offers it, with that
            precision's tolerance (the report's ``runtime_precision``).

    Returns:
        The :class:`VerificationReport` (check ``.ok``); integer and boolean
        outputs must match exactly.

    Example:

    ```python
    report = kexport.verify(model, "out/model")
    print(report)        # a table per endpoint and output
    assert report.ok
    ```

    Raises:
        ArtifactError: ``path`` is missing or is no artifact at all (an
            artifact that its runtime cannot open or run gives a failed
            report with ``.error`` instead).
        SignatureError: bad tolerances, sizes, precision or inputs (expected
            vs received).
    """
    import numpy as np

    from kexport.runtime import check_precision, detect

    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value >= 0):
            raise SignatureError(f"Expected `{name}` to be a number >= 0. Received: "
                                 f"{describe(value)}")
    if (not isinstance(sizes, (list, tuple)) or not sizes
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise SignatureError(f"Expected `sizes` to be a non-empty list of ints >= 1. "
                             f"Received: {describe(sizes)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SignatureError(f"Expected `seed` to be an int. Received: {describe(seed)}")
    import keras

    if not isinstance(model, (keras.layers.Layer, Mapping)):
        raise SignatureError(
            "Expected `model` to be a Keras model/layer, or a dict mapping endpoint "
            f"names to callables. Received: {describe(model)}"
        )
    format = detect(path)
    runtime_precision = check_precision(format, precision)
    worker = _Worker(timeout)
    try:
        opened = worker.ask({"cmd": "open", "path": os.fspath(path),
                             "precision": runtime_precision})
        if not opened.get("ok"):
            # A recognised artifact that its runtime cannot open (corrupt
            # weights, missing files) fails verification; it is no bad input.
            d_atol, d_rtol = default_tolerances("float32")
            return VerificationReport(
                format, "float32", d_atol if atol is None else float(atol),
                d_rtol if rtol is None else float(rtol), seed,
                error=f"the artifact could not be opened in a fresh process: "
                      f"{opened.get('error')}", runtime_precision=runtime_precision)
        endpoints = {n: EndpointInfo.from_json(n, e) for n, e in opened["endpoints"].items()}
        default = opened["default"]
        metadata = opened.get("metadata") or {}
        used = str(opened.get("precision") or runtime_precision)
        (d_atol, d_rtol), precision = _tolerances_for(
            format, metadata, _precision(metadata, endpoints), used)
        atol = d_atol if atol is None else float(atol)
        rtol = d_rtol if rtol is None else float(rtol)
        report = VerificationReport(format, precision, atol, rtol, seed,
                                    runtime_precision=used)
        refs = _references(model, endpoints, default)
        cases: dict[str, tuple[str, str, dict[str, Any]]] = {}
        for name in refs:
            info = endpoints[name]
            given = inputs.get(name) if isinstance(model, Mapping) and isinstance(
                inputs, Mapping) else (inputs if name == default else None)
            if given is not None:
                per_case = {"given": feeds_for(info, given)}
            else:
                per_case = _cases(info, sizes, seed)
            for case, feeds in per_case.items():
                cases[f"{name}.{case}"] = (name, case, feeds)
        with tempfile.TemporaryDirectory(prefix="kexport-verify-") as tmp:
            in_file, out_file = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
            np.savez(in_file, **{f"{key}/{n}": v for key, (_, _, feeds) in cases.items()
                                 for n, v in feeds.items()})
            ran = worker.ask({"cmd": "run", "inputs": in_file, "outputs": out_file,
                              "calls": [[key, ep] for key, (ep, _, _) in cases.items()]})
            if not ran.get("ok"):
                report.error = str(ran.get("error"))
                return report
            with np.load(out_file, allow_pickle=False) as data:
                received = {k: np.array(data[k]) for k in data.files}
        errors = ran.get("errors", {})
        for key, (name, case, feeds) in cases.items():
            _check_case(report, endpoints[name], case, feeds, refs[name](feeds),
                        received, key, errors.get(key))
    finally:
        worker.close()
    if store and report.error is None:
        store_report(format, path, report)
    return report


def _check_case(report: VerificationReport, info: EndpointInfo, case: str,
                feeds: dict[str, Any], expected: list[Any], received: dict[str, Any],
                key: str, error: str | None) -> None:
    import numpy as np

    shapes = {n: list(v.shape) for n, v in feeds.items()}
    outputs: list[TensorInfo | None] = list(info.outputs)
    if len(expected) != len(outputs):
        error = error or (f"the model has {len(expected)} outputs, the artifact "
                          f"{len(outputs)} ({info.output_names})")
    for i, t in enumerate(outputs):
        want = expected[i] if i < len(expected) else None
        name = t.name if t is not None else f"output_{i}"
        got = received.get(f"{key}/{name}")
        exact = want is not None and want.dtype.kind in "iub"
        atol, rtol = (0.0, 0.0) if exact else (report.atol, report.rtol)
        if want is None or got is None or error:
            report.checks.append(OutputCheck(
                info.name, name, case, shapes, list(np.shape(want)) if want is not None else [],
                list(got.shape) if got is not None else None, float("inf"), float("inf"),
                atol, rtol, False, error or "no output"))
            continue
        max_abs, max_rel, ok = _compare(want, got, atol, rtol)
        report.checks.append(OutputCheck(
            info.name, name, case, shapes, list(want.shape), list(got.shape),
            max_abs, max_rel, atol, rtol, ok))


def store_report(format: str, path: str | os.PathLike[str], report: VerificationReport) -> bool:
    """Store ``report`` inside the artifact, if its format's runtime can.

    Returns:
        Whether it was stored.
    """
    from pathlib import Path

    from kexport.runtime import runtime_module

    module = runtime_module(format)
    writer = getattr(module, "store_report", None)
    if writer is None:
        return False
    writer(Path(os.fspath(path)), report.to_json())
    return True


def raise_if_failed(report: VerificationReport, path: str | os.PathLike[str]) -> None:
    """Raise :class:`VerificationError` carrying ``report`` unless it passed."""
    if report.ok:
        return
    names = sorted({f"{c.endpoint}/{c.output}" for c in report.failures})
    raise VerificationError(
        f"The {report.format} artifact at '{os.fspath(path)}' does not compute what the "
        f"model computes (outputs {names or 'none'} out of tolerance "
        f"atol={report.atol:g}, rtol={report.rtol:g}).\n{report.table()}",
        report,
    )

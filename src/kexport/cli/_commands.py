"""The verbs of the ``kexport`` command; each returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import kexport
from kexport import routing
from kexport import serve as serving
from kexport._keras_file import load_keras_file
from kexport._summary import human_size, size_of
from kexport.artifact import BACKENDS, FORMATS
from kexport.check.live import live_reference
from kexport.check.report import VerificationReport
from kexport.check.samples import sample_inputs
from kexport.cli._codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kexport.cli._progress import Progress
from kexport.cli._quiet import result_stream
from kexport.errors import (
    ArtifactError,
    KexportError,
    SampleDataError,
    SignatureError,
    VerificationError,
)
from kexport.runtime import TensorInfo, runtime_formats
from kexport.serve import ServedModel
from kexport.signature import Spec

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Dispatch ``args.verb``; map typed errors to exit codes."""
    verbs: dict[str, Callable[[argparse.Namespace, Progress], int]] = {
        "export": export, "inspect": inspect, "verify": verify, "bench": bench,
        "serve": serve, "formats": formats,
    }
    progress = Progress(False if args.json else None)
    try:
        return verbs[args.verb](args, progress)
    except VerificationError as e:
        return _fail(args, e, EXIT_FAILED)
    except (KexportError, OSError) as e:
        return _fail(args, e, EXIT_USAGE)


def _fail(args: argparse.Namespace, error: BaseException, code: int) -> int:
    if args.json:
        print(json.dumps({"ok": False, "error": {"type": type(error).__name__,
                                                  "message": str(error)}}, indent=2),
              file=result_stream())
    else:
        print(f"kexport {args.verb}: error: {type(error).__name__}: {error}", file=sys.stderr)
    return code


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text, file=result_stream())


def _human_size(n: int) -> str:
    return human_size(n)


# -- loading ----------------------------------------------------------------

def load_model(path: str, unsafe: bool) -> Any:
    """Load a ``.keras`` file with Keras safe mode unless ``unsafe``."""

    if not os.path.isfile(path):
        raise ArtifactError(f"Expected a .keras model file. Received: '{path}', which "
                            f"{'is a folder' if os.path.isdir(path) else 'does not exist'}.")
    return load_keras_file(path, safe_mode=not unsafe)


def parse_signature(text: str | None) -> Any:
    """``--input-signature`` JSON -> specs (a list, dict or single spec).

    Raises:
        SignatureError: invalid JSON or specs, with what was expected.
    """
    if text is None:
        return None

    try:
        data = json.loads(text)
    except ValueError as e:
        raise SignatureError(f"Expected --input-signature to be JSON. Received: {text!r} "
                             f"({e})") from None

    def spec(item: Any) -> Any:
        if isinstance(item, dict) and "shape" in item:
            shape = item["shape"]
            if not isinstance(shape, list):
                raise SignatureError(f"Expected a list as 'shape'. Received: {shape!r}")
            return Spec(tuple(shape), str(item.get("dtype", "float32")), item.get("name"))
        if isinstance(item, list):
            return [spec(i) for i in item]
        if isinstance(item, dict):
            return {k: spec(v) for k, v in item.items()}
        raise SignatureError(
            'Expected --input-signature entries like {"shape": [null, 8], "dtype": '
            f'"float32", "name": "x"}}. Received: {item!r}')

    return spec(data)


def load_data(path: str | None, flag: str = "--data") -> dict[str, Any] | None:
    """The arrays of a ``--data FILE.npz`` (keyed by input name, or ``arr_<i>``)."""
    import numpy as np

    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise SampleDataError(
                    f"Expected {flag} to be a .npz file of named arrays. Received a "
                    f"single array in '{path}'.")
            return {k: np.array(data[k]) for k in data.files}
    except (ValueError, EOFError) as e:
        raise SampleDataError(f"Expected {flag} to be a .npz file. Received '{path}': "
                              f"{e}") from e


def _backend() -> str:
    import keras

    return keras.backend.backend()


# -- export -----------------------------------------------------------------

def export(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport export MODEL.keras --format F -o OUT``."""

    routing.format_info(args.format)
    signature = parse_signature(args.input_signature)
    kwargs: dict[str, Any] = {}
    if args.opset is not None:
        kwargs["opset_version"] = args.opset
    if args.quantize is not None or args.calibration is not None:
        kwargs["quantization"] = args.quantize
        kwargs["calibration_data"] = load_data(args.calibration, "--calibration")
    sample_data = load_data(args.data)
    with progress.step("Loading model"):
        model = load_model(args.model, args.unsafe)
    backend = _backend()
    start = time.perf_counter()
    with progress.step(f"Exporting to {args.format} ({backend} backend)"):
        kexport.export_model(model, args.output, format=args.format, verbose=False,
                             input_signature=signature, overwrite=args.overwrite,
                             sample_data=sample_data, **kwargs)
    export_s = time.perf_counter() - start
    data: dict[str, Any] = {"ok": True, "format": args.format, "backend": backend,
                            "output": args.output, "size": size_of(args.output, args.format),
                            "export_seconds": round(export_s, 3), "verification": None,
                            "quantization": args.quantize}
    lines = [f"Wrote {args.format} artifact '{args.output}' "
             f"({_human_size(data['size'])}"
             + (f", quantized {args.quantize}" if args.quantize else "")
             + f") in {export_s:.1f}s from the {backend} backend."]
    if not args.no_verify:
        start = time.perf_counter()
        with progress.step("Verifying in a fresh process"):
            report = kexport.verify(model, args.output, atol=args.atol, rtol=args.rtol,
                                    precision=args.precision, scores=args.scores,
                                    seed=args.seed, data=sample_data)
        data["verify_seconds"] = round(time.perf_counter() - start, 3)
        data["verification"] = report.to_json()
        data["ok"] = report.ok
        lines.append(report.table())
    else:
        lines.append("Not verified (--no-verify).")
    _emit(args, data, "\n".join(lines))
    return EXIT_OK if data["ok"] else EXIT_FAILED


# -- verify -----------------------------------------------------------------

def verify(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport verify MODEL.keras ARTIFACT``."""

    sample_data = load_data(args.data)
    with progress.step("Loading model"):
        model = load_model(args.model, args.unsafe)
    with progress.step("Verifying in a fresh process"):
        report = kexport.verify(model, args.artifact, atol=args.atol, rtol=args.rtol,
                                precision=args.precision, data=sample_data,
                                scores=args.scores, seed=args.seed,
                                store=not args.no_store)
    _emit(args, report.to_json(), report.table())
    return EXIT_OK if report.ok else EXIT_FAILED


# -- inspect ----------------------------------------------------------------

def inspect(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport inspect ARTIFACT``."""

    with progress.step("Opening artifact"):
        artifact = kexport.load(args.artifact)
    info = artifact.describe()
    if args.json:
        _emit(args, info, "")
        return EXIT_OK
    lines = [f"{args.artifact}: {artifact.format}, {_human_size(artifact.size)} "
             f"(opened in {artifact.precision})",
             "endpoints:"]
    for name, endpoint in artifact.endpoints.items():
        alias = " (default)" if name == artifact.default_endpoint else ""
        lines.append(f"  {name}{alias}")
        lines.extend(f"    input  {t}" for t in endpoint.inputs)
        lines.extend(f"    output {t}" for t in endpoint.outputs)
    lines.append("files:")
    lines.extend(f"  {_human_size(size):>10}  {name}" for name, size in info["files"].items())
    if artifact.metadata:
        lines.append("metadata:")
        for key, value in artifact.metadata.items():
            if key == "endpoints" or (isinstance(value, str) and key.endswith(("inputs",
                                                                               "outputs"))):
                continue
            lines.append(f"  {key}: {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    stored = info["verification"]
    if stored:

        lines.append("stored verification:")
        try:
            lines.extend("  " + line for line in VerificationReport.from_json(stored)
                         .table().splitlines())
        except (KeyError, TypeError):
            lines.append(f"  ok={stored.get('ok')}")
    else:
        lines.append("stored verification: none (run `kexport verify MODEL.keras ARTIFACT`)")
    ops = info["op_counts"]
    if ops:
        lines.append("operators:")
        for name, counts in ops.items():
            total = sum(counts.values())
            top = ", ".join(f"{op} {n}" for op, n in list(counts.items())[:8])
            more = ", ..." if len(counts) > 8 else ""
            lines.append(f"  {name}: {total} ops ({top}{more})")
    _emit(args, info, "\n".join(lines))
    return EXIT_OK


# -- bench ------------------------------------------------------------------

def _time(fn: Callable[[], Any], seconds: float, min_runs: int = 5,
          max_runs: int = 10_000) -> list[float]:
    fn()  # warm-up (first-call compilation and allocation)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _stats(times: list[float], batch: int) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "runs": len(times),
            "throughput_per_s": float(batch * len(times) / max(sum(times), 1e-12))}


def bench_inputs(endpoint: Any, batch: int, dim_size: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs: the leading dynamic dim is ``batch``, others ``dim_size``."""

    fixed = [TensorInfo(t.name, tuple((batch if i == 0 else dim_size) if d is None else d
                                      for i, d in enumerate(t.shape)), t.dtype)
             for t in endpoint.inputs]
    arrays = sample_inputs(fixed, 1, seed, endpoint=endpoint.name)
    return dict(zip(endpoint.input_names, arrays, strict=True))


def bench(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport bench ARTIFACT [--batch N ...] [--model MODEL.keras]``."""

    if args.seconds <= 0:
        raise SignatureError(f"Expected --seconds > 0. Received: {args.seconds}")
    with progress.step("Opening artifact"):
        artifact = kexport.load(args.artifact, precision=args.precision)
    endpoint = artifact._endpoint(args.endpoint or artifact.default_endpoint)
    model = reference = None
    if args.model:

        with progress.step("Loading model"):
            model = load_model(args.model, args.unsafe)
        reference = live_reference(model, endpoint.input_names)
    rows = []
    for batch in args.batch:
        feeds = bench_inputs(endpoint, batch, args.dim_size)
        with progress.step(f"Timing {artifact.format} at batch {batch}"):
            row: dict[str, Any] = {"batch": batch, "artifact": _stats(
                _time(lambda f=feeds: artifact.run(endpoint.name, f), args.seconds), batch)}
        if reference is not None:
            with progress.step(f"Timing the Keras model at batch {batch}"):
                row["keras"] = _stats(_time(lambda f=feeds: reference(f), args.seconds), batch)
        rows.append(row)
    data = {"format": artifact.format, "endpoint": endpoint.name,
            "precision": artifact.precision,
            "keras_backend": _backend() if model is not None else None, "results": rows}
    head = ["batch", "runner", "p50 ms", "p90 ms", "p99 ms", "items/s", "runs"]
    table = [head]
    for row in rows:
        for runner in ("artifact", "keras"):
            if runner not in row:
                continue
            s = row[runner]
            label = artifact.format if runner == "artifact" else f"keras ({data['keras_backend']})"
            table.append([str(row["batch"]), label, f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}",
                          f"{s['p99_ms']:.3f}", f"{s['throughput_per_s']:.0f}", str(s["runs"])])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    text = [f"Benchmark of endpoint '{endpoint.name}' ({artifact.format}, runtime "
            f"{artifact.precision})"]
    text += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    _emit(args, data, "\n".join(text))
    return EXIT_OK


# -- formats ----------------------------------------------------------------

def formats(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport formats``: the backend x format route table."""

    rows = routing.routes()
    data = {
        "formats": {n: {"description": f.description, "suffix": f.suffix,
                        "loadable": n in runtime_formats()}
                    for n, f in FORMATS.items()},
        "routes": [r.to_json() for r in rows],
    }
    names = list(FORMATS)
    table = [["backend \\ format", *names]]
    for backend in BACKENDS:
        cells = []
        for fmt in names:
            found = routing.routes(backend, fmt)
            usable = [r for r in found if r.available]
            if usable:
                cells.append(usable[0].kind)
            elif found:
                cells.append(f"({found[0].kind}: missing {', '.join(found[0].missing)})")
            else:
                cells.append("-")
        table.append([backend, *cells])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"{n}: {f.description}" for n, f in FORMATS.items()]
    lines.append("native: traced on the model's backend; rehost: rebuilt on another "
                 "backend in a child process; -: no route yet.")
    _emit(args, data, "\n".join(lines))
    return EXIT_OK


# -- serve ------------------------------------------------------------------

def serve(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport serve PATH``: runs until interrupted; prints the URL and models once."""

    def ready(url: str, models: dict[str, ServedModel]) -> None:
        listed = {n: {"format": m.served.artifact.format, "endpoint": m.endpoint.name,
                      "inputs": [t.to_json() for t in m.endpoint.inputs],
                      "outputs": [t.to_json() for t in m.endpoint.outputs]}
                  for n, m in models.items()}
        lines = [f"kexport serve: {url} (Open Inference Protocol /v2, TF-Serving REST /v1)"]
        lines += [f"  {n}: {m['format']}, endpoint {m['endpoint']}  {url}/v2/models/{n}"
                  for n, m in listed.items()]
        data = {"ok": True, "url": url, "models": listed}
        print(json.dumps(data) if args.json else "\n".join(lines), file=result_stream(),
              flush=True)

    if not 0 <= args.port <= 65535:
        raise SignatureError(f"Expected --port between 0 and 65535. Received: {args.port}")
    serving.serve(args.path, host=args.host, port=args.port, name=args.name,
                  max_body_bytes=args.max_body_bytes, workers=args.workers,
                  log_level="info" if args.verbose else "warning", on_ready=ready)
    return EXIT_OK

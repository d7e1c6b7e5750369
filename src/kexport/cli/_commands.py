"""The verbs of the ``kexport`` command; each returns an exit code.

``export`` lives in :mod:`kexport.cli._export`; what the verbs read in
:mod:`kexport.cli._loading`, how they print results in
:mod:`kexport.cli._results`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import kexport
from kexport import routing
from kexport import serve as serving
from kexport._summary import human_size
from kexport.artifact import BACKENDS, FORMATS
from kexport.check.live import live_reference
from kexport.check.report import VerificationReport
from kexport.cli._codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kexport.cli._export import export
from kexport.cli._loading import keras_backend, load_data, load_model, parse_signature
from kexport.cli._progress import Progress
from kexport.cli._quiet import result_stream
from kexport.cli._results import emit, fail
from kexport.errors import KexportError, SignatureError, VerificationError
from kexport.generation.spec import generation_summary
from kexport.reporting import write_json
from kexport.reporting.timing import bench_inputs, stats, time_calls
from kexport.runtime import runtime_formats
from kexport.serve import ServedModel

__all__ = ["export", "load_data", "load_model", "parse_signature", "run"]


def run(args: argparse.Namespace) -> int:
    """Dispatch ``args.verb``; map typed errors to exit codes."""
    verbs: dict[str, Callable[[argparse.Namespace, Progress], int]] = {
        "export": export, "inspect": inspect, "verify": verify, "bench": bench,
        "formats": formats, "report": report, "serve": serve,
    }
    progress = Progress(False if args.json else None)
    try:
        return verbs[args.verb](args, progress)
    except VerificationError as e:
        return fail(args, e, EXIT_FAILED)
    except (KexportError, OSError) as e:
        return fail(args, e, EXIT_USAGE)


# -- verify -----------------------------------------------------------------

def verify(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport verify MODEL.keras ARTIFACT``."""

    sample_data = load_data(args.data)
    calibration = load_data(args.calibration, "--calibration")
    with progress.step("Loading model"):
        model = load_model(args.model, args.unsafe)
    with progress.step("Verifying in a fresh process"):
        report = kexport.verify(model, args.artifact, atol=args.atol, rtol=args.rtol,
                                precision=args.precision, data=sample_data,
                                scores=args.scores, seed=args.seed,
                                store=not args.no_store, calibration_data=calibration)
    data, text = report.to_json(), report.table()
    if args.localize:
        # on the inputs verify used: a quantized artifact's calibration data
        probe_data = calibration if report.inputs == "calibration" else sample_data
        with progress.step("Localising layer by layer"):
            found = kexport.localize(model, args.artifact, data=probe_data, seed=args.seed)
        data["localization"] = found.to_json()
        text = f"{text}\n\n{found.table()}"
    emit(args, data, text)
    return EXIT_OK if report.ok else EXIT_FAILED


# -- inspect ----------------------------------------------------------------

def inspect(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport inspect ARTIFACT``."""

    with progress.step("Opening artifact"):
        artifact = kexport.load(args.artifact)
    info = artifact.describe()
    if args.json:
        emit(args, info, "")
        return EXIT_OK
    lines = [f"{args.artifact}: {artifact.format}, {human_size(artifact.size)} "
             f"(opened in {artifact.precision})",
             "endpoints:"]
    for name, endpoint in artifact.endpoints.items():
        alias = " (default)" if name == artifact.default_endpoint else ""
        lines.append(f"  {name}{alias}")
        lines.extend(f"    input  {t}" for t in endpoint.inputs)
        lines.extend(f"    output {t}" for t in endpoint.outputs)
    lines.append("files:")
    lines.extend(f"  {human_size(size):>10}  {name}" for name, size in info["files"].items())
    if artifact.metadata:
        lines.append("metadata:")
        for key, value in artifact.metadata.items():
            if key == "endpoints" or (isinstance(value, str) and key.endswith(("inputs",
                                                                               "outputs"))):
                continue
            lines.append(f"  {key}: {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    lines.extend(generation_summary(artifact.metadata))
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
    emit(args, info, "\n".join(lines))
    return EXIT_OK


# -- bench ------------------------------------------------------------------

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
            row: dict[str, Any] = {"batch": batch, "artifact": stats(
                time_calls(lambda f=feeds: artifact.run(endpoint.name, f), args.seconds), batch)}
        if reference is not None:
            with progress.step(f"Timing the Keras model at batch {batch}"):
                row["keras"] = stats(time_calls(lambda f=feeds: reference(f), args.seconds), batch)
        rows.append(row)
    data = {"format": artifact.format, "endpoint": endpoint.name,
            "precision": artifact.precision,
            "keras_backend": keras_backend() if model is not None else None, "results": rows}
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
    emit(args, data, "\n".join(text))
    return EXIT_OK


# -- report -----------------------------------------------------------------

def report(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport report MODEL.keras ARTIFACT... -o report.html [--json [FILE]]``."""

    sample_data = load_data(args.data)
    calibration = load_data(args.calibration, "--calibration")
    with progress.step("Loading model"):
        model = load_model(args.model, args.unsafe)
    with progress.step(f"Reporting on {len(args.artifacts)} artifact(s)"):
        data = kexport.report(model, args.artifacts, args.output, data=sample_data,
                              calibration_data=calibration,
                              batch_sizes=args.batch, seconds=args.seconds, seed=args.seed,
                              precision=args.precision, model_file=args.model)
    if args.json_file is not None:
        write_json(args.json_file, data)
    lines = [f"Wrote report '{args.output}' on {len(data['artifacts'])} artifact(s) of "
             f"model '{data['model']['name']}':"]
    for s in data["artifacts"]:
        latency = s["latency"][0] if isinstance(s["latency"], list) and s["latency"] else None
        lines.append(f"  {s['name']}: {s['format']}, "
                     + ("verified" if s["ok"] else "verification FAILED")
                     + (f", p50 {latency['p50_ms']:.3f} ms at batch {latency['batch']}"
                        if latency else "")
                     + (f"; first diverging layer: {s['localization']['culprit']}"
                        if s.get("localization") and s["localization"].get("culprit") else ""))
    emit(args, data, "\n".join(lines))
    return EXIT_OK if data["ok"] else EXIT_FAILED


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
    emit(args, data, "\n".join(lines))
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

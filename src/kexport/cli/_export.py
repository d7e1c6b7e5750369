"""The ``export`` verb: write an artifact, verify it, and optionally lay it out.

``kexport export`` exports a ``.keras`` model to one format, verifies the
artifact in a fresh process (unless ``--no-verify``), writes an HTML report
when asked, and with ``--layout`` stages the artifact and writes it into a
serving repository layout (only when it verified).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import kexport
from kexport import layouts, routing
from kexport._atomic import staging_dir
from kexport._summary import human_size, size_of
from kexport.cli._codes import EXIT_FAILED, EXIT_OK
from kexport.cli._loading import keras_backend, load_data, load_model, parse_signature
from kexport.cli._progress import Progress
from kexport.cli._results import emit
from kexport.errors import LayoutError, SignatureError
from kexport.generation.spec import MANIFEST_KEY, generation_summary

__all__ = ["export"]


def export(args: argparse.Namespace, progress: Progress) -> int:
    """``kexport export MODEL.keras --format F -o OUT [--layout L --name N --version V]``."""

    if args.layout is None:
        if args.name is not None or args.layout_version is not None:
            raise LayoutError("Expected --name and --version only with --layout. Received: "
                              f"--name={args.name!r} --version={args.layout_version!r} "
                              "without --layout.")
        args.format = args.format or "tf_saved_model"
        data, text = _export(args, progress, args.output)
        emit(args, data, text)
        return EXIT_OK if data["ok"] else EXIT_FAILED
    if args.task is not None:
        raise LayoutError("Expected no --layout with --task: a generative artifact is served "
                          f"by `kexport serve` or its runtime's engine. Received: --layout "
                          f"{args.layout} --task {args.task}.")
    args.format = args.format or layouts.layout_format(args.layout)
    routing.format_info(args.format)
    layouts.check_layout(args.layout, args.format)
    name = args.name or layouts.default_name(Path(args.model))
    layouts.check_name(name)
    layouts.choose_version([Path(args.output) / name], args.layout_version)  # before exporting
    with staging_dir(Path(args.output) / name) as stage:
        artifact = stage / f"{name}{routing.format_info(args.format).suffix}"
        data, text = _export(args, progress, os.fspath(artifact))
        if not data["ok"]:  # verification failed: no layout of a wrong artifact
            emit(args, data, text)
            return EXIT_FAILED
        with progress.step(f"Writing the {args.layout} layout"):
            written = layouts.write_layout(artifact, args.output, name, args.layout_version,
                                           layout=args.layout)
    data.pop("output")  # the staged artifact is gone; the layout holds its copy
    data.update(layout=args.layout, repository=args.output,
                models=[m._asdict() for m in written])
    text = text.split("\n", 1)[-1] if data["verification"] else ""
    emit(args, data, "\n".join(
        [f"Wrote {args.layout} layout: model '{m.name}' version {m.version} "
         f"('{m.artifact_path}')." for m in written] + ([text] if text else [])))
    return EXIT_OK


def _export(args: argparse.Namespace, progress: Progress,
            output: str) -> tuple[dict[str, Any], str]:
    """Export (and verify) to ``output``; the result as JSON data and text."""
    routing.format_info(args.format)
    signature = parse_signature(args.input_signature)
    kwargs: dict[str, Any] = {}
    if args.opset is not None:
        kwargs["opset_version"] = args.opset
    if args.quantize is not None or args.calibration is not None:
        kwargs["quantization"] = args.quantize
        kwargs["calibration_data"] = load_data(args.calibration, "--calibration")
    if args.quantize_exclude:
        kwargs["quantization"] = args.quantize
        kwargs["quantization_exclude"] = [name.strip() for names in args.quantize_exclude
                                          for name in names.split(",") if name.strip()]
    sample_data = load_data(args.data)
    with progress.step("Loading model"):
        model = load_model(args.model, args.unsafe)
    backend = keras_backend()
    if args.task is not None:
        return _export_task(args, progress, output, model, backend, kwargs)
    start = time.perf_counter()
    with progress.step(f"Exporting to {args.format} ({backend} backend)"):
        kexport.export_model(model, output, format=args.format, verbose=False,
                             input_signature=signature, overwrite=args.overwrite,
                             sample_data=sample_data,
                             # checked before it is placed, by the same tolerances as below
                             verify=False if args.no_verify else {
                                 "atol": args.atol, "rtol": args.rtol, "seed": args.seed,
                                 "precision": args.precision, "scores": args.scores,
                                 "fresh_process": False},
                             **kwargs)
    export_s = time.perf_counter() - start
    data: dict[str, Any] = {"ok": True, "format": args.format, "backend": backend,
                            "output": output, "size": size_of(output, args.format),
                            "export_seconds": round(export_s, 3), "verification": None,
                            "quantization": args.quantize}
    lines = [f"Wrote {args.format} artifact '{output}' "
             f"({human_size(data['size'])}"
             + (f", quantized {args.quantize}" if args.quantize else "")
             + f") in {export_s:.1f}s from the {backend} backend."]
    if not args.no_verify:
        start = time.perf_counter()
        with progress.step("Verifying in a fresh process"):
            # on --data when given, else on the --calibration data (a quantized
            # artifact means nothing on generated inputs)
            report = kexport.verify(model, output, atol=args.atol, rtol=args.rtol,
                                    precision=args.precision, scores=args.scores,
                                    seed=args.seed, data=sample_data,
                                    calibration_data=kwargs.get("calibration_data"))
        data["verify_seconds"] = round(time.perf_counter() - start, 3)
        data["verification"] = report.to_json()
        data["ok"] = report.ok
        lines.append(report.table())
    else:
        lines.append("Not verified (--no-verify).")
    if args.report is not None:
        with progress.step("Writing the report"):
            kexport.report(model, [output], args.report, data=sample_data,
                           calibration_data=kwargs.get("calibration_data"),
                           seed=args.seed, precision=args.precision, model_file=args.model,
                           verified={output: report} if not args.no_verify else None)
        data["report"] = args.report
        lines.append(f"Report: {args.report}")
    return data, "\n".join(lines)


def _export_task(args: argparse.Namespace, progress: Progress, output: str, model: Any,
                 backend: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``--task generate``: the generative export, whose own check (greedy tokens equal to
    ``lm.generate()``, in a fresh process, before placement) is its verification."""
    if args.no_verify:
        raise SignatureError(
            "--task generate always checks its tokens before writing: expected no "
            "--no-verify. Received: --no-verify.")
    start = time.perf_counter()
    with progress.step(f"Exporting to {args.format} with --task {args.task} "
                       f"({backend} backend)"):
        kexport.export_model(model, output, format=args.format, verbose=False,
                             overwrite=args.overwrite, task=args.task, **kwargs)
    export_s = time.perf_counter() - start
    metadata = kexport.load(output).metadata
    record = (metadata.get(MANIFEST_KEY) or {}).get("verification")
    data: dict[str, Any] = {"ok": True, "format": args.format, "backend": backend,
                            "task": args.task, "output": output,
                            "size": size_of(output, args.format),
                            "export_seconds": round(export_s, 3), "verification": record,
                            "quantization": None}
    lines = [f"Wrote {args.format} artifact '{output}' ({human_size(data['size'])}) for "
             f"--task {args.task} in {export_s:.1f}s from the {backend} backend."]
    lines.extend(generation_summary(metadata))
    return data, "\n".join(lines)

"""The ``kexport`` command line (also ``python -m kexport``).

Verbs: ``export``, ``inspect``, ``verify``, ``bench``, ``report``, ``serve``, ``formats``. Every verb
takes ``--json`` for scripts (one JSON document, the only thing on stdout) and
``-v`` to let the frameworks print their own log lines and warnings, hidden
otherwise (:mod:`kexport.cli._quiet`). Exit codes: 0 success, 1 verification
failed, 2 bad input or usage (a typed kexport error, a missing file, bad
arguments).

This module only builds the parser: the verbs live in :mod:`kexport.cli._commands`
(``export`` in :mod:`kexport.cli._export`) and import Keras and the runtimes
when they run, so ``kexport --help`` stays fast
(kexport's own modules import no framework at import time).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kexport._version import __version__
from kexport.artifact import BACKENDS
from kexport.artifact.quantization import MODES
from kexport.cli import _commands
from kexport.cli._codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kexport.cli._quiet import json_stdout, quiet_libraries
from kexport.layouts import LAYOUTS

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _common(p: argparse.ArgumentParser, backend: bool = False, json_file: bool = False
            ) -> None:
    if json_file:
        p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                       help="write the data as JSON to FILE; without FILE, print one JSON "
                            "document on stdout and nothing else there")
    else:
        p.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout and nothing else there")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="let the frameworks print their own log lines and warnings "
                        "(hidden by default)")
    if backend:
        p.add_argument("--backend", choices=BACKENDS,
                       help="Keras backend to load the model on (default: $KERAS_BACKEND)")


_PRECISIONS = ("f32", "bf16", "f16")


def _precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=_PRECISIONS, default=None,
                   help="precision the artifact's runtime computes in (default f32 on every "
                        "CPU; bf16/f16 for OpenVINO)")


def _tolerances(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=_tolerance, help="absolute tolerance (default: by precision)")
    p.add_argument("--rtol", type=_tolerance, help="relative tolerance (default: by precision)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--scores", metavar="NAME[,NAME]", type=_names, default=None,
                   help="the outputs that are class scores, judged by top-1/top-5 agreement "
                        "for a quantized artifact ('' for none; default: rank-2 outputs "
                        "and probability rows)")
    _precision(p)


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="FILE.npz",
                   help="sample inputs the model really takes, keyed by input name (or "
                        "arr_0, arr_1, ... in input order); every check runs on them "
                        "instead of generated inputs")


def _calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FILE.npz",
                   help="the calibration inputs a quantized artifact was exported with "
                        "(export --calibration): without --data, the checks run on them, as "
                        "the export's did")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="kexport",
        description="Export Keras 3 models from any backend to verified inference artifacts.",
        epilog="Exit codes: 0 success, 1 verification failed, 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"kexport {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser("export", help="export a .keras model (verified by default)",
                       description="Export MODEL.keras to an artifact, then reload the artifact "
                                   "in a fresh process and compare it with the model.")
    p.add_argument("model", metavar="MODEL.keras")
    p.add_argument("--format", "-f", default=None,
                   help="artifact format (see `kexport formats`; default tf_saved_model, "
                        "onnx with --layout triton)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="artifact path (with --layout: the model repository folder)")
    p.add_argument("--layout", choices=tuple(LAYOUTS),
                   help="write a serving layout into OUT: tf-serving (NAME/VERSION/ SavedModel "
                        "+ warm-up records), triton (config.pbtxt + model), kserve (the "
                        "layout of KServe's runtime + an InferenceService YAML)")
    p.add_argument("--name", help="model name in the layout (default: MODEL's file stem)")
    p.add_argument("--version", dest="layout_version", type=_positive, metavar="N",
                   help="layout version (default: the next free number; an existing "
                        "version is never overwritten)")
    p.add_argument("--input-signature", metavar="JSON",
                   help='e.g. \'[{"shape": [null, 64], "dtype": "float32", "name": "x"}]\'')
    p.add_argument("--opset", type=_positive, help="ONNX opset version")
    p.add_argument("--task", choices=("generate",),
                   help="generate: a keras_hub CausalLM as prefill/decode with its key/value "
                        "cache, checked token-exact against lm.generate() in a fresh process "
                        "(the field's text-generation-with-past; see docs/generation.md)")
    p.add_argument("--quantize", choices=MODES, metavar="MODE",
                   help=f"quantize the artifact: {', '.join(MODES)} (formats that quantize: "
                        "see docs/quantization.md); int8 needs --calibration")
    p.add_argument("--quantize-exclude", action="append", metavar="LAYER[,LAYER...]",
                   help="keep these Keras layers (names, or paths such as block/dense) in "
                        "float in the quantized artifact; repeat or separate by commas "
                        "(ONNX; see docs/quantization.md)")
    p.add_argument("--calibration", metavar="FILE.npz",
                   help="calibration inputs for --quantize int8: one batch of typical "
                        "inputs keyed by input name (or arr_0, arr_1, ... in input order); "
                        "the artifact is verified on them unless --data is given")
    p.add_argument("--no-verify", action="store_true", help="skip verification")
    p.add_argument("--report", metavar="REPORT.html",
                   help="also write the HTML report of the artifact (see `kexport report`)")
    p.add_argument("--unsafe", action="store_true",
                   help="load the .keras file with Keras safe mode OFF (runs its Python code)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT even if it holds something other than an artifact")
    _data(p)
    _tolerances(p)
    _common(p, backend=True)

    p = sub.add_parser("inspect", help="show an artifact's endpoints, files, metadata",
                       description="Format, endpoints with input/output names, shapes and "
                                   "dtypes, file sizes, metadata, the stored verification "
                                   "result and operator counts.")
    p.add_argument("artifact", metavar="ARTIFACT")
    _common(p)

    p = sub.add_parser("verify", help="compare an artifact with a .keras model",
                       description="Run ARTIFACT in a fresh process and compare it with "
                                   "MODEL.keras; exit 1 when out of tolerance.")
    p.add_argument("model", metavar="MODEL.keras")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--unsafe", action="store_true", help="Keras safe mode OFF")
    p.add_argument("--no-store", action="store_true",
                   help="do not store the report inside the artifact")
    p.add_argument("--localize", action="store_true",
                   help="also name the first Keras layer whose outputs the artifact gets "
                        "wrong (a probe through the artifact's route, compared layer by "
                        "layer; JSON: key 'localization')")
    _data(p)
    _calibration(p)
    _tolerances(p)
    _common(p, backend=True)

    p = sub.add_parser("bench", help="latency and throughput of an artifact",
                       description="p50/p90/p99 latency and throughput per batch size, next "
                                   "to the Keras model when --model is given.")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--batch", type=_positive, nargs="+", default=[1, 32], metavar="N",
                   help="batch sizes (default: 1 32)")
    p.add_argument("--model", metavar="MODEL.keras", help="also time this Keras model")
    p.add_argument("--endpoint", help="endpoint to time (default: the default endpoint)")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="time budget per batch size and runner (default 1)")
    p.add_argument("--dim-size", type=_positive, default=8,
                   help="size given to dynamic dims other than the batch (default 8)")
    p.add_argument("--unsafe", action="store_true", help="Keras safe mode OFF for --model")
    _precision(p)
    _common(p, backend=True)

    p = sub.add_parser("report", help="one HTML report of a model and its artifacts",
                       description="Verify each ARTIFACT against MODEL.keras (in a fresh "
                                   "process) and write one self-contained HTML page: route, "
                                   "files, endpoints, operators, verification table, error "
                                   "histograms, latency next to the Keras model, "
                                   "quantization, and where a failed artifact goes wrong. "
                                   "Exit 1 when an artifact fails verification.")
    p.add_argument("model", metavar="MODEL.keras")
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html",
                   help="where to write the page")
    p.add_argument("--batch", type=_positive, nargs="+", default=[1, 8], metavar="N",
                   help="batch sizes to time (default: 1 8)")
    p.add_argument("--seconds", type=float, default=0.25,
                   help="time budget per batch size and runner (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--unsafe", action="store_true", help="Keras safe mode OFF")
    _data(p)
    _calibration(p)
    _precision(p)
    _common(p, backend=True, json_file=True)

    p = sub.add_parser("serve", help="serve artifacts over HTTP (KServe v2 / TF-Serving REST)",
                       description="Serve an artifact or a folder of artifacts with the Open "
                                   "Inference Protocol (KServe v2, Triton's HTTP API, with "
                                   "binary tensors) and TF-Serving's REST :predict, until "
                                   "interrupted. See docs/serving.md.")
    p.add_argument("path", metavar="PATH",
                   help="an artifact, or a folder of artifacts (one model per artifact)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one "
                                                          "(default 8000)")
    p.add_argument("--name", help="model name for a single artifact (default: its file stem)")
    p.add_argument("--max-body-bytes", type=_positive, default=32 * 1024 * 1024, metavar="N",
                   help="larger request bodies get HTTP 413 (default 32 MiB)")
    p.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="threads running inference (default: CPU count, at most 8)")
    _common(p)

    p = sub.add_parser("formats", help="the backend x format route table")
    _common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return EXIT_USAGE
    if args.verb == "report":
        # `--json FILE` writes FILE; a bare `--json` prints on stdout as every verb does
        given = args.json
        args.json_file = given if given not in (None, "-") else None
        args.json = given == "-"
    if getattr(args, "backend", None):
        os.environ["KERAS_BACKEND"] = args.backend

    with quiet_libraries(verbose=args.verbose), json_stdout(active=args.json):
        try:
            return _commands.run(args)
        except KeyboardInterrupt:
            print("kexport: interrupted", file=sys.stderr)
            return 130
        except Exception:
            if not args.verbose:
                print("kexport: unexpected error; the libraries' own messages are hidden, "
                      "rerun with -v to see them", file=sys.stderr)
            raise

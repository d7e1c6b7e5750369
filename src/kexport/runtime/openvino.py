"""Runtime for OpenVINO IR artifacts (``name.xml`` + ``name.bin``, or a folder of them).

Each ``.xml`` is one endpoint (its file stem), compiled for the CPU; inputs
are fed by name, outputs come back by name in the manifest's order.

Precision: OpenVINO's CPU plugin runs ``f32`` IR in ``bf16`` by default on
CPUs with bf16 units (AVX512_BF16, AMX), so the same file gives other numbers
on another machine. Every compile here states ``INFERENCE_PRECISION_HINT``
(:func:`kexport._numerics.openvino_config`), ``f32`` unless asked otherwise,
and the precision the compiled model reports is
:attr:`OpenVINOArtifact.precision`. A quantized IR (its manifest's
``quantization`` record) compiles with the same hint: its int8/f16 weights
are the file's, the float parts run in f32. Its record is read into
``metadata``: ``quantization`` (the mode), ``precision`` (``"int8"``,
``"float16"``) and the whole record under ``kexport.quantization``, so
``kexport.verify`` judges it by the mode's thresholds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from kexport._atomic import atomic_target
from kexport._numerics import openvino_config, openvino_precision
from kexport.artifact import (
    check_openvino_weights,
    manifest_default_endpoint,
    read_openvino_metadata,
)
from kexport.artifact.extensions import load_extension, recorded_extensions
from kexport.artifact.quantization import METADATA_KEY as QUANTIZATION_KEY
from kexport.artifact.quantization import read_record
from kexport.errors import ArtifactError
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["PRECISIONS", "REPORT_FILE", "REPORT_KEY", "OpenVINOArtifact", "detect", "open",
           "store_report"]

# Where the verification report lives: an rt_info entry of a single-file IR,
# a JSON file in an IR folder.
REPORT_KEY = "kexport_verification"
REPORT_FILE = "kexport_verification.json"
_REPORT_RE = re.compile(rf'<{REPORT_KEY} value="([^"]*)"\s*/>')

FORMAT = "openvino"
# IR nodes that compute nothing: left out of the operator counts.
_NOT_OPS = frozenset({"Parameter", "Result", "Constant"})
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")


def _is_ir(path: Path) -> bool:
    if path.suffix != ".xml" or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return b"<net" in head


def detect(path: Path) -> bool:
    """An IR ``.xml`` file, or a folder holding IR ``.xml`` files."""
    if path.is_dir():
        return any(_is_ir(p) for p in path.glob("*.xml"))
    return _is_ir(path)


def _info(port: Any, name: str) -> TensorInfo:
    shape = port.get_partial_shape()
    dims = tuple(None if d.is_dynamic else d.get_length() for d in shape)
    kind = port.get_element_type()
    return TensorInfo(name, dims, "string" if kind.get_type_name() == "string"
                      else kind.to_dtype().name)


class OpenVINOArtifact(Artifact):
    """IR file(s) compiled with ``openvino.Core().compile_model(..., "CPU")``."""

    def __init__(self, path: str, files: dict[str, Path], metadata: dict[str, Any],
                 precision: str = "float32") -> None:
        import openvino as ov

        super().__init__(path=path, format=FORMAT)
        core = ov.Core()
        self.metadata = dict(metadata)
        quantized = read_record(self.metadata)
        if quantized is not None:  # the mode, and the precision verify picks its rule by
            self.metadata[QUANTIZATION_KEY] = quantized
            self.metadata["quantization"] = quantized["mode"]
            self.metadata["precision"] = quantized["precision"]
        listed = metadata.get("endpoints", {})
        self._compiled: dict[str, Any] = {}
        self._files = dict(files)
        used: set[str] = set()
        for name, file in files.items():
            compiled = core.compile_model(os.fspath(file), "CPU", openvino_config(precision))
            used.add(openvino_precision(compiled))
            self._compiled[name] = compiled
            known = listed.get(name, {})
            ins = [i["name"] for i in known.get("inputs", [])] or \
                [p.get_any_name() for p in compiled.inputs]
            outs = [o["name"] for o in known.get("outputs", [])] or \
                [p.get_any_name() for p in compiled.outputs]
            self.endpoints[name] = EndpointInfo(
                name, tuple(_info(compiled.input(n), n) for n in ins),
                tuple(_info(compiled.output(n), n) for n in outs))
        self.default_endpoint = manifest_default_endpoint(metadata, self.endpoints)
        # The lowest precision any endpoint was compiled to (all agree in practice).
        self.precision = next((p for p in ("bfloat16", "float16") if p in used),
                              used.pop() if len(used) == 1 else precision)

    @property
    def verification(self) -> dict[str, Any] | None:
        """The report :func:`kexport.verify` stored in the IR, if any."""
        return _read_report(Path(self.path))

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """OpenVINO op types per endpoint, as the IR holds them (before the CPU
        plugin fuses them); ``Parameter``, ``Result`` and ``Constant`` are not counted."""
        import openvino as ov

        core = ov.Core()
        out = {}
        for name, file in self._files.items():
            tally: dict[str, int] = {}
            for op in core.read_model(os.fspath(file)).get_ordered_ops():
                kind = op.get_type_name()
                if kind not in _NOT_OPS:
                    tally[kind] = tally.get(kind, 0) + 1
            out[name] = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    def run_with_state(self, endpoint: str, inputs: dict[str, Any],
                       states: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a stateful IR once on a new infer request, its variables set from
        ``states`` first (``None``: their initial values); outputs and variables after."""
        import openvino as ov

        info = self._endpoint(endpoint)
        feeds = self._feeds(info, inputs)
        request = self._compiled[info.name].create_infer_request()
        for variable in request.query_state():
            if states is not None:
                variable.state = ov.Tensor(states[variable.name])
        request.infer(feeds)
        outputs = {n: request.get_tensor(n).data.copy() for n in info.output_names}
        return outputs, {v.name: v.state.data.copy() for v in request.query_state()}

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        compiled = self._compiled[endpoint.name]
        # OpenVINO takes strings as a NumPy unicode array (an object array: "dtype_map")
        result = compiled({n: v.astype(str) if v.dtype == object else v
                           for n, v in feeds.items()})
        return {n: result[compiled.output(n)] for n in endpoint.output_names}


def open(path: Path, given: str, precision: str = "float32") -> OpenVINOArtifact:
    """Open an IR file or IR folder, compiled for the CPU in ``precision``.

    Raises:
        ArtifactError: when OpenVINO is missing or cannot compile the IR.
    """

    try:
        import openvino  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening an OpenVINO artifact needs openvino: pip install 'kexport[openvino]'"
        ) from e
    files = {path.stem: path} if path.is_file() else {p.stem: p for p in sorted(path.glob("*.xml"))}
    meta = read_openvino_metadata(path) or {}
    for name in recorded_extensions(meta):  # registered before any Core reads the IR
        load_extension(name, f"Opening '{given}' (its manifest lists {name})")
    if path.is_file() and len(meta.get("endpoints", {})) == 1:
        files = {next(iter(meta["endpoints"])): path}
    if path.is_file():
        check_openvino_weights(path, meta)
    try:
        return OpenVINOArtifact(given, files, meta, precision)
    except RuntimeError as e:
        raise ArtifactError(f"Could not open '{given}' as OpenVINO IR: {e}") from e


def _read_report(path: Path) -> dict[str, Any] | None:
    import html

    try:
        if path.is_dir():
            file = path / REPORT_FILE
            return json.loads(file.read_text()) if file.is_file() else None
        found = _REPORT_RE.search(path.read_text(errors="replace"))
        return json.loads(html.unescape(found.group(1))) if found else None
    except (OSError, ValueError):
        return None


def store_report(path: Path, report: dict[str, Any]) -> None:
    """Store ``report`` in the IR: ``rt_info`` of a single ``.xml`` (beside the
    kexport manifest), ``kexport_verification.json`` in an IR folder.

    The file is rewritten beside itself and renamed into place; the weights
    (``.bin``) are untouched, so the recorded weights checksum still holds.
    """
    import html


    text = json.dumps(report, sort_keys=True)
    if path.is_dir():
        with atomic_target(path / REPORT_FILE, is_dir=False, overwrite=True) as tmp:
            tmp.write_text(text)
        return
    xml = path.read_text()
    element = f'<{REPORT_KEY} value="{html.escape(text, quote=True)}" />'
    new, count = _REPORT_RE.subn(lambda _: element, xml, count=1)
    if not count:
        new, count = re.subn(r'(<kexport_manifest value="[^"]*"\s*/>)',
                             lambda m: m.group(1) + element, xml, count=1)
    if not count:
        return  # not an IR kexport wrote: nothing to store beside
    with atomic_target(path, is_dir=False, overwrite=True) as tmp:
        tmp.write_text(new)

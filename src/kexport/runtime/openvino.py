"""Runtime for OpenVINO IR artifacts (``name.xml`` + ``name.bin``, or a folder of them).

Each ``.xml`` is one endpoint (its file stem), compiled for the CPU; inputs
are fed by name, outputs come back by name in the manifest's order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo, manifest_default_endpoint

__all__ = ["OpenVINOArtifact", "detect", "open"]

FORMAT = "openvino"


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
    return TensorInfo(name, dims, port.get_element_type().to_dtype().name)


class OpenVINOArtifact(Artifact):
    """IR file(s) compiled with ``openvino.Core().compile_model(..., "CPU")``."""

    def __init__(self, path: str, files: dict[str, Path], metadata: dict[str, Any]) -> None:
        import openvino as ov

        super().__init__(path=path, format=FORMAT)
        core = ov.Core()
        self.metadata = metadata
        listed = metadata.get("endpoints", {})
        self._compiled: dict[str, Any] = {}
        for name, file in files.items():
            compiled = core.compile_model(os.fspath(file), "CPU")
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

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        compiled = self._compiled[endpoint.name]
        result = compiled(feeds)
        return {n: result[compiled.output(n)] for n in endpoint.output_names}


def open(path: Path, given: str) -> OpenVINOArtifact:
    """Open an IR file or IR folder.

    Raises:
        ArtifactError: when OpenVINO is missing or cannot compile the IR.
    """
    from kexport.errors import ArtifactError
    from kexport.formats.openvino import check_weights, read_metadata

    try:
        import openvino  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening an OpenVINO artifact needs openvino: pip install 'kexport[openvino]'"
        ) from e
    files = {path.stem: path} if path.is_file() else {p.stem: p for p in sorted(path.glob("*.xml"))}
    meta = read_metadata(path) or {}
    if path.is_file() and len(meta.get("endpoints", {})) == 1:
        files = {next(iter(meta["endpoints"])): path}
    if path.is_file():
        check_weights(path, meta)
    try:
        return OpenVINOArtifact(given, files, meta)
    except RuntimeError as e:
        raise ArtifactError(f"Could not open '{given}' as OpenVINO IR: {e}") from e

"""Runtime for PyTorch ExportedProgram artifacts (``.pt2`` file, or a folder of them).

Each ``.pt2`` is one endpoint; ``torch.export.load(file).module()`` is called
with the flat inputs in the manifest's order, and outputs are named by the
manifest. Calls run in float32 with matmuls at "highest" precision, whatever
``torch.set_float32_matmul_precision`` says (:func:`kexport._numerics.torch_compute`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from kexport._numerics import torch_compute
from kexport.artifact import (
    DEFAULT_ENDPOINT,
    TORCH_PROGRAM_SUFFIX,
    manifest_default_endpoint,
    read_torch_program_metadata,
)
from kexport.errors import ArtifactError
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo

__all__ = ["PRECISIONS", "TorchProgramArtifact", "detect", "open"]

FORMAT = "torch"
PRECISIONS: tuple[str, ...] = ("float32",)


def _is_program(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/archive_format") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def detect(path: Path) -> bool:
    """A ``torch.export`` zip archive, or a folder of ``.pt2`` files."""
    if path.is_dir():
        return any(_is_program(p) for p in path.glob("*.pt2"))
    return _is_program(path)


def _infos(items: list[dict[str, Any]]) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo.from_json(i) for i in items)


class TorchProgramArtifact(Artifact):
    """``.pt2`` program(s) run with ``torch.export.load(...).module()``."""

    def __init__(self, path: str, files: dict[str, Path], metadata: dict[str, Any],
                 precision: str = "float32") -> None:
        import torch

        super().__init__(path=path, format=FORMAT)
        self.precision = precision
        self.metadata = metadata
        listed = metadata.get("endpoints", {})
        self._modules: dict[str, Any] = {}
        self._programs: dict[str, Any] = {}
        for name, file in files.items():
            program = torch.export.load(os.fspath(file))
            self._programs[name] = program
            self._modules[name] = program.module()
            known = listed.get(name)
            if known is None:
                names = [s.arg.name for s in program.graph_signature.input_specs
                         if s.kind.name == "USER_INPUT"]
                ins = tuple(TensorInfo(n, (), "float32") for n in names)
                outs: tuple[TensorInfo, ...] = ()
            else:
                ins, outs = _infos(known["inputs"]), _infos(known["outputs"])
            self.endpoints[name] = EndpointInfo(name, ins, outs)
        self.default_endpoint = manifest_default_endpoint(metadata, self.endpoints)

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """ATen operators per endpoint: the targets of the program graph's
        ``call_function`` nodes (e.g. ``aten.linear.default``)."""
        out = {}
        for name, program in self._programs.items():
            tally: dict[str, int] = {}
            for node in program.graph.nodes:
                if node.op == "call_function":
                    key = str(node.target)
                    tally[key] = tally.get(key, 0) + 1
            out[name] = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    def _feeds(self, info: EndpointInfo, inputs: Any) -> dict[str, Any]:
        if info.outputs:
            return super()._feeds(info, inputs)
        import numpy as np

        values = [inputs[n] for n in info.input_names] if isinstance(inputs, dict) else \
            (list(inputs) if isinstance(inputs, (list, tuple)) else [inputs])
        return {n: np.asarray(v) for n, v in zip(info.input_names, values, strict=True)}

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        # np.ascontiguousarray makes a 0-d array 1-d: reshape keeps scalar inputs scalar
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n]).reshape(np.shape(feeds[n])))
                for n in endpoint.input_names]
        with torch_compute():
            out = self._modules[endpoint.name](*args)
        leaves = list(out) if isinstance(out, (list, tuple)) else [out]
        names = endpoint.output_names or [f"output_{i}" for i in range(len(leaves))]
        return {n: t.detach().cpu().numpy() for n, t in zip(names, leaves, strict=True)}


def open(path: Path, given: str, precision: str = "float32") -> TorchProgramArtifact:
    """Open a ``.pt2`` file or program folder (``precision``: float32 only).

    Raises:
        ArtifactError: when PyTorch is missing or cannot load a program.
    """

    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ArtifactError(
            "Opening a .pt2 artifact needs PyTorch: pip install 'kexport[torch]'"
        ) from e
    files = {DEFAULT_ENDPOINT: path} if path.is_file() else \
        {p.stem: p for p in sorted(path.glob(f"*{TORCH_PROGRAM_SUFFIX}"))}
    meta = read_torch_program_metadata(path) or {}
    if path.is_file() and meta.get("endpoints"):
        files = {next(iter(meta["endpoints"])): path}
    try:
        return TorchProgramArtifact(given, files, meta, precision)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ArtifactError(f"Could not open '{given}' as a torch.export program: {e}") from e

"""Runtime for TensorFlow SavedModel artifacts (backed by TensorFlow).

Endpoints are the SavedModel's serving signatures, called with inputs keyed
by name. ``serving_default`` is not listed as an endpoint of its own when it
is an alias of another signature (the first endpoint kexport wrote); it is
the default endpoint either way. The loaded object is kept alive for as long
as the :class:`SavedModelArtifact` lives (functions of a dropped SavedModel
fail with "referencing variables which have been deleted").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kexport._atomic import atomic_target
from kexport.artifact import SAVED_MODEL_MANIFEST, SERVING_DEFAULT, default_endpoint
from kexport.errors import ArtifactError
from kexport.runtime._base import Artifact, EndpointInfo, TensorInfo
from kexport.signature import _dtype_name

__all__ = ["PRECISIONS", "REPORT_FILE", "SavedModelArtifact", "detect", "open",
           "store_report"]

FORMAT = "tf_saved_model"
# TensorFlow's CPU kernels (oneDNN in strict fp32 math mode, its default) compute
# float32; kexport's child processes state that mode (kexport._numerics.child_env).
PRECISIONS: tuple[str, ...] = ("float32",)
REPORT_FILE = "assets.extra/kexport_verification.json"


def detect(path: Path) -> bool:
    """A folder holding ``saved_model.pb`` (or ``.pbtxt``)."""
    return path.is_dir() and ((path / "saved_model.pb").is_file()
                              or (path / "saved_model.pbtxt").is_file())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _spec(name: str, spec: Any, recorded: list[dict[str, Any]] | None = None) -> TensorInfo:
    """The tensor as the signature has it, with the symbols and bounds the
    manifest records for it (``recorded``: the manifest's entries)."""
    shape = spec.shape
    dims = tuple(shape.as_list()) if shape.rank is not None else ()
    info = TensorInfo(name, dims, _dtype_name(spec.dtype))
    entry = next((t for t in recorded or () if t.get("name") == name), None)
    if entry is None or list(entry.get("shape", ())) != list(dims):
        return info
    known = TensorInfo.from_json(dict(entry, dtype=info.dtype))
    return TensorInfo(name, dims, info.dtype, known.symbols, known.bounds)


def _ordered(names: list[str], wanted: list[str] | None) -> list[str]:
    """``names`` in the artifact's flat order when the metadata knows it."""
    if wanted and sorted(wanted) == sorted(names):
        return list(wanted)
    return sorted(names)


class SavedModelArtifact(Artifact):
    """A SavedModel opened with ``tf.saved_model.load``."""

    thread_safe = True  # concurrent run() calls are safe

    def __init__(self, path: str, loaded: Any, root: Path) -> None:
        super().__init__(path=path, format=FORMAT)
        self._loaded = loaded
        self._root = root
        self.metadata = _read_json(root / SAVED_MODEL_MANIFEST) or {}
        described = self.metadata.get("endpoints", {}) if isinstance(
            self.metadata.get("endpoints"), dict) else {}
        signatures = dict(loaded.signatures)
        self._functions: dict[str, Any] = {}
        for key, fn in signatures.items():
            _, kwargs = fn.structured_input_signature
            outputs = fn.structured_outputs
            meta = described.get(key, {})
            in_names = _ordered(list(kwargs), [t.get("name") for t in meta.get("inputs", [])])
            out_names = _ordered(list(outputs), [t.get("name") for t in meta.get("outputs", [])])
            self.endpoints[key] = EndpointInfo(
                key,
                tuple(_spec(n, kwargs[n], meta.get("inputs")) for n in in_names),
                tuple(_spec(n, outputs[n]) for n in out_names),
            )
            self._functions[key] = fn
        # kexport writes the first endpoint twice: under its name and as
        # serving_default. Both signature wrappers then call the same traced
        # function; show that endpoint once, first, as the default.
        alias = _alias_of_default(self._functions)
        if alias is not None:
            del self.endpoints[SERVING_DEFAULT]
        first = default_endpoint(sorted(self.endpoints), alias)
        order = ([first] if first else []) + sorted(n for n in self.endpoints if n != first)
        self.endpoints = {n: self.endpoints[n] for n in order}
        self.default_endpoint = first

    def _run(self, endpoint: EndpointInfo, feeds: dict[str, Any]) -> dict[str, Any]:
        import tensorflow as tf

        fn = self._functions[endpoint.name]
        outputs = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        return {n: outputs[n].numpy() for n in endpoint.output_names}

    @property
    def verification(self) -> dict[str, Any] | None:
        """The report stored by ``kexport.verify`` in ``assets.extra/``."""
        return _read_json(self._root / REPORT_FILE)

    def op_counts(self) -> dict[str, dict[str, int]] | None:
        """TensorFlow op types per endpoint, counted through called functions."""
        counts: dict[str, dict[str, int]] = {}
        for name in self.endpoints:
            graph = self._functions[name].graph.as_graph_def()
            library = {f.signature.name: f for f in graph.library.function}
            tally: dict[str, int] = {}
            _count(list(graph.node), library, tally, set())
            counts[name] = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
        return counts


_CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}


def _callees(fn: Any) -> tuple[str, ...]:
    """Names of the functions a signature wrapper calls."""
    graph = fn.graph.as_graph_def()
    return tuple(n.attr["f"].func.name for n in graph.node if n.op in _CALL_OPS)


def _alias_of_default(functions: dict[str, Any]) -> str | None:
    """The endpoint that ``serving_default`` duplicates, if any."""
    if SERVING_DEFAULT not in functions:
        return None
    target = _callees(functions[SERVING_DEFAULT])
    if not target:
        return None
    for name, fn in functions.items():
        if name != SERVING_DEFAULT and _callees(fn) == target:
            return name
    return None


def _count(nodes: list[Any], library: dict[str, Any], tally: dict[str, int],
           stack: set[str]) -> None:
    for node in nodes:
        if node.op in _CALL_OPS and "f" in node.attr:
            fname = node.attr["f"].func.name
            if fname in library and fname not in stack:
                _count(list(library[fname].node_def), library, tally, stack | {fname})
                continue
        if node.op in ("Placeholder", "Identity", "NoOp", "ReadVariableOp", "Const"):
            continue
        tally[node.op] = tally.get(node.op, 0) + 1


def open(path: Path, given: str, precision: str = "float32") -> SavedModelArtifact:
    """Load the SavedModel at ``path`` with TensorFlow (``precision``: float32 only).

    Raises:
        ArtifactError: when TensorFlow cannot load it.
    """

    try:
        import tensorflow as tf
    except ImportError as e:
        raise ArtifactError(
            "Opening a SavedModel needs TensorFlow: pip install 'kexport[tensorflow]'"
        ) from e
    try:
        loaded = tf.saved_model.load(os.fspath(path))
    except Exception as e:
        raise ArtifactError(
            f"Expected a loadable SavedModel at '{given}'. TensorFlow failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return SavedModelArtifact(given, loaded, path)


def store_report(path: Path, report: dict[str, Any]) -> None:
    """Store ``report`` as ``assets.extra/kexport_verification.json``.

    The file is written beside its final name and renamed into place, so the
    artifact is complete at every moment and an earlier report is replaced
    whole or not at all.
    """

    target = path / REPORT_FILE
    target.parent.mkdir(exist_ok=True)
    with atomic_target(target, is_dir=False, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True))

"""The job record a re-host parent sends to its child: what to rebuild, write and run.

A :class:`Job` is frozen and typed; it travels as ``job.json`` in the job's
private folder (:meth:`Job.to_json` / :meth:`Job.from_json`), next to the
arrays it names (``inputs.npz``, ``carried.npz``, the models' files). The
child reads nothing else: the route it writes (``route``) and the backend the
model came from (``source_backend``) are fields here, so the artifact records
them when it is written, and nothing is parsed back from the artifact or
patched into it afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kexport.capture.endpoint import EndpointRecipe
from kexport.signature import specs_from_json

__all__ = ["CaseRef", "Job", "LayersRequest"]


@dataclass(frozen=True)
class CaseRef:
    """One case of one endpoint: its arrays are ``in__<key>__<i>`` in ``inputs.npz``."""

    key: str
    inputs: int


@dataclass(frozen=True)
class LayersRequest:
    """A diagnosis: run the rebuilt model eagerly on one case, layer by layer (no export)."""

    endpoint: str
    key: str
    inputs: int


@dataclass(frozen=True)
class Job:
    """Everything the child needs for one re-host.

    Attributes:
        format: the artifact format the child writes.
        host: the backend the child runs (its ``KERAS_BACKEND``).
        source_backend: the backend the live model runs on (recorded in the
            artifact as where the model came from).
        mode: ``"model"`` (``export_model`` of one model) or ``"archive"``
            (an ``ExportArchive`` re-created and written there).
        models: the file stem of each tracked model's description.
        imports: modules the child imports before rebuilding from configs.
        output: where, in the job's folder, the child writes the artifact.
        verbose: whether the child's export prints its summary.
        endpoints: the endpoints as data, in the order added.
        cases: endpoint name -> the cases the child runs the artifact on.
        kwargs: the export's options (plain values).
        collections: an archive's variable collections as ``[model, variable]``.
        tracked: how many models an archive tracks.
        calibration: endpoint -> layout of calibration batches in ``carried.npz``.
        samples: the parent's sample policy (``SamplePolicy.to_json()``).
        sample_data: the names of the user's sample arrays in ``sample_data.npz``.
        layers: a diagnosis request instead of an export.
        route: how the artifact is made, as its manifest records it.
        output_dtypes: endpoint -> the live model's integer and boolean output
            dtypes (flat, ``None`` for the others), which the child's program
            returns (:mod:`kexport.rehost.dtypes`).
    """

    format: str
    host: str
    source_backend: str
    mode: str
    models: tuple[str, ...]
    imports: tuple[str, ...]
    output: str
    verbose: bool
    endpoints: tuple[EndpointRecipe, ...]
    cases: Mapping[str, tuple[CaseRef, ...]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    collections: Mapping[str, list[list[int]]] = field(default_factory=dict)
    tracked: int = 0
    calibration: Mapping[str, Any] = field(default_factory=dict)
    samples: Mapping[str, Any] | None = None
    sample_data: tuple[str, ...] | None = None
    layers: LayersRequest | None = None
    route: str = "rehost"
    output_dtypes: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)

    def endpoint(self, name: str) -> EndpointRecipe:
        """The endpoint called ``name``."""
        return next(e for e in self.endpoints if e.name == name)

    def diagnosis(self, endpoint: str, key: str, inputs: int) -> Job:
        """This job, asking for the rebuilt model's layer calls on one case instead."""
        return replace(self, layers=LayersRequest(endpoint, key, inputs))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``job.json``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("endpoints", "cases")}
        out["endpoints"] = [e.to_json() for e in self.endpoints]
        out["cases"] = {n: [asdict(c) for c in cs] for n, cs in self.cases.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        """The job :meth:`to_json` wrote."""
        d = dict(data)
        d["endpoints"] = tuple(EndpointRecipe(e["name"], int(e["model"]), e["method"],
                                              dict(e["kwargs"]),
                                              specs_from_json(e["signature"]))
                               for e in d["endpoints"])
        d["cases"] = {n: tuple(CaseRef(**c) for c in cs) for n, cs in d["cases"].items()}
        d["models"], d["imports"] = tuple(d["models"]), tuple(d["imports"])
        if d.get("sample_data") is not None:
            d["sample_data"] = tuple(d["sample_data"])
        d["output_dtypes"] = {n: tuple(v) for n, v in d.get("output_dtypes", {}).items()}
        if d.get("layers") is not None:
            d["layers"] = LayersRequest(**d["layers"])
        return cls(**d)

"""PyTorch ExportedProgram writer (``torch.export``, ``.pt2``).

What we write:

- for one model (``export_model(..., format="torch")``): one ``.pt2`` file;
  ``torch.export.load(path).module()(*inputs)`` runs it. Its positional
  inputs are the model's flat inputs in kexport's canonical order (list order;
  dict inputs by sorted key), and they carry the Keras input names (the
  program's placeholders are named after them). A model with one output
  returns a tensor, otherwise a tuple in the flat output order;
- dynamic dimensions as ``torch.export.Dim`` objects, one per symbol of the
  signature's dimension plan (:mod:`kexport._dims`): ``batch`` shared by
  every input's axis 0, and the model's own grouping of the other axes
  (``Dim(max=...)`` where an axis is bounded). When ``torch.export`` finds a
  bound the model implies (a position embedding's length), its suggested
  fix is applied and the program's range constraints carry the max, which
  the manifest records; a guard no ``Dim`` can state stays a runtime
  assertion in the program (:func:`export_refined`). Sample inputs use sizes of at least 2
  (``torch.export`` specialises dimensions whose sample size is 0 or 1);
- for an ``ExportArchive`` with several endpoints (or a path without the
  ``.pt2`` suffix): a folder with one ``<endpoint>.pt2`` per endpoint plus
  ``kexport.json``;
- the kexport manifest in every ``.pt2`` as the extra file ``kexport.json``
  (``torch.export.load(path, extra_files={"kexport.json": ""})`` reads it).

The native route exists on the PyTorch backend only (Keras layers are
``torch.nn.Module`` objects there); the other backends re-host the model onto
PyTorch in a child process (:func:`export_rehost`), and their archives too
(``ExportArchive.write_out(path, format="torch")``: endpoints described as
data are rebuilt on PyTorch and verified against the live ones).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kexport import _summary
from kexport._atomic import atomic_target
from kexport._dims import with_bounds
from kexport.artifact import DEFAULT_ENDPOINT, MANIFEST_NAME, TORCH_PROGRAM_SUFFIX, Manifest
from kexport.capture.torch_export import symbolic_sizes
from kexport.context import ExportContext, step_label
from kexport.errors import (
    CaptureError,
    DynamicAxisError,
    KexportError,
    SignatureError,
    SignatureTypeError,
    UnsupportedRouteError,
)
from kexport.formats.torch_program._dynamic import (
    _dynamic_shapes,
    dynamic_shapes_for,
    export_refined,
    program_bounds,
    refuse_specialised,
    sample_sizes,
)
from kexport.formats.torch_program._rnn import scanned_rnn
from kexport.signature import Spec, flatten, flatten_with_paths, map_structure, pack_as

if TYPE_CHECKING:
    from kexport.formats._writer import EndpointArchive

__all__ = [
    "dynamic_shapes_for",
    "export_program",
    "export_refined",
    "program_bounds",
    "sample_sizes",
    "single_model_options",
    "write_archive",
]


def _identifier(name: str, taken: set[str]) -> str:
    """``name`` as a Python identifier (placeholder names must be identifiers)."""
    text = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "input"
    if not (text[0].isalpha() or text[0] == "_"):
        text = "x_" + text
    base, n = text, 1
    while text in taken or text in ("self",):
        text, n = f"{base}_{n}", n + 1
    taken.add(text)
    return text


def _sample(spec: Spec, sizes: dict[str, int]) -> Any:
    import numpy as np
    import torch

    shape = tuple(sizes[spec.symbol(i)] if d is None else d for i, d in enumerate(spec.shape))
    if spec.dtype == "string":
        raise SignatureError(
            "Expected numeric inputs for a torch.export program. Received a string input; "
            "string preprocessing has no PyTorch form."
        )
    rng = np.random.default_rng(0)
    kind = np.dtype(spec.dtype).kind
    value = rng.random(shape).astype(spec.dtype) if kind == "f" else np.zeros(shape, spec.dtype)
    return torch.from_numpy(np.ascontiguousarray(value))


def _flat_module(fn: Callable[..., Any], signature: list[Any], params: list[str],
                 layers: list[Any]) -> Any:
    """A ``torch.nn.Module`` whose ``forward`` takes the flat, named inputs."""
    import torch


    structure = map_structure(lambda s: s, signature)

    class FlatEndpoint(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(layers)

        def forward(self, *flat: Any) -> Any:
            outputs = fn(*pack_as(list(structure), list(flat)))
            leaves = [leaf for _, leaf in flatten_with_paths(outputs)]
            return leaves[0] if len(leaves) == 1 else tuple(leaves)

    module = FlatEndpoint()
    bound = module.forward

    def forward(*flat: Any) -> Any:
        return bound(*flat)

    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])
    module.forward = forward
    return module


def export_program(fn: Callable[..., Any], signature: list[Any], input_names: list[str],
                   layers: list[Any], name: str = DEFAULT_ENDPOINT, *,
                   keep_dynamic: bool = False) -> Any:
    """Capture ``fn`` with ``torch.export`` over flat named inputs; return the program.

    With ``keep_dynamic`` (the ``.pt2`` writer) Keras's recurrent loop is traced
    as one ``torch.scan`` (:mod:`._rnn`), so the batch and time axes stay
    dynamic, and an axis the trace still specialises is refused, never
    declared dynamic (:func:`._dynamic.refuse_specialised`).

    Raises:
        DynamicAxisError: with ``keep_dynamic``, when the program fixes an
            axis the signature declares dynamic.
        CaptureError: when ``torch.export`` cannot capture ``fn`` (the message
            names the endpoint and the step).
    """
    import torch

    taken: set[str] = set()
    params = [_identifier(n, taken) for n in input_names]
    module = _flat_module(fn, signature, params, layers)
    specs = flatten(signature)
    sizes = sample_sizes(specs)
    samples = tuple(_sample(s, sizes) for s in specs)

    def export(dynamic_shapes: dict[str, Any], defer: bool = False) -> Any:
        rnn = scanned_rnn() if keep_dynamic else contextlib.nullcontext()
        with torch.no_grad(), symbolic_sizes(), rnn:
            return torch.export.export(module, samples, dynamic_shapes=dynamic_shapes,
                                       strict=False,
                                       prefer_deferred_runtime_asserts_over_guards=defer)

    try:
        program = export_refined(export, _dynamic_shapes(signature, params),
                                 deferring=lambda shapes: export(shapes, defer=True),
                                 keep_dynamic=keep_dynamic)
    except KexportError:
        raise
    except Exception as e:  # every capture failure becomes a typed error
        if keep_dynamic and _specialised_in(e):
            raise DynamicAxisError(
                f"Expected a torch.export program of endpoint '{name}' whose dynamic axes "
                "stay dynamic, as the signature declares them. Received: torch.export "
                f"specialised them ({_specialised_in(e)}). Nothing was written. Next step: "
                "declare those axes static in `input_signature` if one size is what you "
                "serve, or export to another format.") from e
        raise CaptureError(
            f"{step_label('capture', 'torch.export')}: endpoint '{name}' could not be exported: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}. Next step: make "
            "the dynamic dimensions of `input_signature` static where the model needs them."
        ) from e
    if keep_dynamic:
        refuse_specialised(program, specs, list(input_names), name)
    return program


def _specialised_in(error: BaseException) -> str:
    """The ``name = size`` fixes that ``torch.export`` suggests in ``error``: the
    dynamic axes its trace pinned to the sample's size."""
    import re

    fixes = re.findall(r"^\s*(\w+) = (\d+)\s*$", str(error).split("Suggested fixes", 1)[-1],
                       re.MULTILINE) if "Suggested fixes" in str(error) else []
    return ", ".join(f"{name} = {size}" for name, size in fixes)


def _program_output_specs(program: Any, specs: list[Spec]) -> list[Spec]:
    """The output specs as the program has them: an axis whose size is symbolic in
    the program is dynamic (the endpoint only saw one sample's output sizes)."""
    import torch

    output = next((n for n in program.graph.nodes if n.op == "output"), None)
    values = [getattr(a, "meta", {}).get("val") for a in (output.args[0] if output else ())]
    if len(values) != len(specs):
        return specs
    out = []
    for spec, value in zip(specs, values, strict=True):
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) != len(spec.shape):
            out.append(spec)
            continue
        out.append(Spec(tuple(None if isinstance(d, torch.SymInt) else int(d) for d in shape),
                        spec.dtype, spec.name))
    return out


def _manifest(archive: EndpointArchive, layout: str, context: ExportContext) -> Manifest:
    import torch

    return Manifest.build(archive.endpoints, format="torch", backend=archive.backend,
                          file_suffix=TORCH_PROGRAM_SUFFIX, torch_version=torch.__version__,
                          layout=layout, **context.recorded())


def _strip_source_locations(program: Any) -> None:
    """Drop the ``stack_trace`` that ``torch.export`` keeps on every node.

    The traces name the Python files that built the graph (our install, the
    user's project), and ``torch.export.save`` writes them into the ``.pt2``.
    """
    import torch

    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)


def _save(program: Any, path: Path, manifest: Manifest) -> None:
    import torch

    _strip_source_locations(program)
    # Saving to a path names the zip's root folder after the (temporary) file
    # name; through a file object torch uses a neutral name instead.
    with open(path, "wb") as f:
        torch.export.save(program, f,
                          extra_files={MANIFEST_NAME: manifest.dumps(indent=None)})


def write_archive(archive: EndpointArchive, filepath: str | os.PathLike[str],
                  options: Any | None = None, *,
                  context: ExportContext) -> None:
    """Write ``archive`` as ``.pt2`` program(s): one file, or a folder per endpoint.

    Args:
        archive: endpoints on the PyTorch backend.
        filepath: a ``.pt2`` file (one endpoint) or a folder.
        options: unused; must be ``None``.
        context: the export's context (overwrite, the sample policy recorded).

    Archives built on TensorFlow/JAX reach this function on the PyTorch
    backend: ``ExportArchive.write_out(path, format="torch")`` re-hosts them
    there (``kexport.routing.archive_host``), then verifies them against the live
    endpoints.

    Raises:
        UnsupportedRouteError: when called directly with an archive that is
            not on the PyTorch backend.
        CaptureError: when ``torch.export`` fails for an endpoint.
    """
    if options is not None:
        raise SignatureError(f"Expected options=None for format='torch'. Received: {options!r}")
    if archive.backend != "torch":  # the capture tells; not a backend branch of ours
        raise UnsupportedRouteError(
            f"An ExportArchive built on the {archive.backend} backend holds TensorFlow "
            "functions, which torch.export cannot read. Expected an archive built with "
            "KERAS_BACKEND=torch. Next step: call archive.write_out(path, format='torch'), "
            "which re-hosts the archive onto PyTorch (write_archive is only its in-process "
            "step on the PyTorch backend)."
        )
    layers = list(archive.trackables()["tracked_layers"])
    single = os.fspath(filepath).endswith(TORCH_PROGRAM_SUFFIX) and len(archive.endpoints) == 1
    programs = {e.name: export_program(e.function, e.signature, e.input_names, layers, e.name,
                                       keep_dynamic=True)
                for e in archive.endpoints}
    for e in archive.endpoints:  # the bounds torch.export found go into the manifest
        e.signature = with_bounds(e.signature, program_bounds(programs[e.name],
                                                              flatten(e.signature)))
        e.output_specs = _program_output_specs(programs[e.name], e.output_specs)
    manifest = _manifest(archive, "file" if single else "folder", context)
    with atomic_target(filepath, is_dir=not single, overwrite=context.overwrite) as tmp:
        if single:
            _save(programs[archive.endpoints[0].name], tmp, manifest)
        else:
            for e in archive.endpoints:
                _save(programs[e.name], tmp / f"{e.name}{TORCH_PROGRAM_SUFFIX}", manifest)
            (tmp / MANIFEST_NAME).write_text(manifest.dumps())
        context.check_staged(tmp)  # before it is placed: a failed check places nothing
    if context.printer.on:
        _summary.print_summary("torch", archive.endpoints, filepath,
                               say=context.printer)


def single_model_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A single-model ``.pt2`` export takes no options (dynamic dims come from the
    signature).

    Raises:
        SignatureError: for any option given.
    """
    if options:
        raise SignatureTypeError(
            f"Unexpected keyword arguments for format='torch': {sorted(options)}. "
            "Expected none (dynamic dims come from `input_signature`)."
        )
    return {}, {}

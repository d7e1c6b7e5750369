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
from kexport.check import samples
from kexport.errors import (
    CaptureError,
    KexportError,
    SignatureError,
    SignatureTypeError,
    UnsupportedRouteError,
)
from kexport.signature import Spec, flatten, flatten_with_paths, map_structure, pack_as

if TYPE_CHECKING:
    from kexport.formats._writer import EndpointArchive

__all__ = [
    "dynamic_shapes_for",
    "export_program",
    "export_refined",
    "program_bounds",
    "single_model_options",
    "write_archive",
]

_SAMPLE_SIZES = (3, 5, 7, 11, 13, 17)  # sample size per dynamic axis position (>= 2)


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


def sample_sizes(specs: list[Spec], sizes: tuple[int, ...] = _SAMPLE_SIZES) -> dict[str, int]:
    """A trace size per symbol: distinct (so ``torch.export`` unifies nothing the
    plan keeps apart), at least 2, within the symbol's bound."""
    out: dict[str, int] = {}
    for spec in specs:
        for axis in spec.dynamic_axes:
            name = spec.symbol(axis)
            if name not in out:
                size = sizes[min(len(out), len(sizes) - 1)]
                bound = spec.bound(axis)
                out[name] = size if bound is None else max(2, min(size, bound))
    return out


def dynamic_shapes_for(specs: list[Spec], **dim_options: Any) -> list[dict[int, Any] | None]:
    """One ``{axis: torch.export.Dim}`` per flat input (``None`` without dynamic
    axes): one ``Dim`` per symbol of the plan, bounded where the plan bounds it."""
    import torch

    dims: dict[str, Any] = {}
    out: list[dict[int, Any] | None] = []
    for spec in specs:
        axes = {}
        for axis in spec.dynamic_axes:
            name = spec.symbol(axis)
            if name not in dims:
                options = dict(dim_options)
                if spec.bound(axis) is not None:
                    options["max"] = spec.bound(axis)
                dims[name] = torch.export.Dim(name, **options)
            axes[axis] = dims[name]
        out.append(axes or None)
    return out


def _dynamic_shapes(signature: list[Any], params: list[str]) -> dict[str, Any]:
    return dict(zip(params, dynamic_shapes_for(flatten(signature)), strict=True))


def _in_chain(error: BaseException, text: str) -> list[BaseException]:
    """The exceptions of ``error``'s cause/context chain whose message holds ``text``."""
    out, seen = [], set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if text in str(cause):
            out.append(cause)
        cause = cause.__cause__ or cause.__context__
    return out


def _suggested(error: BaseException, dynamic_shapes: Any) -> Any | None:
    """``dynamic_shapes`` with the fixes ``torch.export`` suggests in ``error``
    applied, or ``None`` when it suggests none it can read back."""
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    for cause in _in_chain(error, "Suggested fixes"):
        try:
            return refine_dynamic_shapes_from_suggested_fixes(str(cause), dynamic_shapes)
        except Exception:  # not a message torch can read back: the next one, or give up
            continue
    return None


def export_refined(export: Callable[[Any], Any], dynamic_shapes: Any, tries: int = 3, *,
                   deferring: Callable[[Any], Any] | None = None) -> Any:
    """``export(dynamic_shapes)``; when ``torch.export`` reports constraints the
    model implies (``d1 <= 16``, ``d2 == d1``), retry with its suggested fixes
    applied (``refine_dynamic_shapes_from_suggested_fixes``), at most ``tries``
    times.

    A constraint can be violated with no fix to suggest: a guard that a
    ``Dim`` (a range, or a linear relation to another ``Dim``) cannot state,
    such as ``1 % ((d1 - 1) // 2 + 1) != 0`` (the frame count after a
    stride-2 convolution is not 1), which ``torch.export`` cannot prove over
    the range even where it always holds. Then, where given, the export is
    retried once as ``deferring(dynamic_shapes)``: ``torch.export`` with
    ``prefer_deferred_runtime_asserts_over_guards=True``, which keeps such
    guards as runtime assertions in the program (a size that fails one is
    refused when the program runs, never computed wrongly) while the ranges
    found stay range constraints (:func:`program_bounds`).
    """
    run, refined_times = export, 0
    while True:
        try:
            return run(dynamic_shapes)
        except Exception as e:
            refined = _suggested(e, dynamic_shapes) if refined_times < tries else None
            if refined is not None and refined != dynamic_shapes:
                dynamic_shapes, refined_times = refined, refined_times + 1
                continue
            if deferring is not None and run is export and _in_chain(e, "Constraints violated"):
                run = deferring
                continue
            raise


def program_bounds(program: Any, specs: list[Spec]) -> dict[str, int]:
    """The max that ``program``'s range constraints put on each symbol of ``specs``."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind.name == "USER_INPUT"]
    by_name = {n.name: n for n in inputs}
    out: dict[str, int] = {}
    for spec, name in zip(specs, user, strict=False):
        val = by_name[name].meta.get("val") if name in by_name else None
        if val is None:
            continue
        for axis in spec.dynamic_axes:
            dim = val.shape[axis]
            expr = getattr(getattr(dim, "node", None), "expr", None)
            found = program.range_constraints.get(expr) if expr is not None else None
            upper = getattr(found, "upper", None)
            if upper is None or getattr(upper, "is_finite", True) is False:
                continue  # no max (int_oo)
            try:
                bound = int(upper)
            except Exception:  # a symbolic upper we cannot read as a number
                continue
            if bound < 2**31 - 2:  # torch's "no max" is int_oo or a huge int
                out[spec.symbol(axis)] = bound
    return out


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
                   layers: list[Any], name: str = DEFAULT_ENDPOINT) -> Any:
    """Capture ``fn`` with ``torch.export`` over flat named inputs; return the program.

    Raises:
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
        with torch.no_grad(), symbolic_sizes():
            return torch.export.export(module, samples, dynamic_shapes=dynamic_shapes,
                                       strict=False,
                                       prefer_deferred_runtime_asserts_over_guards=defer)

    try:
        return export_refined(export, _dynamic_shapes(signature, params),
                              deferring=lambda shapes: export(shapes, defer=True))
    except KexportError:
        raise
    except Exception as e:  # every capture failure becomes a typed error
        raise CaptureError(
            f"Step 2/3 (capture, torch.export): endpoint '{name}' could not be exported: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}. Next step: make "
            "the dynamic dimensions of `input_signature` static where the model needs them."
        ) from e


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


def _manifest(archive: EndpointArchive, layout: str) -> Manifest:
    import torch

    return Manifest.build(archive.endpoints, format="torch", backend=archive.backend,
                          file_suffix=TORCH_PROGRAM_SUFFIX, torch_version=torch.__version__,
                          layout=layout, **samples.recorded())


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
                  options: Any | None = None, verbose: bool = True) -> None:
    """Write ``archive`` as ``.pt2`` program(s): one file, or a folder per endpoint.

    Args:
        archive: endpoints on the PyTorch backend.
        filepath: a ``.pt2`` file (one endpoint) or a folder.
        options: unused; must be ``None``.
        verbose: print a summary.

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
    programs = {e.name: export_program(e.function, e.signature, e.input_names, layers, e.name)
                for e in archive.endpoints}
    for e in archive.endpoints:  # the bounds torch.export found go into the manifest
        e.signature = with_bounds(e.signature, program_bounds(programs[e.name],
                                                              flatten(e.signature)))
        e.output_specs = _program_output_specs(programs[e.name], e.output_specs)
    manifest = _manifest(archive, "file" if single else "folder")
    with atomic_target(filepath, is_dir=not single) as tmp:
        if single:
            _save(programs[archive.endpoints[0].name], tmp, manifest)
        else:
            for e in archive.endpoints:
                _save(programs[e.name], tmp / f"{e.name}{TORCH_PROGRAM_SUFFIX}", manifest)
            (tmp / MANIFEST_NAME).write_text(manifest.dumps())
    if verbose:
        _summary.print_summary("torch", archive.endpoints, filepath)


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

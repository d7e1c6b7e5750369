"""``quantization_exclude=``: Keras layers kept in float, mapped to a graph's nodes.

One rule for every format that quantizes, in two steps:

1. :func:`resolve_layers` checks the requested names against the model
   *before any work*: a layer is named by its ``name``, by its path from the
   model (``"block/inner"``, nested models and subclassed sublayers
   included), by that path with the model's name in front, or by Keras's
   ``layer.path``. An unknown name, or a bare name several layers share, is a
   :class:`~kexport.errors.QuantizationError` listing the valid names.
   Each resolved layer is an :class:`ExcludedLayer`: its chain of layer names
   from the model and, on PyTorch, its module path (the attribute names
   ``torch.nn.Module.named_modules`` reports).
2. :func:`excluded_nodes` maps them to a graph's nodes, given each node's
   scope (the segments its converter put in its name) and the graph's
   :data:`NAMINGS` kind, which the format's writer declares per route:

   - ``"layer_names"``: Keras name scopes, as ``tf2onnx`` and OpenVINO's
     TensorFlow frontend keep them from a ``tf.function``
     (``net_1/block_1/inner_1/MatMul``: TensorFlow adds ``_<n>`` to repeated
     scopes);
   - ``"module_paths"``: PyTorch module attribute paths below the model, as
     ``torch.onnx`` names nodes (``/model/block/inner/MatMul``; the writer
     drops its own wrapper's segment), or as the OpenVINO writer reads them
     from ``torch.export``'s ``nn_module_stack``;
   - ``None``: the converter keeps no layer names (``jax2onnx``): the route
     refuses with :class:`~kexport.errors.LayerMappingError`, so the route
     table tries the next route, and the caller gets that error when none is
     left.

   A node belongs to a layer when its scope starts with the layer's chain. A
   layer that matches no node, or a node two of the model's layers could own
   (siblings ``dense`` and ``dense_1`` under TensorFlow's renaming), is a
   :class:`~kexport.errors.LayerMappingError` too: an exclusion is never a
   silent no-op. :func:`excluded_nodes_by_graph` does the same for an
   artifact of several graphs (an archive's endpoints): each layer in one
   of them at least.

:func:`check_exclude` checks the option itself (a list of names, given with a
quantization mode the format can keep layers out of; see
``FormatDescriptor.exclude_modes``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kexport.artifact.descriptors import FORMATS
from kexport.errors import LayerMappingError, QuantizationError, describe

__all__ = ["NAMINGS", "ExcludedLayer", "check_exclude", "check_naming", "exclude_formats",
           "excluded_nodes", "excluded_nodes_by_graph", "resolve_layers"]

#: How a graph's node names carry the layers they came from (see the module doc).
NAMINGS: tuple[str, ...] = ("layer_names", "module_paths")
_LISTED = 40  # valid layer names listed in an error, at most


@dataclass(frozen=True)
class ExcludedLayer:
    """One layer of ``quantization_exclude``, resolved against the model.

    Attributes:
        path: its names from the model down, the model's own name left out
            (``"block/inner"``): what the artifact records and a re-host
            child resolves again.
        names: the whole chain of layer names, the model's first.
        modules: its module attribute path below the model on PyTorch
            (``("block", "inner")``), ``None`` where layers are not modules.
    """

    path: str
    names: tuple[str, ...]
    modules: tuple[str, ...] | None = None


def exclude_formats() -> list[str]:
    """The formats that keep layers in float in some mode."""
    return [name for name, d in FORMATS.items() if d.exclude_modes]


def check_exclude(format: str, mode: str | None, exclude: Any) -> tuple[str, ...]:
    """Check the ``quantization_exclude=`` option itself; return the names.

    Raises:
        QuantizationError: not a list/tuple of non-empty str; given without a
            quantization mode; a format (or mode) that cannot keep layers in
            float (the message names those that can).
    """
    if exclude is None:
        return ()
    if isinstance(exclude, str) or not isinstance(exclude, (list, tuple)) or not exclude \
            or not all(isinstance(n, str) and n for n in exclude):
        raise QuantizationError(
            "Expected `quantization_exclude` to be a non-empty list of Keras layer names "
            f"(or paths such as 'block/dense'). Received: {describe(exclude)}")
    if mode is None:
        raise QuantizationError(
            "`quantization_exclude` keeps layers in float in a quantized artifact, so it "
            f"needs a quantization mode. Received: quantization=None, quantization_exclude="
            f"{list(exclude)}. Next step: pass quantization='dynamic_int8' (or 'int8', "
            "'float16'), or drop quantization_exclude.")
    descriptor = FORMATS.get(format)
    modes = descriptor.exclude_modes if descriptor is not None else ()
    if mode not in modes:
        others = [f for f in exclude_formats() if f != format]
        what = (f"in quantization={mode!r} (it does in {list(modes)})" if modes else
                "(its converter offers no supported way to keep chosen layers in float)")
        raise QuantizationError(
            f"format={format!r} cannot keep layers in float {what}. Received: "
            f"quantization_exclude={list(exclude)}. Formats that can: {others or 'none'}. "
            "kexport never quantizes layers it was asked to keep in float.")
    return tuple(exclude)


@dataclass(frozen=True)
class _Layer:
    layer: Any
    names: tuple[str, ...]
    modules: tuple[str, ...] | None

    @property
    def path(self) -> str:
        return "/".join(self.names[1:])


def _layers(roots: Sequence[Any]) -> list[_Layer]:
    """Every layer below ``roots`` (each once, at the first place it is found),
    with its chain of names and, on PyTorch, its module path."""
    found: list[_Layer] = []
    seen: set[int] = set()
    for root in roots:
        modules: dict[int, tuple[str, ...]] = {}
        named = getattr(root, "named_modules", None)
        if callable(named):  # PyTorch: Keras layers are torch modules
            try:
                modules = {id(m): tuple(p.split(".")) for p, m in named() if p}
            except Exception:
                modules = {}

        def visit(layer: Any, chain: tuple[str, ...], modules: dict[int, tuple[str, ...]]
                  ) -> None:
            for child in layer._flatten_layers(include_self=False, recursive=False):
                if id(child) in seen or type(child).__name__ == "InputLayer":
                    continue
                seen.add(id(child))
                names = (*chain, child.name)
                found.append(_Layer(child, names, modules.get(id(child))))
                visit(child, names, modules)

        visit(root, (root.name,), modules)
    return found


def _aliases(entry: _Layer) -> set[str]:
    keras_path = getattr(entry.layer, "path", None)
    return {entry.layer.name, entry.path, "/".join(entry.names),
            *([keras_path] if isinstance(keras_path, str) else [])}


def resolve_layers(model: Any, exclude: Iterable[str]) -> tuple[ExcludedLayer, ...]:
    """The layers ``exclude`` names in ``model`` (a Keras model or layer, or a
    list of them: an archive's tracked models).

    Raises:
        QuantizationError: a name that is no layer of the model (the message
            lists the valid names), or a bare name several layers share (it
            lists their paths).
    """
    roots = list(model) if isinstance(model, (list, tuple)) else [model]
    every = _layers(roots)
    resolved: list[ExcludedLayer] = []
    unknown: list[str] = []
    for request in exclude:
        hits = [e for e in every if request in _aliases(e)]
        if not hits:
            unknown.append(request)
            continue
        if len(hits) > 1:
            raise QuantizationError(
                f"`quantization_exclude` names layer '{request}', which several layers of "
                f"the model are called: {[h.path for h in hits]}. Expected one layer: "
                "give its path instead.")
        hit = hits[0]
        layer = ExcludedLayer(hit.path, hit.names, hit.modules)
        if layer not in resolved:
            resolved.append(layer)
    if unknown:
        valid = [e.path for e in every]
        listed = valid[:_LISTED] + ([f"... ({len(valid) - _LISTED} more)"]
                                    if len(valid) > _LISTED else [])
        owner = ", ".join(f"'{r.name}'" for r in roots)
        raise QuantizationError(
            f"Expected `quantization_exclude` to name layers of model {owner} (by name, or "
            f"by path for nested ones). Received unknown: {unknown}. Valid layers: {listed}")
    return tuple(resolved)


_SUFFIX = re.compile(r"_\d+$")


def _segment_is(segment: str, name: str, naming: str) -> bool:
    if segment == name:
        return True
    # TensorFlow's name scopes: a repeated scope gets "_<n>"
    return naming == "layer_names" and segment.startswith(name) \
        and _SUFFIX.fullmatch(segment[len(name):]) is not None


class _Owners:
    """Which layer each node of a ``"layer_names"`` graph came from.

    TensorFlow makes scopes unique by appending ``_<n>``, so scope ``dense_1``
    may be layer ``dense`` renamed or layer ``dense_1``. Among one parent's
    children, a scope only one child can own is that child's; a scope two
    children could own goes to the one left without a scope of its own
    (``dense_1``, ``dense_1_2``: ``dense_1_2`` is ``dense_1``'s, so ``dense_1``
    is ``dense``'s). What stays ambiguous is recorded, never guessed.
    """

    def __init__(self, every: list[_Layer], scopes: Mapping[str, Sequence[str]],
                 rooted: bool) -> None:
        self._pending: dict[tuple[str, ...], list[tuple[str, tuple[str, ...]]]] = {}
        self.children: dict[tuple[str, ...], list[_Layer]] = {}
        for entry in every:
            self.children.setdefault(entry.names[:-1], []).append(entry)
        self.owner: dict[str, tuple[str, ...]] = {}
        self.ambiguous: dict[str, list[tuple[str, ...]]] = {}
        roots = [names for names in self.children if len(names) == 1]
        for node, scope in scopes.items():
            if rooted:
                root = next((r for r in roots if scope and _segment_is(scope[0], r[0],
                                                                        "layer_names")), None)
                if root is not None:
                    self._pending.setdefault(root, []).append((node, tuple(scope[1:])))
            else:
                for root in roots[:1]:
                    self._pending.setdefault(root, []).append((node, tuple(scope)))
        while self._pending:
            parent, items = self._pending.popitem()
            self._level(parent, items)

    def _level(self, parent: tuple[str, ...], items: list[tuple[str, tuple[str, ...]]]) -> None:
        kids = self.children.get(parent, [])
        candidates = {scope[0]: [k for k in kids if _segment_is(scope[0], k.names[-1],
                                                                  "layer_names")]
                      for _, scope in items if scope}
        claimed = {c[0].names for c in candidates.values() if len(c) == 1}
        for node, scope in items:
            options = candidates.get(scope[0], []) if scope else []
            if len(options) > 1:
                left = [k for k in options if k.names not in claimed]
                if len(left) != 1:
                    self.ambiguous[node] = [k.names for k in options]
                    continue
                options = left
            if not options:  # an operator of ``parent`` itself
                self.owner[node] = parent
            else:
                self._pending.setdefault(options[0].names, []).append((node, scope[1:]))


def _inside(names: Sequence[str], layer: Sequence[str]) -> bool:
    return tuple(names[:len(layer)]) == tuple(layer)


def check_naming(layers: Sequence[ExcludedLayer], naming: str | None, route: str) -> None:
    """Refuse a route whose graph cannot name ``layers``' nodes, before it
    converts anything.

    Raises:
        LayerMappingError: the route keeps no layer names, or names nodes by
            PyTorch module paths and a layer is no module attribute (a layer
            of a Functional model).
    """
    if not layers:
        return
    if naming not in NAMINGS:
        raise LayerMappingError(
            f"Route '{route}' keeps no Keras layer names in its graph, so it cannot keep "
            f"layers {[layer.path for layer in layers]} of quantization_exclude in float. "
            "Next step: export on the TensorFlow backend (tf2onnx keeps Keras name "
            "scopes), or drop quantization_exclude.")
    unnamed = [layer.path for layer in layers if naming == "module_paths" and not layer.modules]
    if unnamed:
        raise LayerMappingError(
            f"Route '{route}' names graph nodes by PyTorch module paths, and layers "
            f"{unnamed} of quantization_exclude are not module attributes of the model "
            "(e.g. layers of a Functional model), so their nodes cannot be told apart. "
            "Next step: export on the TensorFlow backend, or drop quantization_exclude.")


def excluded_nodes(model: Any, layers: Sequence[ExcludedLayer],
                   scopes: Mapping[str, Sequence[str]], naming: str | None,
                   route: str, required: bool = True) -> list[str]:
    """The nodes of a graph that came from ``layers``.

    Args:
        model: the model ``layers`` were resolved in (or a list of models);
            its other layers tell the owner of a renamed scope.
        layers: from :func:`resolve_layers`.
        scopes: each node's name -> its scope segments (its name's, without
            the operator's own segment).
        naming: the graph's kind of names (:data:`NAMINGS`), ``None`` when
            its converter keeps no layer names.
        route: the route, for messages.
        required: every layer must match a node of this graph (``False``:
            one graph of several, e.g. an archive's endpoint, whose caller
            checks that each layer matched in some graph).

    Raises:
        LayerMappingError: the graph keeps no layer names, a layer matches no
            node, or a node could come from two layers.
    """
    if not layers:
        return []
    check_naming(layers, naming, route)
    roots = list(model) if isinstance(model, (list, tuple)) else [model]
    nodes: list[str] = []
    if naming == "module_paths":  # attribute names: unique under their parent
        for layer in layers:
            assert layer.modules is not None  # check_naming
            mine = [n for n, s in scopes.items() if _inside(s, layer.modules)]
            _found(layer, mine, route, required)
            nodes.extend(n for n in mine if n not in nodes)
        return nodes
    # the model's own scope prefixes its nodes' names, unless the endpoint
    # calls its layers directly (an archive's function)
    rooted = any(scope and _segment_is(scope[0], root.name, naming)
                 for scope in scopes.values() for root in roots)
    owners = _Owners(_layers(roots), scopes, rooted)
    for layer in layers:
        for node, options in owners.ambiguous.items():
            if any(_inside(o, layer.names) or _inside(layer.names, o) for o in options):
                raise LayerMappingError(
                    f"Route '{route}': node '{node}' could come from any of the layers "
                    f"{['/'.join(o[1:]) for o in options]} (TensorFlow appends _<n> to "
                    "repeated name scopes), so quantization_exclude cannot tell them apart. "
                    "Next step: give these layers names that do not end in _<n>.")
        mine = [n for n, names in owners.owner.items() if _inside(names, layer.names)]
        _found(layer, mine, route, required)
        nodes.extend(n for n in mine if n not in nodes)
    return nodes


def excluded_nodes_by_graph(model: Any, layers: Sequence[ExcludedLayer],
                            graphs: Mapping[str, tuple[Mapping[str, Sequence[str]], str | None]],
                            route: str) -> dict[str, list[str]]:
    """Each graph's nodes that came from ``layers``, for an artifact of several
    graphs (an archive's endpoints): a layer may be missing from some graphs,
    never from all of them.

    Args:
        model, layers, route: as for :func:`excluded_nodes`.
        graphs: graph name -> (its nodes' scopes, its :data:`NAMINGS` kind).

    Raises:
        LayerMappingError: as :func:`excluded_nodes`; a layer that matches no
            node of any graph.
    """
    found = {name: excluded_nodes(model, layers, scopes, naming, route, required=False)
             for name, (scopes, naming) in graphs.items()}
    for layer in layers:
        if not any(excluded_nodes(model, (layer,), scopes, naming, route, required=False)
                   for scopes, naming in graphs.values()):
            _found(layer, [], route, required=True)
    return found


def _found(layer: ExcludedLayer, mine: list[str], route: str, required: bool) -> None:
    if not mine and required:
        raise LayerMappingError(
            f"Layer '{layer.path}' of quantization_exclude matched no node of the graph "
            f"written by route '{route}' (it computes nothing there, or the converter "
            "renamed its nodes). kexport never drops an exclusion silently. Next step: "
            "name a layer that computes something, or drop it from quantization_exclude.")

"""A Functional model with string/lookup layers on its inputs, to one ONNX graph.

The model is split where the preprocessing ends (:func:`._prefix.find_prefix`):
the prefix is kexport's own lowering (standard ONNX ops), the rest (from the
lookup layers' outputs on) goes through the backend's normal ONNX strategy,
and the two graphs are merged with ``onnx.compose`` (the rest's names kept,
the Keras input and output names on the merged graph). The merged graph is
checked against the live model on generated text (vocabulary words, out-of-
vocabulary words, case, punctuation, non-ASCII, empty strings:
:mod:`kexport.check.text`) before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

from kexport import _summary
from kexport.check.live import live_reference
from kexport.context import ExportContext, step_label
from kexport.errors import SignatureError, UnsupportedRouteError
from kexport.formats.onnx._accept import Acceptance, NotTraceable
from kexport.formats.onnx._graph import _spec_json
from kexport.formats.onnx._options import _check_threshold
from kexport.formats.onnx._write import write_model
from kexport.formats.onnx.strings._prefix import find_prefix, prefix_model, string_layers
from kexport.signature import Spec, flat_names, flatten, normalize_for_model

__all__ = ["STRING_OPSET", "export_strings", "has_string_layers"]

#: ``StringSplit`` is opset 20: graphs holding a lowering are written at 20 or later.
STRING_OPSET = 20
_ROUTE = "kexport's string lowering + the backend's ONNX strategy"
_REFUSED_OPTIONS = ("quantization", "calibration_data", "quantization_exclude")


def has_string_layers(model: Any) -> bool:
    """Whether ``model`` holds a string or lookup layer (then :func:`export_strings`)."""
    return bool(string_layers(model))


def _opset(kwargs: dict[str, Any]) -> int:
    opset = kwargs.pop("opset_version", None)
    if opset is None:
        return STRING_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < STRING_OPSET:
        raise SignatureError(
            f"Expected `opset_version` >= {STRING_OPSET} for a model with string/lookup "
            f"layers (ONNX's StringSplit is opset {STRING_OPSET}). Received: "
            f"opset_version={opset!r}")
    return opset


def export_strings(model: Any, filepath: str | os.PathLike[str], verbose: bool | None,
                   input_signature: Any, kwargs: dict[str, Any],
                   export_rest: Callable[[Any, str, dict[str, Any]], None],
                   context: ExportContext) -> None:
    """Write ``model`` (string/lookup layers on its inputs) to one ONNX file.

    ``export_rest(model, path, options)`` writes the rest of the model with the
    backend's normal ONNX strategy (quietly), into a private folder; ``context``
    is the export's (overwrite, the sample policy the check draws under).

    Raises:
        UnsupportedRouteError: a layer kexport cannot lower exactly, one not on
            a model input, or a quantization option; nothing is written.
        SignatureError: ``opset_version`` below 20.
    """
    import keras
    import onnx

    given = [k for k in _REFUSED_OPTIONS if kwargs.get(k) is not None]
    if given:
        raise UnsupportedRouteError(
            f"{step_label('plan', 'route: ' + _ROUTE)}: `{given[0]}` is not supported for a "
            "model with string/lookup layers in ONNX. Expected a float export; quantize the "
            "model from the layer's output on instead.")
    opset = _opset(kwargs)
    threshold = _check_threshold(kwargs.pop("external_data_threshold", None))
    if kwargs:
        raise SignatureError(f"Unexpected keyword arguments for ONNX export: {sorted(kwargs)}. "
                             "Expected only `opset_version` and `external_data_threshold`.")
    signature = normalize_for_model(model, input_signature)
    specs, names = flatten(signature), flat_names(signature)
    prefix = find_prefix(model, len(specs))
    rest = keras.Model([*prefix.outputs], _rest_outputs(model, prefix),
                       name=f"{model.name}_after_strings")
    links = [f"kexport_strings/out_{j}" for j in range(len(specs))]
    head = prefix_model(prefix, names, specs, links, opset)
    with tempfile.TemporaryDirectory(prefix="kexport-strings-") as tmp:
        path = os.path.join(tmp, "rest.onnx")
        export_rest(rest, path, {})  # at the converter's default opset, then converted
        tail = onnx.load(path)
    tail = _at_opset(tail, opset)
    merged = _merge(head, tail, links)
    meta = {p.key: p.value for p in tail.metadata_props}
    meta["kexport.inputs"] = _spec_json(specs, names)
    meta["kexport.route"] = f"kexport's string lowering + {meta.get('kexport.route', '?')}"
    del merged.metadata_props[:]
    for k, v in meta.items():
        entry = merged.metadata_props.add()
        entry.key, entry.value = k, v
    call = live_reference(model, names)
    accept = Acceptance(names, specs, lambda flat: call(dict(zip(names, flat, strict=True))),
                        context)
    try:
        write_model(merged, filepath, threshold, _ROUTE, accept, overwrite=context.overwrite)
    except NotTraceable as e:  # never a silently wrong artifact: nothing was written
        raise UnsupportedRouteError(
            f"{step_label('check', 'route: ' + _ROUTE)}: the ONNX graph does not reproduce the model "
            f"on generated text ({e}); nothing was written. Formats that hold the model: "
            "format='tf_saved_model'.") from e
    finally:
        accept.close()
    if verbose is None or verbose:
        _summary.print_summary("onnx", [_Summary.of(merged, meta, signature)], filepath)


def _rest_outputs(model: Any, prefix: Any) -> list[Any]:
    """The model's outputs; one that a lowered layer gives directly passes through
    an ``Identity`` named as that layer (so the ONNX output keeps its name)."""
    import keras

    outputs = list(model.outputs)
    for i, tensor in enumerate(outputs):
        for layer, out in zip(prefix.layers, prefix.outputs, strict=True):
            if layer is not None and out is tensor:
                outputs[i] = keras.layers.Identity(name=layer.name)(tensor)
    return outputs


def _at_opset(proto: Any, opset: int) -> Any:
    import onnx

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current == opset:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, opset)
    except Exception as e:
        raise UnsupportedRouteError(
            f"{step_label('finish', 'route: ' + _ROUTE)}: the model after its string layers cannot be "
            f"converted from opset {current} to {opset}: {type(e).__name__}: {str(e)[:200]}. "
            "Next steps: export format='tf_saved_model'.") from e


def _merge(head: Any, tail: Any, links: list[str]) -> Any:
    """``head``'s outputs ``links`` fed to ``tail``'s inputs, in order."""
    import onnx
    from onnx import compose

    domains = {o.domain or "": o.version for o in tail.opset_import}
    del head.opset_import[:]
    for domain, version in {"": domains.get("", STRING_OPSET),
                            "ai.onnx.ml": max(domains.get("ai.onnx.ml", 2), 2)}.items():
        head.opset_import.append(onnx.helper.make_opsetid(domain, version))
    tail.ir_version = head.ir_version = max(head.ir_version, tail.ir_version)
    outputs = [o.name for o in tail.graph.output]
    taken = {i.name for i in head.graph.input}
    if taken & set(outputs):
        raise UnsupportedRouteError(f"{step_label('finish', 'route: ' + _ROUTE)}: an output has the "
                                    "name of an input; rename the model's layers.")
    merged = compose.merge_models(head, tail, io_map=list(zip(links, [
        i.name for i in tail.graph.input], strict=True)), prefix2="kexport_model/")
    renamed = {f"kexport_model/{n}": n for n in outputs}
    for node in merged.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for value in merged.graph.output:
        value.name = renamed.get(value.name, value.name)
    return merged


class _Summary:
    """What :func:`kexport._summary.print_summary` reads of one endpoint."""

    def __init__(self, name: str, signature: list[Any], input_names: list[str],
                 output_specs: list[Any]) -> None:
        self.name, self.signature = name, signature
        self.input_names, self.output_specs = input_names, output_specs

    @classmethod
    def of(cls, proto: Any, meta: dict[str, str], signature: list[Any]) -> _Summary:
        import json

        outs = [Spec(tuple(o["shape"]), o["dtype"], o["name"])
                for o in json.loads(meta["kexport.outputs"])]
        return cls(meta["kexport.endpoint"], signature, [i.name for i in proto.graph.input],
                   outs)

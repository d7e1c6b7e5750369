"""The intermediate values an artifact itself computes, named by where they came from.

:func:`kexport.localize` compares these with the live model's layer outputs,
so a changed or foreign artifact (edited after export, written by another
tool) names its own first wrong layer. Each format's runtime runs the file as
it is, with every intermediate value kept:

- ONNX: a copy of the graph with every node output added as a graph output
  (ONNX Runtime); a value is named by its node's name and metadata (tf2onnx
  keeps TensorFlow name scopes, ``model/dense/MatMul``; torch.onnx its module
  path in ``namespace``).
- OpenVINO: every operation's outputs added as model outputs; named by the
  operation's friendly name (the converter keeps the source graph's scopes).
- LiteRT: ``experimental_preserve_all_tensors``; every operator output, named
  by the tensor's name (TensorFlow scopes joined with ``;``).

:func:`read_values` returns them in execution order; :func:`layer_of` tells
whether a name holds a Keras layer's name as one of its segments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kexport._numerics import openvino_config
from kexport.check.compare import elementwise, tolerance_for

__all__ = ["Value", "layer_of", "read_values", "slot_summary"]

_SEGMENTS = re.compile(r"[/.:;,\s\[\]'\"()]+")


@dataclass(frozen=True)
class Value:
    """One intermediate value of an artifact: ``name`` (its scopes), ``array``, and
    the constants its operation consumes (``constants``: weights, which tell the
    Keras layer where a converter keeps no scopes)."""

    name: str
    array: Any
    constants: tuple[Any, ...] = ()


def layer_of(name: str, layer: str) -> bool:
    """Whether ``layer`` (a Keras layer's name) is one segment of the value name ``name``."""
    return layer in _SEGMENTS.split(name)


def read_values(format: str, path: str | os.PathLike[str],
                feeds: Sequence[Any], names: Sequence[str]) -> list[Value] | None:
    """Every intermediate value the artifact at ``path`` computes on ``feeds`` (one
    array per model input, in the order of ``names``), in execution order;
    ``None`` where the format keeps none this way (SavedModel, ``.pt2``) or the
    file is not a single graph (an archive folder)."""
    path = os.fspath(path)
    if os.path.isdir(path) or format not in _READERS:
        return None
    return _READERS[format](path, list(feeds), list(names))


def _by_name(declared: Sequence[str], feeds: list[Any], names: list[str]) -> dict[str, Any]:
    """The feeds keyed by the artifact's own input names: by name where they agree,
    else by position (an artifact another tool wrote)."""
    if sorted(declared) == sorted(names):
        return dict(zip(names, feeds, strict=True))
    return dict(zip(declared, feeds, strict=False))


def _onnx(path: str, feeds: list[Any], names: list[str]) -> list[Value]:
    import onnx
    import onnxruntime as ort

    model = onnx.load_model(path)
    from onnx import numpy_helper

    graph = model.graph
    known = {o.name for o in graph.output}
    constants = {i.name: i for i in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    labels: dict[str, str] = {}
    weights: dict[str, tuple[Any, ...]] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        label = " ".join([node.name, *(p.value for p in node.metadata_props)])
        held = tuple(numpy_helper.to_array(constants[i]) for i in node.input if i in constants)
        for out in node.output:
            if out and out not in labels:
                labels[out], weights[out] = label, held
                if out not in known:
                    graph.output.append(onnx.ValueInfoProto(name=out))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    arrays = session.run(outputs, _by_name(declared, feeds, names))
    found = dict(zip(outputs, arrays, strict=True))
    return [Value(labels[n], found[n], weights[n]) for n in labels if n in found]


def _openvino(path: str, feeds: list[Any], names: list[str]) -> list[Value]:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    originals = [r.input_value(0).get_node().get_friendly_name() for r in model.get_results()]
    ports, labels = [], []
    weights: dict[str, tuple[Any, ...]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Constant", "Result"):
            continue
        weights[op.get_friendly_name()] = tuple(_ov_constants(op))
        for out in op.outputs():
            out.get_tensor().add_names({f"kexport.value.{len(ports)}"})  # found again by name
            ports.append(out)
            labels.append(op.get_friendly_name())
    model.add_outputs(ports)
    compiled = core.compile_model(model, "CPU", openvino_config())  # f32 on any CPU
    declared = [p.get_any_name() for p in compiled.inputs]
    result = compiled(_by_name(declared, feeds, names))
    by_name = {n: port for port in compiled.outputs for n in port.get_names()}
    values = [Value(label, np.asarray(result[by_name[f"kexport.value.{k}"]]), weights[label])
              for k, label in enumerate(labels) if f"kexport.value.{k}" in by_name]
    # the model's own outputs come first and keep their names
    return values + [Value(label, np.asarray(result[compiled.outputs[i]]), weights.get(label, ()))
                     for i, label in enumerate(originals)]


def _ov_constants(op: Any) -> list[Any]:
    """The constants an OpenVINO operation consumes (through a ``Convert``: compressed)."""
    import numpy as np

    found = []
    for value in op.input_values():
        node = value.get_node()
        if node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            found.append(np.asarray(node.get_data(), np.float32)
                         if np.asarray(node.get_data()).dtype.kind == "f" else node.get_data())
    return found


def _litert(path: str, feeds: list[Any], names: list[str]) -> list[Value]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    signatures = interpreter.get_signature_list()
    key = "serve" if "serve" in signatures else next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    declared = list(signatures[key]["inputs"])
    runner(**_by_name(declared, feeds, names))
    details: Mapping[int, Any] = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # execution order
    made = {i for op in ops for i in op["outputs"]}
    fed = {d["index"] for d in runner.get_input_details().values()}
    values = []
    for op in ops:
        held = tuple(np.array(interpreter.get_tensor(i)) for i in op["inputs"]
                     if i >= 0 and i not in made and i not in fed and i in details)
        for index in op["outputs"]:
            if index in details:
                values.append(Value(details[index]["name"],
                                    np.array(interpreter.get_tensor(index)), held))
    return values


_READERS = {"onnx": _onnx, "openvino": _openvino, "litert": _litert}


def _scope_suffix(layers: Sequence[str], values: Sequence[Value]) -> str:
    """What the converter appended to every layer's scope: ``""``, or ``"_1"`` where
    Keras entered each name scope a second time while tracing (TensorFlow then
    names ``dense`` ``dense_1``): the suffix that finds the most layers."""
    segments = {seg for v in values for seg in _SEGMENTS.split(v.name)}
    hits = {s: sum(f"{n}{s}" in segments for n in set(layers))
            for s in ["", *(f"_{k}" for k in range(1, 10))]}
    return max(hits, key=lambda s: (hits[s], s == ""))


def _same(constant: Any, weight: Any) -> bool:
    """Whether an artifact's constant holds a Keras weight (as it is, transposed, or
    reshaped; float16-compressed weights within their rounding)."""
    import numpy as np

    c, w = np.asarray(constant), np.asarray(weight)
    if c.size != w.size or c.size < 2 or c.dtype.kind != "f" or w.dtype.kind != "f":
        return False
    forms = [w.reshape(c.shape)] if c.shape != w.shape else [w]
    if w.ndim == 2 and c.shape == w.T.shape:
        forms.append(w.T)
    return any(np.allclose(c, f, rtol=1e-2, atol=1e-3) for f in forms)


def _weight_owners(values: Sequence[Value], weights: Mapping[str, Sequence[Any]]
                   ) -> list[str | None]:
    """Per value, the one layer whose weight its operation consumes: equal to a weight
    of one layer only (a weight of constant value, e.g. a zero bias, tells nothing);
    else, for a constant that equals no weight (changed after export), the one layer
    with a weight of its shape that no constant equals."""
    import numpy as np

    telling = {(n, k): w for n, ws in weights.items() for k, w in enumerate(ws)
               if np.asarray(w).size >= 2 and np.ptp(np.asarray(w, np.float64)) > 0}
    exact: list[set[str]] = []
    matched: set[tuple[str, int]] = set()
    for value in values:
        hits = {key for c in value.constants for key, w in telling.items() if _same(c, w)}
        matched |= hits
        exact.append({n for n, _ in hits})
    owners: list[str | None] = []
    for value, hits in zip(values, exact, strict=True):
        if len(hits) != 1:
            shaped = {n for c in value.constants for (n, k), w in telling.items()
                      if (n, k) not in matched and np.asarray(c).size == np.asarray(w).size
                      and np.asarray(c).shape in (np.shape(w), np.shape(w)[::-1])}
            hits = hits if hits else shaped
        owners.append(next(iter(hits)) if len(hits) == 1 else None)
    return owners


def _owners(values: Sequence[Value], names: Sequence[str], suffix: str,
            weights: Mapping[str, Sequence[Any]]) -> list[str | None]:
    """The Keras layer each value (in execution order) comes from: the innermost layer
    its name holds; else the layer whose weight its operation consumes
    (:func:`_weight_owners`); else the layer of the value before it (an operation
    the converter did not name)."""
    by_weight = _weight_owners(values, weights)
    owners: list[str | None] = []
    current = None
    for value, held in zip(values, by_weight, strict=True):
        segments = _SEGMENTS.split(value.name)
        named = [i for i, seg in enumerate(segments) for n in names if seg == f"{n}{suffix}"]
        if named:
            current = segments[max(named)].removesuffix(suffix) if suffix else segments[max(named)]
        elif held is not None:
            current = held
        owners.append(current)
    return owners


def _fits(array: Any, live: Any) -> bool:
    """Whether an artifact's value can be a layer's output like ``live``: its shape, and
    float where ``live`` is float (an integer output is not matched to a float value)."""
    return (getattr(array, "shape", None) == live.shape
            and (array.dtype.kind in "fc") == (live.dtype.kind in "fc"))


def slot_summary(calls: Sequence[Any], slots: Sequence[tuple[int, str, int]],
                 recorded: Sequence[Mapping[str, Any]], values: Sequence[Value],
                 atol: float, rtol: float, weights: Mapping[str, Sequence[Any]] | None = None
                 ) -> tuple[list[dict[str, Any]], set[str]]:
    """Per probe slot (:func:`kexport.check.probe.plan_of`), the error of the
    artifact's own value against the live one, in the rows of a verification
    summary (``max_abs``, ``max_rel``, ``ok``), and the paths of the calls it
    could compare.

    Each value is given to a layer (:func:`_owners`; ``weights``: layer name ->
    its own weights); a layer call's output is the value of that layer (or of
    its sublayers) with the live output's shape that is closest to it. A layer
    called more than once, a tensor made between layers, or a layer no value
    is given to, is not compared (its slots pass, its row says so).
    """
    summary = [{"max_abs": 0.0, "max_rel": 0.0, "ok": True} for _ in slots]
    names = [c.path.split("@")[0].split("/")[-1] for c in calls]
    suffix = _scope_suffix(names, values)
    owners = _owners(values, names, suffix, weights or {})
    compared: set[str] = set()
    chosen: dict[int, list[Any]] = {}  # call index -> the values its outputs were matched to
    for slot, (i, kind, position) in enumerate(slots):
        call = calls[i]
        if kind != "out" or "@" in call.path:
            continue
        live = recorded[i]["outputs"][position]
        inner = [k for k in range(i) if calls[k].path.startswith(call.path + "/")]
        if inner:  # a container: its sublayers' last output, or values of its own
            found = [v for v in chosen.get(inner[-1], []) if v.shape == live.shape]
            found += [v.array for v, owner in zip(values, owners, strict=True)
                      if owner == names[i] and _fits(v.array, live)]
        else:
            found = [v.array for v, owner in zip(values, owners, strict=True)
                     if owner == names[i] and _fits(v.array, live)]
        if not found:
            continue
        errors = [elementwise(live, got, *tolerance_for(live, atol, rtol)) for got in found]
        best = min(range(len(found)), key=lambda k: (not errors[k][2], errors[k][0]))
        chosen.setdefault(i, []).append(found[best])
        max_abs, max_rel, ok = errors[best]
        summary[slot] = {"max_abs": max_abs, "max_rel": max_rel, "ok": ok}
        compared.add(call.path)
    return summary, compared

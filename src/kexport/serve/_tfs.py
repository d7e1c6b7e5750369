"""TF-Serving's REST API: ``POST /v1/models/{name}:predict`` in its two forms.

Row form (``instances``): a list with one entry per example; for a single
input each entry is that input's value (or ``{name: value}``), for several
inputs each entry is ``{name: value, ...}``. Examples are stacked on a new
first axis. The reply is ``{"predictions": [...]}``: one value per example for
a single output, ``{output name: value}`` per example otherwise.

Columnar form (``inputs``): the input's value for a single input, else
``{name: value, ...}``, each holding the whole batch. The reply is
``{"outputs": value}`` for a single output, else ``{"outputs": {name: value}}``.

``signature_name`` picks the endpoint (default: the artifact's default one).
String values may be given as ``{"b64": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kexport.runtime import EndpointInfo
from kexport.serve._values import (
    BadRequest,
    array_from_json,
    check_shape,
    check_symbols,
    json_values,
)

__all__ = ["decode_predict", "encode_predict", "signature_metadata"]

_TF_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF",
              "bfloat16": "DT_BFLOAT16", "int8": "DT_INT8", "int16": "DT_INT16",
              "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
              "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
              "bool": "DT_BOOL", "string": "DT_STRING"}


def signature_metadata(endpoints: Mapping[str, EndpointInfo]) -> dict[str, Any]:
    """``GET /v1/models/{name}/metadata``: the signatures in TF-Serving's JSON form."""
    def tensors(specs: Any) -> dict[str, Any]:
        return {s.name: {"dtype": _TF_DTYPES.get(s.dtype, s.dtype), "name": s.name,
                         "tensor_shape": {"dim": [{"size": str(-1 if d is None else d),
                                                   "name": ""} for d in s.shape],
                                          "unknown_rank": False}}
                for s in specs}

    return {"signature_def": {"signature_def": {
        name: {"inputs": tensors(e.inputs), "outputs": tensors(e.outputs),
               "method_name": "tensorflow/serving/predict"}
        for name, e in endpoints.items()}}}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _by_name(endpoint: EndpointInfo, value: Any, form: str) -> dict[str, Any]:
    names = endpoint.input_names
    if isinstance(value, dict) and not _is_b64(value):
        unknown = sorted(set(value) - set(names))
        missing = [n for n in names if n not in value]
        if unknown or missing:
            raise BadRequest(f"Expected {form} keyed by the input names {names}. Received: "
                             f"{sorted(value)} (missing {missing}, unknown {unknown})")
        return dict(value)
    if len(names) != 1:
        raise BadRequest(f"Expected {form} keyed by the input names {names} (the endpoint "
                         f"'{endpoint.name}' has {len(names)} inputs). Received: one unnamed "
                         "value")
    return {names[0]: value}


def decode_predict(body: bytes, endpoints: Mapping[str, EndpointInfo],
                   default: str) -> tuple[EndpointInfo, dict[str, Any], str]:
    """Parse a ``:predict`` body.

    Returns:
        ``(endpoint, feeds by input name, "row" or "columnar")``.

    Raises:
        BadRequest: malformed JSON, an unknown signature, names, dtypes or
            shapes that do not fit the endpoint.
    """
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Expected a JSON predict request. Received: invalid JSON ({e})") \
            from None
    if not isinstance(request, dict):
        raise BadRequest('Expected a JSON object with "instances" or "inputs". Received: '
                         f"{type(request).__name__}")
    forms = [k for k in ("instances", "inputs") if k in request]
    if len(forms) != 1:
        raise BadRequest('Expected exactly one of "instances" (row form) or "inputs" '
                         f"(columnar form). Received: keys {sorted(request)}")
    signature = request.get("signature_name", default)
    if signature not in endpoints:
        raise BadRequest(f"Expected signature_name to be one of {list(endpoints)}. Received: "
                         f"{json.dumps(signature)}")
    endpoint = endpoints[signature]
    form = forms[0]
    if form == "instances":
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest('Expected "instances" as a non-empty list, one entry per '
                             f"example. Received: {json.dumps(instances)[:80]}")
        rows = [_by_name(endpoint, row, "each instance") for row in instances]
        values = {n: [row[n] for row in rows] for n in endpoint.input_names}
    else:
        values = _by_name(endpoint, request["inputs"], '"inputs"')
    feeds = {}
    for spec in endpoint.inputs:
        where = f"Input '{spec.name}'"
        array = array_from_json(where, spec, values[spec.name])
        check_shape(where, spec, array.shape)
        feeds[spec.name] = array
    check_symbols(endpoint, {n: a.shape for n, a in feeds.items()})
    return endpoint, feeds, "row" if form == "instances" else "columnar"


def encode_predict(endpoint: EndpointInfo, form: str, results: Mapping[str, Any]) -> bytes:
    """The ``:predict`` reply in the request's form."""
    import numpy as np

    names = endpoint.output_names or list(results)
    arrays = {n: np.asarray(results[n]) for n in names}
    if form == "columnar":
        outputs = {n: json_values(a, b64=False) for n, a in arrays.items()}
        reply: dict[str, Any] = {"outputs": outputs[names[0]] if len(names) == 1 else outputs}
    else:
        if len(names) == 1:
            reply = {"predictions": json_values(arrays[names[0]])}
        else:
            sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
            if len(sizes) != 1 or None in sizes:
                shapes = {n: list(a.shape) for n, a in arrays.items()}
                raise BadRequest("The row form needs every output to have the batch as its "
                                 f"first axis; this endpoint returns shapes {shapes}. Use the "
                                 'columnar form ("inputs") instead')
            columns = {n: json_values(a) for n, a in arrays.items()}
            reply = {"predictions": [{n: columns[n][i] for n in names}
                                     for i in range(sizes.pop())]}
    return json.dumps(reply).encode("utf-8")

"""The Open Inference Protocol (KServe v2, the one Triton speaks): tensors in and out.

Request (``POST /v2/models/{name}/infer``)::

    {"id": "...", "parameters": {"binary_data_output": false},
     "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                 "data": [...] | "parameters": {"binary_data_size": 256}}],
     "outputs": [{"name": "probs", "parameters": {"binary_data": true}}]}

With the binary-data extension the body is that JSON header followed by the
raw bytes of the inputs that carry ``binary_data_size``, in input order; the
``Inference-Header-Content-Length`` header gives the JSON part's length.
Replies use the same form: outputs asked for in binary (per output
``binary_data``, or ``binary_data_output`` for all) carry ``binary_data_size``
and follow the JSON header. ``BYTES`` elements are sent as a 4-byte
little-endian length and the bytes, as ``tritonclient`` does.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

from kexport.runtime import EndpointInfo, TensorInfo
from kexport.serve._values import (
    BadRequest,
    array_from_json,
    check_shape,
    check_symbols,
    json_values,
    numpy_dtype,
)

__all__ = ["DATATYPES", "datatype_of", "decode_request", "encode_response", "tensor_metadata"]

#: TensorInfo / NumPy dtype name -> protocol datatype.
DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
    "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
    "string": "BYTES", "object": "BYTES", "bytes": "BYTES", "str": "BYTES",
}


def datatype_of(dtype: str) -> str:
    """The protocol's name for a dtype (``float32`` -> ``FP32``)."""
    if dtype.startswith(("<U", "|S", "<S", "|U")):
        return "BYTES"
    return DATATYPES.get(dtype, dtype.upper())


def tensor_metadata(spec: TensorInfo) -> dict[str, Any]:
    """``{"name", "datatype", "shape"}`` with ``-1`` for dynamic dimensions."""
    return {"name": spec.name, "datatype": datatype_of(spec.dtype),
            "shape": [-1 if d is None else d for d in spec.shape]}


def _json_header(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise BadRequest(f"Expected header Inference-Header-Content-Length between 0 and "
                             f"the body size {len(body)}. Received: {header_length!r}")
        head, rest = body[:size], body[size:]
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Expected a JSON inference request. Received: invalid JSON ({e})") \
            from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        keys = sorted(request) if isinstance(request, dict) else type(request).__name__
        raise BadRequest('Expected a JSON object with "inputs": [{"name", "datatype", '
                         f'"shape", "data"}}, ...]. Received: {keys}')
    return request, rest


def _shape(where: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise BadRequest(f'{where}: expected "shape" as a list of sizes >= 0. '
                         f"Received: {json.dumps(value)[:80]}")
    return value


def _bytes_elements(where: str, raw: bytes, count: int) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: expected BYTES elements as a 4-byte length and the "
                             "bytes. Received: a truncated length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(f"{where}: expected an element of {size} bytes. Received: "
                             f"{len(raw) - offset} bytes left")
        out.append(raw[offset:offset + size])
        offset += size
    if len(out) != count:
        raise BadRequest(f"{where}: expected {count} BYTES elements for its shape. "
                         f"Received: {len(out)}")
    return out


def _binary_array(where: str, spec: TensorInfo, shape: list[int], raw: bytes) -> Any:
    import numpy as np

    count = math.prod(shape)
    if spec.dtype == "string":
        return np.asarray(_bytes_elements(where, raw, count), dtype=object).reshape(shape)
    dtype = numpy_dtype(spec.dtype)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{where}: expected {count * dtype.itemsize} bytes of binary data "
                         f"(shape {shape} x {datatype_of(spec.dtype)}). Received: "
                         f"binary_data_size {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_request(body: bytes, header_length: str | None,
                   endpoint: EndpointInfo) -> tuple[dict[str, Any], list[tuple[str, bool]],
                                                    Any]:
    """Parse and check one inference request.

    Returns:
        ``(feeds by input name, [(output name, binary?)], request id or None)``.

    Raises:
        BadRequest: anything that does not fit ``endpoint``, naming what it
            expects and what it received.
    """
    request, rest = _json_header(body, header_length)
    specs = {s.name: s for s in endpoint.inputs}
    feeds: dict[str, Any] = {}
    offset = 0
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest('Expected each input as {"name", "datatype", "shape", "data"}. '
                             f"Received: {json.dumps(item)[:80]}")
        name = item["name"]
        if name not in specs:
            raise BadRequest(f"Expected inputs named {endpoint.input_names}. Received: an "
                             f"input named {name!r}")
        if name in feeds:
            raise BadRequest(f"Expected each input once. Received: {name!r} twice")
        spec, where = specs[name], f"Input '{name}'"
        want = datatype_of(spec.dtype)
        if item.get("datatype") != want:
            raise BadRequest(f"{where}: expected datatype {want}. Received: "
                             f"{json.dumps(item.get('datatype'))}")
        shape = _shape(where, item.get("shape"))
        check_shape(where, spec, shape)
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest(f'{where}: expected "parameters" as an object. Received: '
                             f"{type(parameters).__name__}")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 \
                    or offset + size > len(rest):
                raise BadRequest(f"{where}: expected binary_data_size within the "
                                 f"{len(rest) - offset} bytes left after the JSON header. "
                                 f"Received: {json.dumps(size)}")
            feeds[name] = _binary_array(where, spec, shape, rest[offset:offset + size])
            offset += size
            continue
        if "data" not in item:
            raise BadRequest(f'{where}: expected "data" or parameters.binary_data_size. '
                             "Received: neither")
        array = array_from_json(where, spec, item["data"], want)
        if array.size != math.prod(shape):
            raise BadRequest(f"{where}: expected {math.prod(shape)} values for shape {shape}. "
                             f"Received: {array.size}")
        feeds[name] = array.reshape(shape)
    missing = [n for n in endpoint.input_names if n not in feeds]
    if missing:
        raise BadRequest(f"Expected inputs {endpoint.input_names}. Received: "
                         f"{list(feeds)} (missing {missing})")
    if offset != len(rest):
        raise BadRequest(f"Expected {offset} bytes of binary data after the JSON header "
                         f"(the inputs' binary_data_size). Received: {len(rest)}")
    check_symbols(endpoint, {n: a.shape for n, a in feeds.items()})
    return feeds, _outputs(request, endpoint), request.get("id")


def _outputs(request: Mapping[str, Any], endpoint: EndpointInfo) -> list[tuple[str, bool]]:
    params = request.get("parameters") or {}
    all_binary = bool(isinstance(params, dict) and params.get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(n, all_binary) for n in endpoint.output_names]
    if not isinstance(asked, list):
        raise BadRequest(f'Expected "outputs" as a list. Received: {type(asked).__name__}')
    wanted = []
    for item in asked:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in endpoint.output_names:
            raise BadRequest(f"Expected outputs named {endpoint.output_names}. Received: "
                             f"{json.dumps(name)}")
        params = item.get("parameters") or {}
        binary = params.get("binary_data", all_binary) if isinstance(params, dict) else False
        wanted.append((name, bool(binary)))
    return wanted


def _raw(array: Any) -> bytes:
    import numpy as np

    if array.dtype.kind in "OSU":
        parts = []
        for v in array.ravel().tolist():
            data = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def encode_response(model: str, results: Mapping[str, Any], wanted: list[tuple[str, bool]],
                    request_id: Any = None) -> tuple[bytes, dict[str, str]]:
    """The reply body and its headers (``Inference-Header-Content-Length`` when binary)."""
    import numpy as np

    outputs, blobs = [], []
    for name, binary in wanted:
        array = np.asarray(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype.name),
                                 "shape": list(array.shape)}
        if binary:
            blob = _raw(array)
            blobs.append(blob)
            entry["parameters"] = {"binary_data_size": len(blob)}
        else:
            entry["data"] = json_values(array.ravel())
        outputs.append(entry)
    reply: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request_id is not None:
        reply["id"] = request_id
    head = json.dumps(reply).encode("utf-8")
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}


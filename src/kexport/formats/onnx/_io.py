"""ONNX external data: weights moved out of graphs into one shared file.

One writer serves both the single-file export (weights above a threshold go
to ``<file>.data`` beside the graph) and ``ExportArchive`` (every endpoint's
graph refers to one ``weights.data``; a tensor whose bytes several graphs
share is stored once). In an archive every floating-point initializer is a
weight and moves out whatever its size (so nothing is duplicated across
endpoints); other tensors move out from :data:`MIN_EXTERNAL_BYTES` (1 KiB)
up, so small integer constants (shapes, axes, indices) stay in the graph they
structure. Tensors are processed one at a time and their inline
bytes cleared right after they are written, so peak memory stays near the
size of the weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["ALIGNMENT", "MIN_EXTERNAL_BYTES", "externalize", "initializer_bytes", "is_float",
           "iter_initializers"]

ALIGNMENT = 64
MIN_EXTERNAL_BYTES = 1024


def iter_initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers of ``graph`` and of every subgraph (Loop/Scan/If bodies)."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_initializers(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_initializers(g)


def _nbytes(tensor: onnx.TensorProto) -> int:
    import numpy as np
    import onnx

    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return count * itemsize


def initializer_bytes(models: Sequence[onnx.ModelProto]) -> int:
    """Total bytes of the initializers held inline in ``models``."""
    import onnx

    return sum(_nbytes(t) for m in models for t in iter_initializers(m.graph)
               if t.data_location != onnx.TensorProto.EXTERNAL)


def is_float(tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` holds floating-point values (a weight, not a shape or index)."""
    import onnx

    return tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _take_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's little-endian bytes, with its inline copy cleared."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    if tensor.HasField("raw_data"):
        data = tensor.raw_data
    else:
        array = numpy_helper.to_array(tensor)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        del array
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data", "string_data"):
        tensor.ClearField(field)
    return data


def externalize(models: Sequence[onnx.ModelProto], stream: IO[bytes], location: str,
                min_bytes: int = MIN_EXTERNAL_BYTES, all_floats: bool = False) -> int:
    """Move initializers of ``models`` into ``stream``, stored once each.

    Args:
        models: graphs whose initializers of at least ``min_bytes`` move out.
        stream: the open data file (written from its current start, 0).
        location: the data file's name as the graphs will refer to it: a
            bare file name beside the graph, never a local path.
        min_bytes: smaller tensors stay inline.
        all_floats: move every floating-point tensor whatever its size (an
            archive's weights), ``min_bytes`` then applies to the others.

    Returns:
        The number of bytes written to ``stream``.
    """
    import onnx

    seen: dict[bytes, tuple[int, int]] = {}
    offset = 0
    for model in models:
        for tensor in iter_initializers(model.graph):
            size = _nbytes(tensor)
            if tensor.data_location == onnx.TensorProto.EXTERNAL or size == 0 or (
                    size < min_bytes and not (all_floats and is_float(tensor))):
                continue
            data = _take_bytes(tensor)
            if data is None:
                continue
            key = hashlib.sha256(data).digest() + str(len(data)).encode()
            if key not in seen:
                pad = (-offset) % ALIGNMENT
                if pad:
                    stream.write(b"\0" * pad)
                    offset += pad
                stream.write(data)
                seen[key] = (offset, len(data))
                offset += len(data)
            start, length = seen[key]
            del data
            del tensor.external_data[:]
            for k, v in (("location", location), ("offset", str(start)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = k, v
            tensor.data_location = onnx.TensorProto.EXTERNAL
    return offset

"""Step 4 of the ONNX writer: check and write one graph atomically.

What is checked is what is written: ``onnx.checker`` (``full_check=True``) and
a fast strategy's acceptance read the serialized graph, or the graph and its
external data staged beside the target, before anything is placed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kexport._atomic import atomic_target, staging_dir
from kexport.context import step_label
from kexport.errors import WriteError
from kexport.formats.onnx._graph import INLINE_LIMIT, _step_error
from kexport.formats.onnx._io import externalize, initializer_bytes

if TYPE_CHECKING:
    import onnx

__all__ = ["_check", "write_model"]


def _check(target: str | bytes | onnx.ModelProto, route: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(target, full_check=True)
    except Exception as e:
        raise _step_error(WriteError, step_label("finish", "onnx.checker full_check"), route, e,
                          None, "report this model to kexport; try another opset_version") from e


def write_model(proto: onnx.ModelProto, filepath: str | os.PathLike[str], threshold: int,
                route: str, accept: Callable[[bytes | str], None] | None = None, *,
                overwrite: bool, check: Callable[[Path], None] | None = None) -> bool:
    """Check and write one graph atomically, with ``<name>.data`` beside it when large.

    What is checked is what is written: ``onnx.checker`` (``full_check``)
    and then ``accept`` (a fast route's check, see
    :class:`~kexport.formats.onnx._graph.RawGraph`) read the serialized
    graph, or, with external data, the graph and data files staged beside the
    target (their final names, so the data is found as a reader will find
    it), which are then moved into place. ``proto`` is consumed: its weights
    are moved out of it. ``overwrite``: replace data that is not a kexport
    artifact (the export's :attr:`~kexport.context.ExportContext.overwrite`).
    ``check``: the export's check of the staged file before it is placed
    (:meth:`~kexport.context.ExportContext.check_staged`), where no ``accept``
    already judged the graph.

    Returns:
        Whether external data was written.

    Raises:
        NotTraceable: from ``accept``; nothing is written.
    """
    path = Path(os.fspath(filepath))
    data_name = f"{path.name}.data"
    data_path = path.with_name(data_name)
    if initializer_bytes([proto]) <= min(threshold, INLINE_LIMIT):
        data = proto.SerializeToString()
        del proto.graph.initializer[:]  # consumed: ``data`` holds the weights now
        _check(data, route)
        if accept is not None:
            accept(data)
        return _write_inline(data, path, data_path, overwrite, check)
    with staging_dir(path) as stage:
        graph_file, data_file = stage / path.name, stage / data_name
        with open(data_file, "wb") as f:
            externalize([proto], f, data_name, min_bytes=min(threshold, 1024))
        graph_file.write_bytes(proto.SerializeToString())
        _check(os.fspath(graph_file), route)
        if accept is not None:
            accept(os.fspath(graph_file))
        if check is not None:
            check(graph_file)
        with atomic_target(data_path, is_dir=False, overwrite=overwrite) as tmp_data, \
                atomic_target(path, is_dir=False, overwrite=overwrite) as tmp_graph:
            os.replace(data_file, tmp_data)
            os.replace(graph_file, tmp_graph)
    return True


def _write_inline(data: bytes, path: Path, data_path: Path, overwrite: bool,
                  check: Callable[[Path], None] | None) -> bool:
    with atomic_target(path, is_dir=False, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
        if check is not None:
            check(tmp)
    if data_path.is_file():
        data_path.unlink()  # a stale weights file of an earlier large export
    return False

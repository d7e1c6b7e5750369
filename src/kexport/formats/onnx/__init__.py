"""ONNX writer: one graph per endpoint, named, dynamic, lean, self-describing.

Pipeline (each failure names its step, the route and what to do next):

1. **signature** — the model's inputs with names and dynamic dims
   (:mod:`kexport.signature`);
2. **capture** — each backend's strategies, tried in order
   (``STRATEGIES`` in :mod:`._export`), produce a raw ONNX graph:

   - TensorFlow: the endpoint is traced by :mod:`kexport.capture` into a
     ``tf.function`` and converted by ``tf2onnx`` (:mod:`._tensorflow`);
   - PyTorch: the traced ``torch.onnx`` graph when ONNX Runtime reproduces
     the live model, else ``torch.export`` with a ``torch.export.Dim`` per
     dynamic axis, translated by ``torch.onnx`` (:mod:`._torch`);
   - JAX: ``jax2onnx`` when ONNX Runtime reproduces the live model
     (:mod:`._jax`);
   - re-host (PyTorch and JAX models with a recurrent layer, or refused by
     every strategy): the route table (:mod:`kexport.routing.table`) runs the
     cell's next route, which re-hosts the model on TensorFlow in a child
     process (:mod:`kexport.routing.rehost`; config + variable values; a
     persistent worker per target backend), where the TensorFlow route
     writes the graph, which is checked against the live model before it is
     placed (:func:`rehost_options` checks the options it carries);
3. **finish** — inputs/outputs renamed to the Keras names, graph optimised
   (constant folding, dead-node and duplicate removal), opset checked,
   metadata set, local paths and debug metadata stripped;
4. **write** — atomically; weights above ``external_data_threshold`` go to one
   ``<file>.data`` beside the graph; ``onnx.checker`` (``full_check=True``)
   passes before the call returns.

``ExportArchive.write_out(path, format="onnx")`` writes a folder instead:
``<endpoint>.onnx`` per endpoint, one shared ``weights.data`` and
``manifest.json`` (see :func:`write_archive`).

Modules (this one only re-exports what the rest of kexport uses):

- ``_graph``: constants, :class:`RawGraph`, the ``Strategy`` base and its ``Attempt``;
- ``_options``: step 1 checks (options, lookup layers);
- ``_tensorflow``, ``_torch``, ``_jax``: the capture strategies of each backend;
- ``_export``: the strategy order per backend, the try-in-order loop, what a
  re-host carries;
- ``_finish``: step 3 passes; ``_write``: step 4; ``_io``: external data;
- ``_archive``: ``ExportArchive`` folders (recognising kexport's ONNX files is
  :mod:`kexport.artifact`'s);
- ``_accept``: the ONNX Runtime check of a fast converter's graph;
- ``compat``: every workaround of a peer library (tf2onnx, jax2onnx, torch.onnx).
"""

from __future__ import annotations

from kexport.formats.onnx._archive import write_archive
from kexport.formats.onnx._export import (
    export_jax,
    export_tensorflow,
    export_torch,
    in_process_problem,
    rehost_options,
)
from kexport.formats.onnx._graph import (
    ARCHIVE_WEIGHTS,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
    DEFAULT_OPSET,
    RawGraph,
)

__all__ = [
    "ARCHIVE_WEIGHTS",
    "DEFAULT_EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_OPSET",
    "RawGraph",
    "export_jax",
    "in_process_problem",
    "rehost_options",
    "export_tensorflow",
    "export_torch",
    "write_archive",
]

"""ONNX writer: one graph per endpoint, named, dynamic, lean, self-describing.

Every ONNX export takes one path (each failure names its step, the route
and what to do next): a single model is an archive of one default endpoint
written as one ``.onnx`` file (:mod:`._export`); ``ExportArchive.write_out(path,
format="onnx")`` writes a folder (:mod:`._archive`). Both convert each
endpoint with :func:`._convert.convert`:

1. **signature** — the model's inputs with names and dynamic dims
   (:mod:`kexport.signature`), planned once;
2. **convert** — the backend's strategies (``STRATEGIES`` in
   :mod:`._convert`), tried in order, each returning an ``Attempt`` that
   holds the raw graph or the reason it refused:

   - TensorFlow: the endpoint traced into a ``tf.function`` (an archive's
     as its capture traced it) and converted by ``tf2onnx`` (:mod:`._tensorflow`);
   - PyTorch: the traced ``torch.onnx`` graph when ONNX Runtime reproduces
     the live model, else ``torch.export`` with a ``torch.export.Dim`` per
     dynamic axis, translated by ``torch.onnx`` (:mod:`._torch`);
   - JAX: ``jax2onnx`` when ONNX Runtime reproduces the live model
     (:mod:`._jax`), for one model and for an archive's endpoints alike;
   - re-host (PyTorch and JAX models with a recurrent layer, or refused by
     every strategy: :class:`~kexport.errors.RouteRefused`): the route table
     (:mod:`kexport.routing.table`; for archives
     :mod:`kexport.routing.archives`) runs the next route, which re-hosts the
     model on TensorFlow in a child process (:mod:`kexport.rehost`),
     where the TensorFlow route writes the graph, checked against the live
     model before it is placed (:func:`rehost_options` checks the options
     it carries);
3. **finish** — onnx-ir passes with stated pre/postconditions, run in order
   (:mod:`._finish`, :mod:`._passes`): Keras names, debug metadata and local
   paths stripped, optimised, opset, dynamic axes named, metadata;
4. **write** — atomically; one file (weights above ``external_data_threshold``
   in ``<file>.data`` beside it) or a folder (``<endpoint>.onnx`` per
   endpoint, one shared ``weights.data``, ``manifest.json``); ``onnx.checker``
   (``full_check=True``) passes before the call returns.

Modules (this one only re-exports what the rest of kexport uses):

- ``_graph``: constants, :class:`Source` (an endpoint to convert),
  :class:`RawGraph`, the ``Strategy`` base and its ``Attempt``;
- ``_options``: its typed options (:class:`OnnxOptions`, parsed once where the call
  enters) and the lookup-layer refusal;
- ``_tensorflow``, ``_torch``, ``_jax``: the strategies of each backend;
- ``_convert``: the strategy order per backend and the one try-in-order loop;
- ``_export``: one model to one file, what a re-host carries;
- ``_archive``: ``ExportArchive`` folders (recognising kexport's ONNX files is
  :mod:`kexport.artifact`'s);
- ``_finish``, ``_passes``: step 3; ``_quantize``: between 3 and 4;
  ``_write``: step 4; ``_io``: external data;
- ``_accept``: the ONNX Runtime check of a fast converter's graph;
- ``compat``: every workaround of a peer library, one module per library.
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
    Source,
)
from kexport.formats.onnx._options import OnnxOptions
from kexport.formats.onnx._passes import FinishPassError

__all__ = [
    "ARCHIVE_WEIGHTS",
    "DEFAULT_EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_OPSET",
    "FinishPassError",
    "RawGraph",
    "Source",
    "export_jax",
    "in_process_problem",
    "OnnxOptions",
    "rehost_options",
    "export_tensorflow",
    "export_torch",
    "write_archive",
]

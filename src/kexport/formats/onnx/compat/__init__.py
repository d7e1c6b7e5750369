"""Every workaround of a peer library's behaviour that the ONNX writer needs, one
module per library.

Each is scoped to kexport's own call (outside it the library behaves as
shipped: every replaced attribute goes through :func:`kexport._patch.scoped_patch`,
shared by concurrent exports and restored when the last one leaves), has the
reason it exists in its module and a test (named in docs/onnx.md), and does
nothing when the library changed so that the private hook is gone.

- :mod:`.tf2onnx` (tf2onnx 1.17): NumPy 2's ``np.product``, the Einsum
  optimizer's cost, ``Erfc``, by-value captures left as inputs;
- :mod:`.keras_backend` (Keras's TensorFlow backend, for tf2onnx): grouped
  convolutions compiled with XLA;
- :mod:`.jax2onnx` (jax2onnx 0.17): the quadratic output-binding check;
- :mod:`.torch_onnx` (torch 2.x): the TorchScript log, the torchlib
  registry, the tracer's warnings, node names of the ``torch.export`` graph;
- :mod:`.onnxscript` (onnxscript 0.7): its optimizer is not thread-safe;
- :mod:`.ort_quantization` (onnxruntime.quantization 1.2x): pre-processing,
  float16 conversion, what the quantizer rewrites.
"""

from __future__ import annotations

from kexport.formats.onnx.compat._nodes import all_nodes
from kexport.formats.onnx.compat.jax2onnx import linear_output_binding
from kexport.formats.onnx.compat.onnxscript import one_optimizer_at_a_time
from kexport.formats.onnx.compat.ort_quantization import (
    excluded_after_gemm_split,
    float16_graph,
    pre_process,
    restore_after_quantization,
)
from kexport.formats.onnx.compat.tf2onnx import (
    TF2ONNX_HANDLERS,
    captured_inputs_to_initializers,
    tf2onnx_patches,
)
from kexport.formats.onnx.compat.torch_onnx import (
    cached_torchlib_registry,
    quiet_torchscript_log,
    scoped_node_names,
    tracer_warnings_to,
)

__all__ = ["TF2ONNX_HANDLERS", "all_nodes", "cached_torchlib_registry",
           "captured_inputs_to_initializers", "excluded_after_gemm_split", "float16_graph",
           "linear_output_binding", "one_optimizer_at_a_time", "pre_process", "quiet_torchscript_log",
           "restore_after_quantization", "scoped_node_names", "tf2onnx_patches",
           "tracer_warnings_to"]

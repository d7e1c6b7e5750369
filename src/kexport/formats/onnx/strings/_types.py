"""NumPy/Keras dtype names as ONNX element types."""

from __future__ import annotations

__all__ = ["onnx_type"]


def onnx_type(dtype: str) -> int:
    """``"string"`` -> ``TensorProto.STRING``, ``"int64"`` -> ``INT64``, ..."""
    import numpy as np
    from onnx import TensorProto, helper

    if dtype == "string":
        return TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

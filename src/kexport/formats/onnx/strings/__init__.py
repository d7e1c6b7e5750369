"""kexport's own ONNX lowering of Keras string and lookup layers (see docs/raw_inputs.md)."""

from kexport.formats.onnx.strings._export import STRING_OPSET, export_strings, has_string_layers

__all__ = ["STRING_OPSET", "export_strings", "has_string_layers"]

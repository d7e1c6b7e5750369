"""Keras string/lookup layers as standard ONNX subgraphs (kexport's own lowering).

Only standard operators: ``StringNormalizer(locale="C")`` (ASCII lowercasing,
as ``tf.strings.lower``), ``StringSplit`` (opset 20), ``StringConcat``,
``Loop``, ``ai.onnx.ml.LabelEncoder``, ``OneHot`` and shape ops. tf2onnx's own
conversion of these layers is never used: it splits text byte by byte (its
``StringSplit`` gets ``sep=''``, every token out of vocabulary).

Each builder appends nodes to a :class:`Builder` and returns the name of its
output. What a builder cannot reproduce exactly raises
:class:`~kexport.errors.UnsupportedRouteError` before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ASCII_WHITESPACE", "KERAS_PUNCTUATION", "Builder"]

#: What ``tf.strings.split`` (no ``sep``) splits on: ASCII whitespace only.
ASCII_WHITESPACE = " \t\n\v\f\r"
#: The characters TextVectorization's ``strip_punctuation`` removes (its
#: regex ``[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']``: every ASCII
#: punctuation character, nothing outside ASCII).
KERAS_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


@dataclass
class Builder:
    """Nodes and initializers of one lowering, with unique names under ``prefix``."""

    prefix: str
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _count: int = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "",
             **attrs: Any) -> list[str]:
        from onnx import helper

        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain,
                                           **attrs))
        return outs

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        return self.node(op, list(inputs), **attrs)[0]

    def const(self, value: Any, dtype: Any = None) -> str:
        import numpy as np
        from onnx import numpy_helper

        array = np.asarray(value, dtype=dtype)
        name = self.name("const")
        if array.dtype.kind in "OUS":
            from onnx import helper

            self.initializers.append(helper.make_tensor(
                name, 8, array.shape, [str(v).encode() for v in array.ravel()]))
        else:
            self.initializers.append(numpy_helper.from_array(array, name))
        return name

    # --- string pieces ---------------------------------------------------------------
    def lower(self, x: str) -> str:
        """ASCII lowercasing, as ``tf.strings.lower`` (the "C" locale leaves
        every non-ASCII character as it is; measured equal on mixed text)."""
        return self.op("StringNormalizer", x, case_change_action="LOWER", locale="C",
                       is_case_sensitive=1)

    def replace_char(self, x: str, char: str, by: str) -> str:
        """Every ``char`` in the 1-D string tensor ``x`` replaced by ``by``
        (``""``: removed): split on it, then the pieces joined by a ``Loop``."""
        import numpy as np

        pieces, _ = self.node("StringSplit", [x], 2, delimiter=char)
        # one more empty column, so that an all-empty batch still has a column 0
        rows = self.op("Shape", x)
        pad = self.op("Expand", self.const(np.array([[""]], dtype=object)),
                      self.op("Concat", rows, self.const([1], "int64"), axis=0))
        pieces = self.op("Concat", pieces, pad, axis=1)
        first = self.op("Gather", pieces, self.const(0, "int64"), axis=1)
        trips = self.op("Sub", self.op("Gather", self.op("Shape", pieces),
                                       self.const(1, "int64"), axis=0),
                        self.const(1, "int64"))
        return self.op("Loop", trips, "", first, body=_join_body(self.name("join"), pieces, by))

    def tokens(self, x: str) -> tuple[str, str]:
        """``tf.strings.split(x)``: tokens ``[rows, longest]`` padded with ``""``, and
        each row's count (ONNX's ``StringSplit`` without delimiter splits on
        spaces only, so the other ASCII whitespace becomes spaces first)."""
        for char in ASCII_WHITESPACE[1:]:
            x = self.replace_char(x, char, " ")
        tokens, counts = self.node("StringSplit", [x], 2)
        return tokens, counts


def _join_body(name: str, pieces: str, by: str) -> Any:
    """The ``Loop`` body: ``acc = acc + by + pieces[:, i + 1]``."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Constant", [], [f"{name}/one"],
                         value=helper.make_tensor(f"{name}/one_v", TensorProto.INT64, [], [1])),
        helper.make_node("Add", [f"{name}/i", f"{name}/one"], [f"{name}/j"]),
        helper.make_node("Gather", [pieces, f"{name}/j"], [f"{name}/col"], axis=1),
        helper.make_node("Identity", [f"{name}/cond_in"], [f"{name}/cond_out"]),
    ]
    acc = f"{name}/acc"
    if by:
        nodes.append(helper.make_node(
            "Constant", [], [f"{name}/sep"],
            value=helper.make_tensor(f"{name}/sep_v", TensorProto.STRING, [], [by.encode()])))
        nodes.append(helper.make_node("StringConcat", [acc, f"{name}/sep"], [f"{name}/acc_sep"]))
        acc = f"{name}/acc_sep"
    nodes.append(helper.make_node("StringConcat", [acc, f"{name}/col"], [f"{name}/acc_out"]))
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(f"{name}/i", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{name}/cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{name}/acc", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info(f"{name}/cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{name}/acc_out", TensorProto.STRING, [None])])

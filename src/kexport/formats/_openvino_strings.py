"""OpenVINO IR of endpoints that hold strings or lookup tables (issue #27).

Part of the OpenVINO writer (:mod:`kexport.formats.openvino`). OpenVINO's
TensorFlow frontend converts string ops (``StringLower``, ``StringSplitV2``,
``LookupTableFindV2``, ``StringToHashBucketFast``, ...) only through the
conversion extensions of ``openvino-tokenizers``, which register when the
package is imported, and it reads a lookup table's contents only from a
SavedModel (on a concrete function the table is an unbound resource
parameter: "Model references undeclared parameters"). So such an endpoint
is saved as a private temporary SavedModel (the signature function and the
tracked resources, as the LiteRT writer does) and converted from that folder
with ``openvino_tokenizers`` imported.

The IR then holds the tokenizers' own operations (``StringTensorUnpack``,
``VocabEncoder``, ``RegexSplit``, ``StringToHashBucket``, ...), which only an
``openvino.Core`` with the extension loaded can compile: the manifest records
``extensions: ["openvino_tokenizers"]`` and :mod:`kexport.runtime.openvino`
imports the package before compiling (a typed error naming the pip extra
``kexport[strings]`` when it is missing). An IR made of standard operations
only (``IntegerLookup`` becomes ``Equal``/``Select``; ``Discretization``
becomes ``Bucketize``) records no extension.

``DenseBincount``/``RaggedBincount`` (how the ``multi_hot``/``count``/``tf_idf``
modes count) have no OpenVINO conversion: kexport adds its own
(:func:`_bincount_extensions`, standard ``OneHot``/``ReduceSum``/``MatMul``).
What still has none is refused with an
:class:`~kexport.errors.UnsupportedRouteError` before anything is written:
``StringToHashBucketStrong`` (``Hashing`` with a salt: SipHash),
``UnicodeDecode`` (``split="character"``), ``StringNGrams`` (``ngrams``).
"""

from __future__ import annotations

import re
import tempfile
from typing import TYPE_CHECKING, Any

from kexport.artifact.extensions import OPENVINO_TOKENIZERS as EXTENSION
from kexport.artifact.extensions import load_extension
from kexport.context import step_label
from kexport.errors import CaptureError, UnsupportedRouteError

if TYPE_CHECKING:
    from kexport.capture._base import TracedEndpoint
    from kexport.formats._writer import EndpointArchive

__all__ = ["EXTENSION", "convert_saved", "needs_extension", "uses_strings"]

#: what the standard opsets are called in an operation's type info
_STANDARD = re.compile(r"^opset\d+$")
#: TensorFlow's whitespace (``StringSplitV2`` without ``sep``: C ``isspace``, ASCII only)
_ASCII_SPACE = r"[\x20\x09\x0a\x0b\x0c\x0d]"
#: the tokenizers' patterns for it, and what they become
_WHITESPACE = {r"[\s\p{Zs}]+": _ASCII_SPACE + "+",
               r"^\s+|\s+$": f"^{_ASCII_SPACE}+|{_ASCII_SPACE}+$"}
_NO_RULE = re.compile(r"No conversion rule found for operations: ([^\n]+)")
#: TensorFlow ops of Keras layers that openvino-tokenizers does not convert, and which
#: layer options bring them
_WHY = {"UnicodeDecode": "TextVectorization split='character'",
        "StringNGrams": "TextVectorization ngrams",
        "StringToHashBucketStrong": "Hashing with a salt (SipHash)"}


def uses_strings(concrete: Any) -> bool:
    """Whether a concrete function computes on strings, reads a lookup table or
    buckets (``Bucketize``: peer bug, OpenVINO's frontend reads its ``boundaries``
    from a live graph as doubles and fails, "Bad as from: vector<double> to:
    vector<float>"; from a SavedModel it converts)."""
    import tensorflow as tf

    if any(getattr(t, "dtype", None) == tf.string for t in concrete.inputs):
        return True
    graph_def = concrete.graph.as_graph_def()
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return any("LookupTable" in n.op or "HashTable" in n.op or n.op.startswith("String")
               or n.op == "Bucketize" for n in nodes)


def needs_extension(model: Any) -> bool:
    """Whether an IR holds operations outside OpenVINO's standard opsets."""
    return any(not _STANDARD.match(op.get_type_info().version_id or "opset1")
               for op in model.get_ops())


def _positional(concrete: Any) -> Any:
    """``concrete`` with inputs named so that their sorted order is the flat order.

    OpenVINO reads a SavedModel signature's inputs sorted by name (a new
    ``ov.Model`` over reordered parameters crashes once the converted one is
    freed: the tokenizers' operations live in its extension library);
    :func:`kexport.formats._openvino_names.named` then gives them the Keras names."""
    import tensorflow as tf

    specs = [tf.TensorSpec(t.shape, t.dtype, name=f"kexport_input_{i:04d}")
             for i, t in enumerate(concrete.structured_input_signature[0])]
    return tf.function(lambda *xs: concrete(*xs), input_signature=specs,
                       autograph=False).get_concrete_function()


def convert_saved(endpoint: TracedEndpoint, archive: EndpointArchive, concrete: Any) -> Any:
    """``openvino.convert_model`` on a temporary SavedModel of ``concrete``, tokenizers on.

    Raises:
        UnsupportedRouteError: an op openvino-tokenizers cannot convert (named).
        ArtifactError: openvino-tokenizers is not installed.
    """
    import openvino as ov
    import tensorflow as tf

    load_extension(EXTENSION, f"{step_label('convert', 'openvino')}: endpoint '{endpoint.name}' with strings "
                     "or lookup tables")
    state = archive.trackables()
    root = tf.__internal__.tracking.AutoTrackable()
    root._kexport_all_variables = list(state["variables"])
    root._kexport_resources = list(state["resources"])
    with tempfile.TemporaryDirectory(prefix="kexport-openvino-sm-") as tmp:
        tf.saved_model.save(root, tmp, signatures={"serving_default": _positional(concrete)})
        try:
            model = _equal_str_shaped(_ascii_whitespace(ov.convert_model(
                tmp, extension=_bincount_extensions())))
        except Exception as e:
            missing = _NO_RULE.search(str(e))
            if missing is None:
                raise CaptureError(
                    f"{step_label('convert', 'openvino')}: converting endpoint '{endpoint.name}' "
                    "(strings or lookup tables, from a SavedModel with openvino-tokenizers) "
                    f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
            ops = [o.strip() for o in missing.group(1).split(",")]
            why = "; ".join(f"{o} ({_WHY[o]})" if o in _WHY else o for o in ops)
            raise UnsupportedRouteError(
                f"{step_label('convert', 'openvino')}: endpoint '{endpoint.name}' cannot be exported to "
                f"OpenVINO exactly: openvino-tokenizers has no conversion for {why}; nothing "
                "was written. Formats that hold the model: format='tf_saved_model' (every "
                "string layer; docs/raw_inputs.md lists the other formats per layer)."
            ) from e
    return model


def _ascii_whitespace(model: Any) -> Any:
    """Peer workaround: openvino-tokenizers translates ``StringSplitV2`` (no ``sep``) to a
    strip on ``\\s`` and a ``RegexSplit`` on ``[\\s\\p{Zs}]+``; the second splits on
    Unicode spaces (``\\xa0``, ``\\u3000``) and the first misses ``\\v``, where
    TensorFlow splits on the six ASCII whitespace characters only (measured: ``"x\\xa0y"``
    is one token in TensorFlow, two in the IR). Each such pattern constant becomes the
    ASCII class."""
    import numpy as np
    import openvino.opset13 as opset

    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("RegexSplit", "RegexNormalization"):
            continue
        for i in range(op.get_input_size()):
            source = op.input_value(i).get_node()
            if source.get_type_name() != "Constant" or \
                    source.get_output_element_type(0).get_type_name() != "u8":
                continue
            pattern = _WHITESPACE.get(bytes(source.get_data()).decode("utf-8", "replace"))
            if pattern is not None:
                data = np.frombuffer(pattern.encode(), dtype=np.uint8)
                op.input(i).replace_source_output(opset.constant(data).output(0))
    model.validate_nodes_and_infer_types()
    return model


def _equal_str_shaped(model: Any) -> Any:
    """Peer workaround: openvino-tokenizers' ``EqualStr`` (a string ``Equal``, how
    Keras's lookups find the mask token) returns a flat vector for inputs of rank 2
    and more, so the ``Select`` after it broadcasts ``(n,)`` against ``(n, 1)`` into
    ``(n, n)`` (measured: ``StringLookup(mask_token="")`` on a ``(None, 1)`` input gave
    ``(3, 3)``). Its result is reshaped to the broadcast shape of its two operands
    (their ``begins`` tensors carry the strings' shapes)."""
    import openvino.opset13 as opset

    for op in model.get_ordered_ops():
        if op.get_type_name() != "EqualStr":
            continue
        left, right = op.input_value(0), op.input_value(3)
        if left.get_partial_shape().rank.get_length() < 2 and \
                right.get_partial_shape().rank.get_length() < 2:
            continue
        consumers = list(op.output(0).get_target_inputs())
        shape = opset.shape_of(opset.add(left, right))
        shaped = opset.reshape(op.output(0), shape, special_zero=False)
        for target in consumers:
            target.replace_source_output(shaped.output(0))
    model.validate_nodes_and_infer_types()
    return model



def _bincount_extensions() -> list[Any]:
    """OpenVINO conversions of ``DenseBincount`` and ``RaggedBincount`` in standard ops.

    ``binary_output`` is read with a default (``get_attribute(name, False)``:
    without one, OpenVINO's Python ``NodeContext`` fails on a bool attribute,
    "can't be converted to defined types"). Counts are exact in float32 (rows
    shorter than 2**24 tokens)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as opset
    from openvino.frontend.tensorflow import ConversionExtension

    one, zero = opset.constant(np.float32(1)), opset.constant(np.float32(0))

    def unweighted(weights: Any) -> Any:
        if weights.get_partial_shape().is_dynamic or weights.get_partial_shape() != [0]:
            raise ValueError("a weighted bincount (Keras's layers pass no weights)")
        return weights.get_element_type()

    def hot(ids: Any, depth: Any) -> Any:
        return opset.one_hot(opset.convert(ids, ov.Type.i64), opset.convert(depth, ov.Type.i64),
                             one, zero, axis=-1)

    def dense(node: Any) -> list[Any]:  # [..., n] ids -> [..., size] over the last axis
        binary = bool(node.get_attribute("binary_output", False))
        x, size, weights = node.get_input(0), node.get_input(1), node.get_input(2)
        axis = opset.constant(np.int64(-2))
        reduce = opset.reduce_max if binary else opset.reduce_sum
        counts = reduce(hot(x, size), axis, keep_dims=False)
        return [opset.convert(counts, unweighted(weights)).output(0)]

    def ragged(node: Any) -> list[Any]:  # row splits + values -> [rows, size]
        binary = bool(node.get_attribute("binary_output", False))
        splits, values, size, weights = (node.get_input(i) for i in range(4))
        count = opset.squeeze(opset.shape_of(values, "i64"), opset.constant([0]))
        position = opset.range(opset.constant(np.int64(0)), count,
                               opset.constant(np.int64(1)), "i64")
        ends = opset.slice(opset.convert(splits, ov.Type.i64), opset.constant([1]),
                           opset.constant([np.iinfo(np.int64).max]), opset.constant([1]))
        row = opset.bucketize(position, ends, "i64", with_right_bound=False)
        rows = opset.squeeze(opset.shape_of(ends, "i64"), opset.constant([0]))
        counts = opset.matmul(hot(row, rows), hot(values, size), transpose_a=True,
                              transpose_b=False)
        if binary:
            counts = opset.minimum(counts, one)
        return [opset.convert(counts, unweighted(weights)).output(0)]

    return [ConversionExtension("DenseBincount", dense),
            ConversionExtension("RaggedBincount", ragged)]

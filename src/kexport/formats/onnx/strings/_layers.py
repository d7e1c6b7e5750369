"""Which Keras layers kexport lowers to standard ONNX, and how (see :mod:`._ops`).

TextVectorization (standardize ``None``/``"lower"``/``"strip_punctuation"``/
``"lower_and_strip_punctuation"``; split ``"whitespace"`` or ``None``; no
ngrams; output ``"int"`` with or without ``output_sequence_length``,
``"multi_hot"``, ``"count"``, ``"tf_idf"``), StringLookup and IntegerLookup
(``"int"``, ``"one_hot"``, ``"multi_hot"``, ``"count"``, ``"tf_idf"``; one
out-of-vocabulary index, or several on IntegerLookup, whose ``floormod``
buckets ONNX's ``Mod`` computes; not inverted). The table is read from the
layer's own TensorFlow hash table (``lookup_table.export()``), so what the
graph maps is what Keras maps.
"""

from __future__ import annotations

from typing import Any

from kexport.context import step_label
from kexport.errors import UnsupportedRouteError
from kexport.formats.onnx.strings._ops import KERAS_PUNCTUATION, Builder

__all__ = ["LOWERED", "lower", "refusal"]

LOWERED = ("TextVectorization", "StringLookup", "IntegerLookup")
_MODES = ("int", "one_hot", "multi_hot", "count", "tf_idf")
_FORMATS = "format='tf_saved_model' (kept as TensorFlow ops)"


_LOWERING = "route: kexport's string lowering"


def _refuse(layer: Any, why: str) -> UnsupportedRouteError:
    return UnsupportedRouteError(
        f"{step_label('plan', _LOWERING)}: Keras layer "
        f"'{layer.name}' ({type(layer).__name__}) cannot be exported to ONNX exactly: {why}. "
        f"Next steps: {_FORMATS} holds it; or export the model from the layer's output on.")


def refusal(layer: Any) -> UnsupportedRouteError | None:
    """Why ``layer`` cannot be lowered exactly (``None``: it can)."""
    kind = type(layer).__name__
    if kind not in LOWERED:
        return _refuse(layer, "kexport has no ONNX lowering of this layer")
    lookup = layer._lookup_layer if kind == "TextVectorization" else layer
    if kind == "TextVectorization":
        if callable(layer._standardize) or callable(layer._split):
            return _refuse(layer, "a Python callable as `standardize`/`split` cannot be "
                           "translated")
        if layer._split == "character":
            return _refuse(layer, "split='character' (UTF-8 code points) has no standard "
                           "ONNX operator")
        if layer._ngrams is not None:
            return _refuse(layer, f"ngrams={layer._ngrams!r} is not lowered")
        if getattr(layer, "_ragged", False):
            return _refuse(layer, "ragged=True outputs have no ONNX tensor")
    if getattr(lookup, "invert", False):
        return _refuse(layer, "invert=True is not lowered")
    if getattr(lookup, "sparse", False):
        return _refuse(layer, "sparse=True outputs have no dense ONNX tensor")
    if lookup.output_mode not in _MODES:
        return _refuse(layer, f"output_mode={lookup.output_mode!r} is not lowered")
    if lookup.num_oov_indices == 0:
        return _refuse(layer, "num_oov_indices=0 raises on unknown tokens at run time, "
                       "which an ONNX graph cannot")
    if lookup.num_oov_indices > 1 and (kind != "IntegerLookup" or lookup.oov_method ==
                                       "farmhash" or lookup.salt is not None):
        return _refuse(layer, f"num_oov_indices={lookup.num_oov_indices} hashes tokens "
                       "with FarmHash/SipHash, which no ONNX operator computes")
    return None


def _table(b: Builder, lookup: Any, x: str, strings: bool) -> str:
    """``lookup``'s own table, mask and out-of-vocabulary rules applied to ``x``."""
    import numpy as np
    from onnx import TensorProto

    keys, values = (t.numpy() for t in lookup.lookup_table.export())
    table = {_key(k, strings): int(v) for k, v in zip(keys, values, strict=True)}
    if lookup.mask_token is not None:  # the mask wins over the table, as in Keras
        table[_key(np.asarray(lookup._mask_key).item(), strings)] = int(lookup._mask_value)
    default = int(lookup._default_value)
    attrs: dict[str, Any] = {"values_int64s": list(table.values()), "default_int64": default,
                             ("keys_strings" if strings else "keys_int64s"): list(table)}
    if not strings:
        x = b.op("Cast", x, to=TensorProto.INT64)
    ids = b.op("LabelEncoder", x, domain="ai.onnx.ml", **attrs)
    if lookup.num_oov_indices > 1:  # IntegerLookup's floormod buckets (ONNX Mod: floor)
        bucket = b.op("Add", b.op("Mod", x, b.const(lookup.num_oov_indices, "int64")),
                      b.const(lookup._oov_start_index(), "int64"))
        oov = b.op("Equal", ids, b.const(default, "int64"))
        if lookup.mask_token is not None:  # a masked input equal to the default stays
            oov = b.op("And", oov, b.op("Not", b.op("Equal", x, b.const(
                int(np.asarray(lookup._mask_key)), "int64"))))
        ids = b.op("Where", oov, bucket, ids)
    return ids


def _key(key: Any, strings: bool) -> Any:
    if not strings:
        return int(key)
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)


def _encode(b: Builder, lookup: Any, ids: str, shape: tuple[Any, ...],
            valid: str | None) -> str:
    """Keras's ``encode_categorical_inputs`` for ``ids`` (``valid``: which
    positions of a padded token matrix are real tokens)."""
    from onnx import TensorProto

    mode = lookup.output_mode
    if mode == "int":
        return ids
    depth = int(lookup.max_tokens if lookup.pad_to_max_tokens else lookup.vocabulary_size())
    depth_c = b.const(depth, "int64")
    if valid is not None:  # padding -> an index OneHot leaves all zeros
        ids = b.op("Where", valid, ids, depth_c)
    onoff = b.const([0.0, 1.0], "float32")
    if mode == "one_hot":
        if len(shape) > 1 and shape[-1] == 1:  # Keras encodes on a last axis of 1
            ids = b.op("Squeeze", ids, b.const([-1], "int64"))
        return b.op("OneHot", ids, depth_c, onoff, axis=-1)
    if len(shape) == 1:
        ids = b.op("Unsqueeze", ids, b.const([-1], "int64"))
    # one padding column more, so a row without tokens still reduces over a column
    shape = b.op("Shape", ids)
    pad = b.op("Expand", depth_c, b.op("Concat", b.op("Slice", shape, b.const([0], "int64"),
                                                      b.const([1], "int64")),
                                       b.const([1], "int64"), axis=0))
    ids = b.op("Concat", ids, pad, axis=1)
    hot = b.op("OneHot", ids, depth_c, onoff, axis=-1)
    axes = b.const([1], "int64")
    if mode == "multi_hot":
        return b.op("ReduceMax", hot, axes, keepdims=0)
    counts = b.op("ReduceSum", hot, axes, keepdims=0)
    if mode == "tf_idf":
        import numpy as np

        weights = b.const(np.asarray(lookup.idf_weights_const, dtype="float32"))
        counts = b.op("Mul", counts, weights)
    return b.op("Cast", counts, to=TensorProto.FLOAT)


def lower(b: Builder, layer: Any, x: str, shape: tuple[Any, ...]) -> str:
    """The output of ``layer`` on ``x`` (of static shape ``shape``), built into ``b``."""
    rank = len(shape)
    problem = refusal(layer)
    if problem is not None:
        raise problem
    kind = type(layer).__name__
    if kind != "TextVectorization":
        return _encode(b, layer, _table(b, layer, x, kind == "StringLookup"), shape,
                       None)
    standardize = layer._standardize
    if standardize is not None:  # on a 1-D tensor (StringNormalizer takes no other)
        shape = b.op("Shape", x)
        x = b.op("Reshape", x, b.const([-1], "int64"))
        if standardize in ("lower", "lower_and_strip_punctuation"):
            x = b.lower(x)
        if standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
            for char in KERAS_PUNCTUATION:
                x = b.replace_char(x, char, "")
        x = b.op("Reshape", x, shape)
    if layer._split is None:  # each string is one token
        ids = _table(b, layer._lookup_layer, x, True)
        return _encode(b, layer._lookup_layer, ids, shape, None) if \
            layer._output_mode != "int" else _fit_length(b, layer, ids, rank)
    if rank > 1:
        x = b.op("Squeeze", x, b.const([-1], "int64"))
    tokens, counts = b.tokens(x)
    ids = _table(b, layer._lookup_layer, tokens, True)
    positions = b.op("Range", b.const(0, "int64"),
                     b.op("Gather", b.op("Shape", tokens), b.const(1, "int64"), axis=0),
                     b.const(1, "int64"))
    valid = b.op("Less", b.op("Unsqueeze", positions, b.const([0], "int64")),
                 b.op("Unsqueeze", counts, b.const([-1], "int64")))
    if layer._output_mode != "int":
        return _encode(b, layer._lookup_layer, ids, (None, None), valid)
    ids = b.op("Where", valid, ids, b.const(0, "int64"))
    return _fit_length(b, layer, ids, 2)


def _fit_length(b: Builder, layer: Any, ids: str, rank: int) -> str:
    """Padded with 0 / cut to ``output_sequence_length`` on the last axis."""
    length = layer._output_sequence_length
    if length is None:
        return ids
    padded = b.op("Pad", ids, b.const([0] * (2 * rank - 1) + [length], "int64"))
    return b.op("Slice", padded, b.const([0], "int64"), b.const([length], "int64"),
                b.const([-1], "int64"))

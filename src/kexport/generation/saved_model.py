"""The generative form as a SavedModel: ``prefill`` and ``decode`` signatures, cache explicit.

Written from the TensorFlow backend with one ``tf.function`` per endpoint
around the model's ``call_with_cache``; the sequence, cache length and batch
stay dynamic, so TF-Serving can serve both signatures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kexport.artifact import SAVED_MODEL_MANIFEST
from kexport.generation.spec import GenerativeSpec

__all__ = ["endpoint_entries", "manifest_file", "write"]


def endpoint_entries(spec: GenerativeSpec) -> dict[str, dict[str, Any]]:
    """The manifest entries of the two endpoints (names, shapes, dtypes)."""
    g, n = spec.cache, spec.names
    tokens = {"name": n["token_ids"], "dtype": "int32"}
    cache = {"name": n["cache"], "dtype": g.dtype, "shape": list(g.shape(None, None))}
    logits = {"name": n["logits"], "dtype": g.dtype}
    return {
        spec.prefill: {"inputs": [dict(tokens, shape=[None, None])],
                       "outputs": [dict(logits, shape=[None, None, g.vocab_size]),
                                   dict(cache, name=n["cache_out"])]},
        spec.decode: {"inputs": [dict(tokens, shape=[None, 1]), cache,
                                 {"name": n["index"], "dtype": "int32", "shape": []}],
                      "outputs": [dict(logits, shape=[None, 1, g.vocab_size]),
                                  dict(cache, name=n["cache_out"])]},
    }


def manifest_file(folder: Path) -> Path:
    """Where the artifact's manifest lives."""
    return folder / SAVED_MODEL_MANIFEST


def write(model: Any, spec: GenerativeSpec, folder: Path) -> None:
    """Write the SavedModel of ``model``'s prefill/decode into ``folder`` (a new path)."""
    import tensorflow as tf

    g, n = spec.cache, spec.names
    dtype = tf.as_dtype(g.dtype)
    cache_spec = tf.TensorSpec(g.shape(None, None), dtype, name=n["cache"])

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name=n["token_ids"])])
    def prefill(token_ids: Any) -> dict[str, Any]:
        shape = tf.shape(token_ids)
        cache = tf.zeros(g.shape(shape[0], shape[1]), dtype)
        logits, _, cache = model.call_with_cache(token_ids, cache, 0)
        return {n["logits"]: logits, n["cache_out"]: cache}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.int32, name=n["token_ids"]),
                                  cache_spec, tf.TensorSpec([], tf.int32, name=n["index"])])
    def decode(token_ids: Any, cache: Any, cache_update_index: Any) -> dict[str, Any]:
        logits, _, cache = model.call_with_cache(token_ids, cache, cache_update_index)
        return {n["logits"]: logits, n["cache_out"]: cache}

    root = tf.Module()
    root.model_variables = [getattr(v, "value", v) for v in model.variables]
    root.prefill, root.decode = prefill, decode
    tf.saved_model.save(root, os.fspath(folder),
                        signatures={spec.prefill: prefill.get_concrete_function(),
                                    spec.decode: decode.get_concrete_function()})

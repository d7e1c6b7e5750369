"""The generative form as LiteRT: ``prefill_{N}`` and ``decode`` signatures with fixed shapes.

Written from the TensorFlow backend: two ``tf.function``\\ s around the model's
``call_with_cache``, converted together by ``TFLiteConverter.from_concrete_functions``
with builtin operators only (the cache write, TensorFlow's
``XlaDynamicUpdateSlice``, becomes ``DYNAMIC_UPDATE_SLICE``). LiteRT wants
fixed shapes, so every size is declared fixed: batch 1, a cache of the
model's context length ``M`` and a prefill of ``N`` tokens. The names follow
LiteRT-LM's convention: ``tokens`` int32 ``[1, N]`` (``[1, 1]`` for decode),
``input_pos`` int32 ``[N]`` (``[1]``; the positions of the tokens, which start
at ``input_pos[0]``), ``kv_cache_k_{i}`` / ``kv_cache_v_{i}`` ``[1, M, H, D]``
(BTNH, keras_hub's ``cache[:, i, 0]`` and ``cache[:, i, 1]``) in and out, and
``logits``. The artifact is a folder holding ``model.tflite`` and kexport's
manifest. kexport's loop drives it (:func:`as_keras_cache`): one row at a
time, a prompt longer than ``N`` prefilled in chunks, shorter ones padded
(positions past a row's tokens are masked by the cached attention and
rewritten before they are read).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kexport.artifact import MANIFEST_NAME
from kexport.errors import CaptureError
from kexport.generation.spec import GenerativeSpec

__all__ = ["CONVENTION", "DEFAULT_CONTEXT", "FILE", "PREFILL_LENGTH", "as_keras_cache",
           "endpoint_entries", "manifest_file", "spec_for", "write"]

#: The flatbuffer inside the artifact's folder.
FILE = "model.tflite"
#: The spec's convention for these signatures.
CONVENTION = "litert_lm"
#: Tokens per prefill call (at most the cache length).
PREFILL_LENGTH = 32
#: The cache length when the model has no context limit of its own.
DEFAULT_CONTEXT = 1024
_NAMES = {"tokens": "tokens", "input_pos": "input_pos", "logits": "logits",
          "k": "kv_cache_k_{layer}", "v": "kv_cache_v_{layer}"}


def spec_for(spec: GenerativeSpec) -> GenerativeSpec:
    """``spec`` as this format writes it: fixed cache length, ``prefill_{N}``, LiteRT-LM names."""
    length = spec.cache.context_length or DEFAULT_CONTEXT
    n = min(PREFILL_LENGTH, length)
    return replace(spec, cache=replace(spec.cache, context_length=length),
                   prefill=f"prefill_{n}", decode="decode", convention=CONVENTION,
                   names=dict(_NAMES))


def _length(spec: GenerativeSpec) -> int:
    return int(spec.prefill.rsplit("_", 1)[1])


def _cache_names(spec: GenerativeSpec) -> list[str]:
    n = spec.names
    return [n[kv].format(layer=i) for i in range(spec.cache.num_layers) for kv in ("k", "v")]


def endpoint_entries(spec: GenerativeSpec) -> dict[str, dict[str, Any]]:
    """The manifest entries of the two signatures (all shapes fixed)."""
    g, n = spec.cache, spec.names
    m = g.context_length
    caches = [{"name": c, "dtype": g.dtype, "shape": [1, m, g.kv_heads, g.head_dim]}
              for c in _cache_names(spec)]

    def entry(s: int) -> dict[str, Any]:
        return {"inputs": [{"name": n["tokens"], "dtype": "int32", "shape": [1, s]},
                           {"name": n["input_pos"], "dtype": "int32", "shape": [s]}, *caches],
                "outputs": [{"name": n["logits"], "dtype": g.dtype,
                             "shape": [1, s, g.vocab_size]}, *caches]}
    return {spec.prefill: entry(_length(spec)), spec.decode: entry(1)}


def manifest_file(folder: Path) -> Path:
    """Where the artifact's manifest lives."""
    return folder / MANIFEST_NAME


def write(model: Any, spec: GenerativeSpec, folder: Path) -> None:
    """Convert ``model``'s prefill/decode into ``folder/model.tflite`` (builtin ops only).

    Raises:
        CaptureError: when the converter refuses the graph.
    """
    import tensorflow as tf

    g, n = spec.cache, spec.names
    dtype = tf.as_dtype(g.dtype)
    names = _cache_names(spec)
    kv_shape = [1, g.context_length, g.kv_heads, g.head_dim]

    def step(key: str, s: int) -> Any:
        signature = [tf.TensorSpec([1, s], tf.int32, name=n["tokens"]),
                     tf.TensorSpec([s], tf.int32, name=n["input_pos"]),
                     *[tf.TensorSpec(kv_shape, dtype, name=c) for c in names]]

        def run(tokens: Any, input_pos: Any, *caches: Any) -> dict[str, Any]:
            pairs = [tf.stack(caches[2 * i:2 * i + 2], axis=1) for i in range(g.num_layers)]
            cache = tf.stack(pairs, axis=1)  # [1, L, 2, M, H, D]
            logits, _, cache = model.call_with_cache(tokens, cache, input_pos[0])
            out = {n["logits"]: logits}
            for i in range(g.num_layers):
                out[names[2 * i]], out[names[2 * i + 1]] = cache[:, i, 0], cache[:, i, 1]
            return out
        run.__name__ = key  # the converter keys each signature by its function's name
        return tf.function(run, input_signature=signature).get_concrete_function()

    root = tf.Module()
    root.model_variables = [getattr(v, "value", v) for v in model.variables]
    functions = [step(spec.prefill, _length(spec)), step(spec.decode, 1)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, root)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # the converter raises ConverterError and friends
        raise CaptureError(
            "task='generate' to LiteRT: TFLiteConverter (builtin ops only) refused the "
            f"prefill/decode graph: {str(e).strip().splitlines()[-1][:400]}") from e
    (folder / FILE).write_bytes(flatbuffer)


def as_keras_cache(spec: GenerativeSpec, run: Any) -> tuple[GenerativeSpec, Any]:
    """The two fixed-shape signatures as the prefill/decode pair with keras_hub's cache
    (any batch, any length up to the cache's), for :func:`kexport.generation.generate`."""
    import numpy as np

    g, names = spec.cache, spec.names
    m, size = g.context_length, _length(spec)
    caches = _cache_names(spec)
    plain = GenerativeSpec(cache=g)

    def call(endpoint: str, tokens: Any, start: int, kv: dict[str, Any]) -> dict[str, Any]:
        feeds = {names["tokens"]: tokens[None].astype(np.int32),
                 names["input_pos"]: np.arange(start, start + len(tokens), dtype=np.int32)}
        return run(endpoint, {**feeds, **kv})

    def row(tokens: Any, cache: Any, start: int) -> tuple[Any, Any]:
        """One row: ``tokens`` written from ``start`` into ``cache`` ``[L, 2, T, H, D]``."""
        full = np.zeros((g.num_layers, 2, m, g.kv_heads, g.head_dim), g.dtype)
        full[:, :, :cache.shape[2]] = cache[:, :, :m]
        kv = {c: full[i // 2, i % 2][None] for i, c in enumerate(caches)}
        if len(tokens) == 1:
            out = call(spec.decode, tokens, start, kv)
            logits = out[names["logits"]][0]
        else:
            chunks, at = [], 0
            while at < len(tokens):  # the last chunk starts where it still fits the cache
                begin = min(at, m - size)
                piece = np.zeros(size, np.int32)
                got = tokens[begin:begin + size]
                piece[:len(got)] = got
                out = call(spec.prefill, piece, start + begin, kv)
                kv = {c: out[c] for c in caches}
                chunks.append(out[names["logits"]][0][at - begin:len(got)])
                at = begin + len(got)
            logits = np.concatenate(chunks)
        kv = {c: out[c] for c in caches}
        after = np.stack([np.stack([kv[caches[2 * i]][0], kv[caches[2 * i + 1]][0]])
                          for i in range(g.num_layers)])
        return logits, after[:, :, :cache.shape[2]]

    def keras_run(endpoint: str, feeds: dict[str, Any]) -> dict[str, Any]:
        tokens = np.asarray(feeds["token_ids"])
        if endpoint == plain.prefill:
            cache = np.zeros(g.shape(len(tokens), tokens.shape[1]), g.dtype)
            start = 0
        else:
            cache, start = np.asarray(feeds["cache"]), int(feeds["cache_update_index"])
        rows = [row(t, c, start) for t, c in zip(tokens, cache, strict=True)]
        return {"logits": np.stack([r[0] for r in rows]),
                "cache": np.stack([r[1] for r in rows])}

    if size > m:
        raise CaptureError(f"prefill of {size} tokens is longer than the cache ({m}).")
    return plain, keras_run

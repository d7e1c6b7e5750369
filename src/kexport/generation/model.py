"""What a Keras model must offer to be exported with ``task="generate"``, read from the live model.

A keras_hub ``CausalLM`` whose ``call_with_cache(token_ids, cache,
cache_update_index)`` keeps its cache in one tensor ``[batch, layers, 2,
length, kv_heads, head_dim]`` (GPT-2, Llama, Gemma, Mistral, Qwen, Phi3). The
geometry is read from one ``_build_cache`` call on two tokens, not from the
model's config, so no family is named here.
"""

from __future__ import annotations

from typing import Any

from kexport.errors import UnsupportedRouteError
from kexport.generation.spec import TASK, CacheGeometry

__all__ = ["CAN", "cache_geometry", "context_length"]

#: What ``task="generate"`` takes, for error messages.
CAN = ("a keras_hub CausalLM whose call_with_cache keeps one cache tensor "
       "[batch, layers, 2, length, kv_heads, head_dim] (GPT-2, Llama/Llama3, Gemma, Mistral, "
       "Qwen/Qwen3, Phi3)")


def context_length(model: Any) -> int | None:
    """The longest sequence the backbone's position embedding takes, if it has a limit."""
    backbone = getattr(model, "backbone", None)
    embedding = getattr(backbone, "position_embedding", None)
    limit = getattr(embedding, "sequence_length", None)
    return int(limit) if isinstance(limit, int) else None


def cache_geometry(model: Any) -> CacheGeometry:
    """The cache geometry of ``model``, found by building a cache for two tokens.

    Raises:
        UnsupportedRouteError: a model without ``call_with_cache``/``_build_cache``
            (a forward-pass model, a Seq2SeqLM), or whose cache is not one tensor
            of that layout (Gemma3's per-layer pairs).
    """
    import numpy as np
    from keras import ops

    kind = type(model).__name__
    if not (callable(getattr(model, "call_with_cache", None))
            and callable(getattr(model, "_build_cache", None))):
        raise UnsupportedRouteError(
            f"task={TASK!r} expected {CAN}. Received: a {kind} without call_with_cache; "
            "export its forward pass without `task`.")
    try:
        _, cache = model._build_cache(np.zeros((1, 2), "int32"))
        logits, _, _ = model.call_with_cache(np.zeros((1, 1), "int32"), cache, 1)
    except TypeError as e:
        raise UnsupportedRouteError(
            f"task={TASK!r} expected {CAN}. Received: a {kind} whose call_with_cache takes "
            f"other arguments ({e}).") from e
    shape = tuple(getattr(cache, "shape", ()) or ())
    if not ops.is_tensor(cache) or len(shape) != 6 or shape[2] != 2 or shape[3] != 2:
        what = type(cache).__name__ if not ops.is_tensor(cache) else f"shape {shape}"
        raise UnsupportedRouteError(
            f"task={TASK!r} expected {CAN}. Received: a {kind} whose cache is {what}.")
    return CacheGeometry(num_layers=int(shape[1]), kv_heads=int(shape[4]),
                         head_dim=int(shape[5]), dtype=str(ops.dtype(cache)).split(".")[-1],
                         vocab_size=int(logits.shape[-1]), context_length=context_length(model))

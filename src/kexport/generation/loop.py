"""kexport's own generation loop over a prefill and a decode endpoint (NumPy only).

It does what keras_hub's ``CausalLM.generate`` does with a batch of prompts of
different lengths, so that greedy generation gives Keras's tokens: prompts
are right-padded, the prefill runs over the padded prompts, and decoding
starts at the shortest prompt's last token, keeping each row's own prompt
tokens where it still has them. Every position attends only to positions
before it, so each row is generated as if it were alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kexport.errors import SignatureError, UnsupportedRouteError, describe
from kexport.generation import litert_lm
from kexport.generation.spec import GenerativeSpec

__all__ = ["SAMPLERS", "as_keras_cache", "generate", "prompt_rows"]

#: The samplers :func:`generate` offers.
SAMPLERS = ("greedy", "top_k")

Run = Callable[[str, dict[str, Any]], dict[str, Any]]
#: endpoint, feeds, variables (``None``: initial) -> outputs, variables after
StateRun = Callable[[str, dict[str, Any], dict[str, Any] | None],
                    tuple[dict[str, Any], dict[str, Any]]]


def prompt_rows(prompt_ids: Any) -> list[list[int]]:
    """``prompt_ids`` (one sequence, a list of sequences, or a 2-D array) as rows of ints.

    Raises:
        SignatureError: empty prompts, non-integer ids, or more than two axes.
    """
    import numpy as np

    if isinstance(prompt_ids, np.ndarray):
        if prompt_ids.ndim not in (1, 2) or prompt_ids.dtype.kind not in "iu":
            raise SignatureError(
                "Expected `prompt_ids` as integer token ids of shape (length,) or (batch, "
                f"length). Received: {describe(prompt_ids)}")
        rows = [prompt_ids.tolist()] if prompt_ids.ndim == 1 else prompt_ids.tolist()
    elif isinstance(prompt_ids, Sequence) and prompt_ids and all(
            isinstance(t, (int, np.integer)) for t in prompt_ids):
        rows = [list(prompt_ids)]
    elif isinstance(prompt_ids, Sequence) and prompt_ids:
        rows = [list(np.asarray(r).tolist()) if not isinstance(r, Sequence) else list(r)
                for r in prompt_ids]
    else:
        raise SignatureError(
            "Expected `prompt_ids` as a non-empty sequence of token ids or a list of them. "
            f"Received: {describe(prompt_ids)}")
    for row in rows:
        if not row or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                              for t in row):
            raise SignatureError(
                "Expected every prompt to be a non-empty list of integer token ids. "
                f"Received: {row!r:.120}")
    return [[int(t) for t in row] for row in rows]


def _check(spec: GenerativeSpec, rows: list[list[int]], max_new_tokens: Any,
           sampler: Any) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) \
            or max_new_tokens < 1:
        raise SignatureError(
            f"Expected `max_new_tokens` to be a positive int. Received: {describe(max_new_tokens)}")
    if sampler not in SAMPLERS:
        raise SignatureError(f"Expected `sampler` to be one of {list(SAMPLERS)}. "
                             f"Received: {sampler!r}")
    vocab = spec.cache.vocab_size
    bad = [t for row in rows for t in row if not 0 <= t < vocab]
    if bad:
        raise SignatureError(f"Expected token ids in [0, {vocab}). Received: {bad[:5]}")
    longest = max(len(r) for r in rows) + max_new_tokens
    limit = spec.cache.context_length
    if limit is not None and longest > limit:
        raise SignatureError(
            f"Expected the longest prompt plus `max_new_tokens` to fit the model's context of "
            f"{limit} tokens. Received: {longest} tokens "
            f"({max(len(r) for r in rows)} + {max_new_tokens}).")


def as_keras_cache(spec: GenerativeSpec, run: Run, run_with_state: StateRun | None = None
                   ) -> tuple[GenerativeSpec, Run]:
    """A ``past_key_values`` (or ``stateful``) endpoint as the prefill/decode pair with
    keras_hub's cache.

    The decode's cache ``[B, L, 2, M, H, D]`` is cut to the positions before
    ``cache_update_index`` and handed over as ``past_key_values.{i}.key/.value``
    ``[B, H, P, D]`` (a stateful endpoint: as its variables, with ``beam_idx``
    the identity); the ``present`` values (the variables after) are written back.
    """
    import numpy as np

    g, names = spec.cache, spec.names
    keys = [(i, kv) for i in range(g.num_layers) for kv in ("key", "value")]
    plain = GenerativeSpec(cache=g)

    def step(tokens: Any, past: Any) -> tuple[Any, Any]:
        known = past.shape[3]
        feeds = {names["token_ids"]: tokens.astype(np.int64),
                 names["attention_mask"]: np.ones((len(tokens), known + tokens.shape[1]),
                                                  np.int64)}
        pasts = {(i, kv): np.ascontiguousarray(past[:, i, 0 if kv == "key" else 1]
                                               .transpose(0, 2, 1, 3)) for i, kv in keys}
        if spec.convention == "stateful":
            if run_with_state is None:
                raise UnsupportedRouteError(
                    "Expected a runtime that runs stateful endpoints (OpenVINO) for an "
                    "artifact whose cache is the endpoint's state. Received none.")
            feeds[names["beam_idx"]] = np.arange(len(tokens), dtype=np.int32)
            state = {names["state"].format(layer=i, kv=kv): v for (i, kv), v in pasts.items()}
            out, after = run_with_state(spec.prefill, feeds, state)
            fresh = {key: after[name] for key, name in
                     ((key, names["state"].format(layer=key[0], kv=key[1])) for key in keys)}
        else:
            feeds.update({names["past"].format(layer=i, kv=kv): v for (i, kv), v in pasts.items()})
            out = run(spec.prefill, feeds)
            fresh = {(i, kv): out[names["present"].format(layer=i, kv=kv)] for i, kv in keys}
        present = np.stack([np.stack([fresh[i, kv] for kv in ("key", "value")], 1)
                            for i in range(g.num_layers)], 1)  # [B, L, 2, H, P+S, D]
        return out[names["logits"]], present.transpose(0, 1, 2, 4, 3, 5)

    def keras_run(endpoint: str, feeds: dict[str, Any]) -> dict[str, Any]:
        tokens = np.asarray(feeds["token_ids"])
        if endpoint == plain.prefill:
            past = np.zeros(g.shape(len(tokens), 0), g.dtype)
            logits, cache = step(tokens, past)
            return {"logits": logits, "cache": cache}
        cache, index = np.array(feeds["cache"]), int(feeds["cache_update_index"])
        logits, present = step(tokens, cache[:, :, :, :index])
        cache[:, :, :, :present.shape[3]] = present
        return {"logits": logits, "cache": cache}

    return plain, keras_run


def _chooser(sampler: str, k: int, seed: int | None) -> Callable[[Any], Any]:
    import numpy as np

    if sampler == "greedy":
        return lambda logits: np.argmax(logits, axis=-1)
    if not isinstance(k, int) or k < 1:
        raise SignatureError(f"Expected `k` to be a positive int. Received: {describe(k)}")
    rng = np.random.default_rng(seed)

    def top_k(logits: Any) -> Any:
        logits = logits.astype(np.float64)
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        chosen = np.take_along_axis(logits, top, axis=-1)
        probs = np.exp(chosen - chosen.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        picks = [rng.choice(k, p=p) for p in probs]
        return top[np.arange(len(picks)), picks]
    return top_k


def generate(spec: GenerativeSpec, run: Run, prompt_ids: Any, *, max_new_tokens: int = 16,
             stop_token_ids: Sequence[int] | None = None, sampler: str = "greedy",
             k: int = 5, seed: int | None = None,
             run_with_state: StateRun | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[Any]:
    """Generate from ``prompt_ids`` with the artifact's prefill/decode endpoints.

    Args:
        spec: the artifact's generative spec.
        run: runs an endpoint by name on NumPy feeds (``Artifact.run``).
        prompt_ids: one prompt (a list of ids) or several, of any lengths.
        max_new_tokens: tokens generated after each prompt, at most.
        stop_token_ids: ids that end a row (the stop token is kept); the loop
            ends when every row has one or its budget.
        sampler: ``"greedy"`` (Keras's ``GreedySampler``) or ``"top_k"``.
        k: candidates of ``"top_k"``.
        seed: seed of ``"top_k"``'s draws (NumPy's generator, not Keras's).
        run_with_state: runs a stateful endpoint (``Artifact.run_with_state``).
        on_token: called as ``on_token(row, token_id)`` for each new token as it
            is chosen (a row's calls are its new tokens of the result, in order).

    Returns:
        One int32 array per prompt: the prompt followed by its new tokens.
    """
    import numpy as np

    rows = prompt_rows(prompt_ids)
    _check(spec, rows, max_new_tokens, sampler)
    if spec.convention in ("past_key_values", "stateful"):
        spec, run = as_keras_cache(spec, run, run_with_state)
    elif spec.convention == litert_lm.CONVENTION:
        spec, run = litert_lm.as_keras_cache(spec, run)
    choose = _chooser(sampler, k, seed)
    stops = set() if stop_token_ids is None else {int(t) for t in stop_token_ids}
    names, geometry = spec.names, spec.cache
    lengths = np.array([len(r) for r in rows])
    width = int(lengths.max())
    total = width + max_new_tokens
    tokens = np.zeros((len(rows), total), np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
    ends = lengths + max_new_tokens
    out = run(spec.prefill, {names["token_ids"]: tokens[:, :width]})
    cache = out[names["cache_out"]]
    pad = [(0, 0)] * cache.ndim
    pad[geometry.length_axis] = (0, total - cache.shape[geometry.length_axis])
    cache = np.pad(cache, pad)
    done = np.zeros(len(rows), bool)
    for index in range(int(lengths.min()), total):
        out = run(spec.decode, {names["token_ids"]: tokens[:, index - 1:index],
                                names["cache"]: cache,
                                names["index"]: np.asarray(index - 1, np.int32)})
        cache = out[names["cache_out"]]
        chosen = np.asarray(choose(out[names["logits"]][:, -1, :])).astype(np.int32)
        fresh = (index >= lengths) & (index < ends) & ~done
        tokens[:, index] = np.where(fresh, chosen, tokens[:, index])
        done |= fresh & np.isin(chosen, list(stops))
        if on_token is not None:
            for row in np.flatnonzero(fresh):
                on_token(int(row), int(chosen[row]))
        if np.all(done | (index + 1 >= ends)):
            break
    results = []
    for i in range(len(rows)):
        row = tokens[i, :ends[i]]
        new = row[lengths[i]:]
        hit = np.flatnonzero(np.isin(new, list(stops))) if stops else []
        results.append(row[:lengths[i] + hit[0] + 1] if len(hit) else row)
    return results

"""kexport's generation loop and the generative spec, on a NumPy stand-in for a decoder (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from kexport.errors import ArtifactError, SignatureError, UnsupportedRouteError
from kexport.generation import CacheGeometry, GenerativeSpec, generate

pytestmark = pytest.mark.fast

VOCAB = 17
SPEC = GenerativeSpec(cache=CacheGeometry(num_layers=1, kv_heads=1, head_dim=1,
                                          dtype="float32", vocab_size=VOCAB,
                                          context_length=40))


def _next(history):
    """The stand-in model's greedy choice after ``history`` (depends on all of it)."""
    return (sum((i + 3) * t for i, t in enumerate(history)) * 7 + len(history)) % VOCAB


def _logits(history):
    out = np.zeros(VOCAB, np.float32)
    out[_next(history)] = 1.0
    out[(_next(history) + 5) % VOCAB] = 0.5  # the second choice, for top_k
    return out


class StandIn:
    """prefill/decode over a cache that holds the token ids themselves."""

    def __init__(self):
        self.calls = []

    def __call__(self, endpoint, feeds):
        self.calls.append(endpoint)
        tokens = feeds["token_ids"]
        if endpoint == "prefill":
            b, s = tokens.shape
            cache = np.zeros((b, 1, 2, s, 1, 1), np.float32)
            cache[:, 0, 0, :, 0, 0] = tokens
            logits = np.stack([[_logits(list(row[:j + 1])) for j in range(s)] for row in tokens])
            return {"logits": logits, "cache": cache}
        cache, index = feeds["cache"].copy(), int(feeds["cache_update_index"])
        cache[:, 0, 0, index, 0, 0] = tokens[:, 0]
        history = cache[:, 0, 0, :index + 1, 0, 0].astype(int)
        return {"logits": np.stack([[_logits(list(h))] for h in history]), "cache": cache}


def _alone(prompt, n):
    row = list(prompt)
    for _ in range(n):
        row.append(_next(row))
    return row


def test_batch_of_different_lengths_is_generated_row_by_row():
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6, 5]]
    rows = generate(SPEC, StandIn(), prompts, max_new_tokens=6)
    assert [r.tolist() for r in rows] == [_alone(p, 6) for p in prompts]
    assert all(r.dtype == np.int32 for r in rows)


def test_decoding_starts_at_the_shortest_prompt_as_keras_does():
    model = StandIn()
    generate(SPEC, model, [[1, 2, 3, 4], [5, 6]], max_new_tokens=3)
    # prefill once, then one decode per position from the shortest prompt's last token
    assert model.calls == ["prefill"] + ["decode"] * (4 + 3 - 2)


def test_stop_tokens_end_a_row_and_are_kept():
    prompt = [4, 4, 2]
    free = _alone(prompt, 8)
    stop = free[len(prompt) + 2]
    rows = generate(SPEC, StandIn(), [prompt, [1]], max_new_tokens=8, stop_token_ids=[stop])
    first = free.index(stop, len(prompt))
    assert rows[0].tolist() == free[:first + 1]
    other = _alone([1], 8)
    assert rows[1].tolist() == (other[:other.index(stop, 1) + 1] if stop in other[1:] else other)


def test_top_k_draws_among_the_k_best_and_follows_its_seed():
    one = generate(SPEC, StandIn(), [[1, 2]], max_new_tokens=12, sampler="top_k", k=2, seed=3)
    two = generate(SPEC, StandIn(), [[1, 2]], max_new_tokens=12, sampler="top_k", k=2, seed=3)
    assert one[0].tolist() == two[0].tolist()
    row = one[0].tolist()
    for j in range(2, len(row)):
        assert row[j] in (_next(row[:j]), (_next(row[:j]) + 5) % VOCAB)
    greedy = generate(SPEC, StandIn(), [[1, 2]], max_new_tokens=12, sampler="top_k", k=1)
    assert greedy[0].tolist() == _alone([1, 2], 12)


@pytest.mark.parametrize("prompts, kwargs, match", [
    ([], {}, "non-empty sequence"),
    ([[1, 2], []], {}, "non-empty list of integer"),
    ([[1.5]], {}, "integer token ids"),
    ([[1, VOCAB]], {}, r"token ids in \[0, 17\)"),
    ([[1]], {"max_new_tokens": 0}, "positive int"),
    ([[1]], {"sampler": "beam"}, "one of \\['greedy', 'top_k'\\]"),
    ([[1] * 35], {"max_new_tokens": 6}, "context of 40 tokens. Received: 41"),
])
def test_bad_requests_are_typed_errors(prompts, kwargs, match):
    with pytest.raises(SignatureError, match=match):
        generate(SPEC, StandIn(), prompts, **kwargs)


def test_spec_round_trips_through_json_and_refuses_forward_only_metadata():
    assert GenerativeSpec.from_json(SPEC.to_json()) == SPEC
    assert GenerativeSpec.of_metadata({"generation": SPEC.to_json()}) == SPEC
    with pytest.raises(UnsupportedRouteError, match=r"task='generate'.*forward pass only"):
        GenerativeSpec.of_metadata({"endpoints": {"serve": {}}}, "out/m")
    with pytest.raises(ArtifactError, match="prefill/decode"):
        GenerativeSpec.from_json({"cache": {"num_layers": 1}})

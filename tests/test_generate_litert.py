"""``export_model(lm, path, format="litert", task="generate")``: fixed-shape ``prefill_{N}`` and
``decode`` signatures (LiteRT-LM's names), builtin operators only, driven by kexport's loop
through the LiteRT interpreter in a fresh process, token-exact with ``lm.generate()``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.errors import SignatureError
from test_generate import VOCAB, _keras, _lm

#: the native cell; JAX and PyTorch re-host onto TensorFlow (KEXPORT_FULL_MATRIX=1)
native = pytest.mark.backends("tensorflow")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(7)
    lm = _lm("gpt2")  # context 48: prefill_32, cache [1, 48, 2, 16] per layer
    path = tmp_path_factory.mktemp("litert") / "lm"
    kexport.export_model(lm, path, format="litert", task="generate", verbose=False)
    return lm, str(path)


@native
def test_greedy_tokens_equal_keras_in_a_fresh_process(exported, fresh_process):
    lm, path = exported
    rng = np.random.default_rng(11)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (5, 37, 1, 9)]
    want = _keras(lm, prompts, 7)
    stop = want[0][len(prompts[0]) + 2]
    want_stopped = _keras(lm, prompts, 7, stop_token_ids=(stop,))
    got = fresh_process("fresh_generate:generate", path, [
        {"prompts": prompts, "max_new_tokens": 7},
        {"prompts": prompts, "max_new_tokens": 7, "stop_token_ids": [stop]},
        # alone, the 37-token prompt is prefilled in two chunks (decoding starts at the
        # shortest prompt's last token, so in the batch above the prefill is rewritten)
        {"prompts": [prompts[1]], "max_new_tokens": 7}])
    assert got["rows"][0] == want
    assert got["rows"][1] == want_stopped
    assert got["rows"][2] == [want[1]]
    assert got["format"] == "litert" and not got["keras_hub_imported"]
    assert sorted(got["endpoints"]) == ["decode", "prefill_32"]


@native
def test_the_signatures_are_fixed_and_builtin_and_the_verdict_is_stored(exported):
    _, path = exported
    artifact = kexport.load(path)
    caches = [f"kv_cache_{kv}_{i}" for i in range(2) for kv in "kv"]
    for name, n in (("prefill_32", 32), ("decode", 1)):
        ep = artifact.endpoints[name]
        assert [(t.name, t.shape, t.dtype) for t in ep.inputs] == [
            ("tokens", (1, n), "int32"), ("input_pos", (n,), "int32"),
            *[(c, (1, 48, 2, 16), "float32") for c in caches]]
        assert [(t.name, t.shape) for t in ep.outputs] == [
            ("logits", (1, n, VOCAB)), *[(c, (1, 48, 2, 16)) for c in caches]]
    ops = artifact.op_counts()["decode"]
    assert "DYNAMIC_UPDATE_SLICE" in ops and not any(op.startswith("Flex") for op in ops)
    spec = artifact.metadata["generation"]
    assert spec["convention"] == "litert_lm" and spec["cache"]["context_length"] == 48
    assert spec["verification"]["passed"]
    assert [r["prompt_length"] for r in spec["verification"]["rows"]] == [3, 6, 1]
    assert "/tmp" not in json.dumps(artifact.metadata)


@native
def test_decode_logits_follow_the_live_cached_call(exported):
    """One decode step of the signature against ``call_with_cache`` on the live model."""
    from keras import ops

    lm, path = exported
    artifact = kexport.load(path)
    tokens = np.array([[5, 7, 11, 2]], np.int32)
    cache = np.zeros((1, 2, 2, 48, 2, 16), np.float32)
    _, _, cache = lm.call_with_cache(tokens[:, :3], ops.convert_to_tensor(cache), 0)
    cache = ops.convert_to_numpy(cache)
    feeds = {"tokens": tokens[:, 3:], "input_pos": np.array([3], np.int32)}
    feeds.update({f"kv_cache_{kv}_{i}": cache[:, i, j] for i in range(2)
                  for j, kv in enumerate("kv")})
    got = artifact.run("decode", feeds)
    logits, _, after = lm.call_with_cache(tokens[:, 3:], ops.convert_to_tensor(cache), 3)
    np.testing.assert_allclose(got["logits"], ops.convert_to_numpy(logits), atol=1e-5)
    np.testing.assert_allclose(got["kv_cache_v_1"], ops.convert_to_numpy(after)[:, 1, 1],
                               atol=1e-5)


@native
def test_a_prompt_longer_than_the_prefill_is_prefilled_in_chunks(exported):
    """Logits and cache of a 37-token prompt through ``prefill_32`` (two chunks, the second
    overlapping the first) against one ``call_with_cache`` on the live model."""
    from keras import ops

    from kexport.generation import GenerativeSpec, litert_lm

    lm, path = exported
    artifact = kexport.load(path)
    spec = GenerativeSpec.from_json(artifact.metadata["generation"])
    plain, run = litert_lm.as_keras_cache(spec, artifact.run)
    tokens = np.random.default_rng(3).integers(1, VOCAB, (2, 37)).astype(np.int32)
    got = run(plain.prefill, {"token_ids": tokens})
    cache = ops.convert_to_tensor(np.zeros((2, 2, 2, 37, 2, 16), np.float32))
    logits, _, cache = lm.call_with_cache(tokens, cache, 0)
    np.testing.assert_allclose(got["logits"], ops.convert_to_numpy(logits), atol=1e-4)
    np.testing.assert_allclose(got["cache"], ops.convert_to_numpy(cache), atol=1e-4)


@native
def test_a_request_past_the_fixed_cache_is_refused(exported):
    _, path = exported
    with pytest.raises(SignatureError, match=r"fit the model's context of 48 tokens\. "
                                             r"Received: 50 tokens \(40 \+ 10\)"):
        kexport.load(path).generate([list(range(1, 41))], max_new_tokens=10)


@pytest.mark.backends("jax", "torch")
@pytest.mark.full_matrix
def test_rehosted_onto_tensorflow_generates_the_live_models_tokens(tmp_path, fresh_process):
    import keras

    keras.utils.set_random_seed(7)
    lm = _lm("gpt2")
    path = tmp_path / "lm"
    kexport.export_model(lm, path, format="litert", task="generate", verbose=False)
    prompts = [[5, 9, 2, 44], [17], [3] * 33]
    got = fresh_process("fresh_generate:generate", str(path),
                        [{"prompts": prompts, "max_new_tokens": 6}])
    assert got["rows"][0] == _keras(lm, prompts, 6)  # against the live JAX/PyTorch model
    metadata = kexport.load(path).metadata
    assert metadata["backend"] == "tensorflow"
    assert metadata["generation"]["verification"]["live_backend"] == BACKEND

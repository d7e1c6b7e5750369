"""``export_model(lm, path, task="generate")``: prefill/decode with a cache, token-exact with
``lm.generate()`` (greedy) for a batch of prompts of different lengths, in a fresh process."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.errors import SignatureError, SignatureTypeError, UnsupportedRouteError

VOCAB = 96
#: the format each backend writes the generative form to natively
FORMAT = {"tensorflow": "tf_saved_model", "torch": "torch"}.get(BACKEND)
native = pytest.mark.skipif(FORMAT is None, reason=f"no generative writer on {BACKEND}")


def _lm(family):
    import keras_hub

    if family == "gpt2":
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
            intermediate_dim=64, max_sequence_length=48)
        lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    else:
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=VOCAB, num_layers=2, num_query_heads=4, num_key_value_heads=2,
            hidden_dim=32, intermediate_dim=64)
        lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    return lm


def _keras(lm, prompts, max_new_tokens, stop_token_ids=None):
    """``lm.generate`` on right-padded prompts, each row cut where its padding mask ends
    (its prompt plus ``max_new_tokens``, or up to its stop token)."""
    total = max(len(p) for p in prompts) + max_new_tokens
    ids = np.zeros((len(prompts), total), "int32")
    mask = np.zeros((len(prompts), total), bool)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, True
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=stop_token_ids)
    tokens, kept = np.asarray(out["token_ids"]), np.asarray(out["padding_mask"])
    return [tokens[i][kept[i]][:len(p) + max_new_tokens].tolist()
            for i, p in enumerate(prompts)]


# Llama's torch.export cell takes minutes on 2 cores: KEXPORT_FULL_MATRIX=1 runs it there.
_LLAMA = pytest.param("llama", marks=pytest.mark.full_matrix) if BACKEND == "torch" else "llama"


@pytest.fixture(scope="module", params=["gpt2", _LLAMA])
def exported(request, tmp_path_factory):
    if FORMAT is None:
        pytest.skip(f"no generative writer on {BACKEND}")
    import keras

    keras.utils.set_random_seed(7)
    lm = _lm(request.param)
    path = tmp_path_factory.mktemp(request.param) / "lm"
    kexport.export_model(lm, path, format=FORMAT, task="generate", verbose=False)
    return lm, str(path)


@native
def test_greedy_tokens_equal_keras_in_a_fresh_process(exported, fresh_process):
    lm, path = exported
    rng = np.random.default_rng(11)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (5, 2, 9, 3)]
    want = _keras(lm, prompts, 7)
    # a stop token Keras really produces in the first row, a few tokens in
    stop = want[0][len(prompts[0]) + 2]
    want_stopped = _keras(lm, prompts, 7, stop_token_ids=(stop,))
    got = fresh_process("fresh_generate:generate", path, [
        {"prompts": prompts, "max_new_tokens": 7},
        {"prompts": prompts, "max_new_tokens": 7, "stop_token_ids": [stop]},
        {"prompts": prompts[1], "max_new_tokens": 4}])
    assert got["rows"][0] == want
    assert got["rows"][1] == want_stopped
    first = want[0].index(stop, len(prompts[0]))  # its first new occurrence ends the row
    assert got["rows"][1][0] == want[0][:first + 1]
    assert got["rows"][2] == [want[1][:len(prompts[1]) + 4]]
    assert got["format"] == FORMAT and not got["keras_hub_imported"]
    assert sorted(got["endpoints"]) == ["decode", "prefill"]


@native
def test_the_artifact_records_its_cache_and_the_verdict(exported):
    _, path = exported
    artifact = kexport.load(path)
    spec = artifact.metadata["generation"]
    head_dim = 16 if spec["family"] == "GPT2CausalLM" else 8
    assert spec["cache"] == {"num_layers": 2, "kv_heads": 2, "head_dim": head_dim,
                             "dtype": "float32", "vocab_size": VOCAB, "length_axis": 3,
                             "context_length": 48 if head_dim == 16 else None}
    verdict = spec["verification"]
    assert verdict["passed"] and [r["prompt_length"] for r in verdict["rows"]] == [3, 6, 1]
    assert all(r["equal"] for r in verdict["rows"])
    decode = artifact.endpoints["decode"]
    assert [t.name for t in decode.inputs] == ["token_ids", "cache", "cache_update_index"]
    assert decode.inputs[1].shape == (None, 2, 2, None, 2, head_dim)
    assert "/tmp" not in json.dumps(artifact.metadata)  # no local paths


@native
def test_decode_logits_follow_the_live_cached_call(exported):
    """One decode step of the artifact against ``call_with_cache`` on the live model."""
    from keras import ops

    lm, path = exported
    artifact = kexport.load(path)
    tokens = np.array([[5, 7, 11, 2], [3, 3, 9, 1]], np.int32)
    prefill = artifact.run("prefill", {"token_ids": tokens})
    _, cache = lm._build_cache(tokens)
    np.testing.assert_allclose(prefill["cache"], ops.convert_to_numpy(cache), atol=1e-5)
    padded = np.pad(prefill["cache"], [(0, 0)] * 3 + [(0, 2), (0, 0), (0, 0)])
    step = artifact.run("decode", {"token_ids": tokens[:, 3:], "cache": padded,
                                   "cache_update_index": np.int32(3)})
    logits, _, _ = lm.call_with_cache(tokens[:, 3:], ops.convert_to_tensor(padded), 3)
    np.testing.assert_allclose(step["logits"], ops.convert_to_numpy(logits), atol=1e-5)


def test_the_refusal_of_a_cell_names_the_cells_with_a_writer():
    # every format has a writer now (other backends re-host onto it): the message of a
    # cell none takes still lists them all
    from kexport.generation.export import refusal

    assert refusal("tfjs", BACKEND) == (
        "task='generate' writes format='tf_saved_model' from the tensorflow backend, "
        "format='litert' from the tensorflow backend, format='torch' from the torch backend, "
        "format='onnx' from the torch backend, format='openvino' from the torch backend "
        "(other backends re-host onto those). Received: "
        f"format='tfjs' from the {BACKEND} backend.")


@native
def test_a_forward_only_model_is_refused_not_exported_as_a_forward_pass(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedRouteError, match="without call_with_cache"):
        kexport.export_model(model, tmp_path / "m", format=FORMAT, task="generate")
    assert not (tmp_path / "m").exists()


def test_unknown_tasks_and_options_are_typed_errors(tmp_path):
    lm = _lm("gpt2")
    with pytest.raises(SignatureError, match=r"Expected `task` to be 'generate'.*'classify'"):
        kexport.export_model(lm, tmp_path / "m", task="classify")
    with pytest.raises(SignatureTypeError, match=r"Unexpected keyword arguments.*\['opset'\]"):
        kexport.export_model(lm, tmp_path / "m", task="generate", opset=3)


@pytest.mark.backends("tensorflow")
def test_generate_on_a_forward_pass_artifact_says_how_to_get_one(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    kexport.export_model(model, tmp_path / "m", verbose=False)
    with pytest.raises(UnsupportedRouteError, match="task='generate'"):
        kexport.load(tmp_path / "m").generate([[1, 2]])


@pytest.mark.backends("tensorflow")
def test_cli_export_task_generate(tmp_path):
    """``kexport export LM.keras --task generate``: the generative artifact and its stored
    token check, the same tokens as the saved model's ``generate`` once reloaded."""
    from test_cli import kexport as cli

    lm = _lm("gpt2")
    model_file = tmp_path / "lm.keras"
    lm.save(model_file)
    out = tmp_path / "gen"
    proc = cli("export", model_file, "--format", "tf_saved_model", "--task", "generate",
               "-o", out, "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["task"] == "generate", data
    assert data["verification"]["passed"] is True
    assert {r["prompt_length"] for r in data["verification"]["rows"]} == {1, 3, 6}
    prompts = [[5, 9, 2], [7]]
    rows = kexport.load(out).generate(prompts, max_new_tokens=5, sampler="greedy")
    assert [r.tolist() for r in rows] == _keras(lm, prompts, 5)

    proc = cli("export", model_file, "--format", "tf_saved_model", "--task", "generate",
               "-o", tmp_path / "again", "--no-verify")
    assert proc.returncode == 2 and "--no-verify" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "again").exists()

"""``task="generate"`` to ONNX for onnxruntime-genai: one decoder in optimum's interface and
``genai_config.json``, token-exact with ``lm.generate()`` (greedy) through kexport's loop and
through onnxruntime-genai's own engine, each in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kexport
from conftest import BACKEND, run_alone
from test_generate import VOCAB, _keras

native = pytest.mark.backends("torch")
#: TensorFlow and JAX re-host onto PyTorch (cells beyond the native one: KEXPORT_FULL_MATRIX=1)
rehosted = pytest.mark.backends("tensorflow", "jax")


def _lm(family):
    import keras_hub

    m = keras_hub.models
    if family == "gpt2":
        return m.GPT2CausalLM(backbone=m.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
            intermediate_dim=64, max_sequence_length=48), preprocessor=None)
    gqa = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4, num_key_value_heads=2,
               hidden_dim=32, intermediate_dim=64)
    backbone, lm = {"llama": (m.LlamaBackbone, m.LlamaCausalLM),
                    "gemma": (m.GemmaBackbone, m.GemmaCausalLM),
                    "mistral": (m.MistralBackbone, m.MistralCausalLM),
                    "qwen": (m.QwenBackbone, m.QwenCausalLM),
                    "qwen3": (m.Qwen3Backbone, m.Qwen3CausalLM),
                    "phi3": (m.Phi3Backbone, m.Phi3CausalLM)}[family]
    extra = {"head_dim": 8} if family in ("gemma", "qwen3") else {}
    return lm(backbone=backbone(**gqa, **extra), preprocessor=None)


def _export(family, tmp_path_factory):
    import keras

    keras.utils.set_random_seed(7)
    lm = _lm(family)
    lm.compile(sampler="greedy")
    path = tmp_path_factory.mktemp(family) / "lm"
    kexport.export_model(lm, path, format="onnx", task="generate", verbose=False)
    return lm, str(path)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return _export("gpt2", tmp_path_factory)


def _cut(rows, prompts, stop, keep):
    """Each row up to its first generated ``stop`` (kept if ``keep``): where the engine ends
    it (onnxruntime-genai leaves the eos out of its sequence, openvino-genai keeps it)."""
    out = []
    for row, p in zip(rows, prompts, strict=True):
        hit = next((j for j in range(len(p), len(row)) if row[j] == stop), None)
        out.append(row if hit is None else row[:hit + keep])
    return out


def _same_tokens_both_ways(lm, path, fresh_process):
    rng = np.random.default_rng(11)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (5, 2, 9, 3)]
    want = _keras(lm, prompts, 7)
    stop = want[0][len(prompts[0]) + 2]
    got = fresh_process("fresh_generate:generate", path, [
        {"prompts": prompts, "max_new_tokens": 7},
        {"prompts": prompts, "max_new_tokens": 7, "stop_token_ids": [stop]}])
    assert got["rows"][0] == want
    assert got["rows"][1] == _keras(lm, prompts, 7, stop_token_ids=(stop,))
    assert got["format"] == "onnx" and got["endpoints"] == ["model"]
    assert not got["keras_hub_imported"]
    # a process of its own: the session's shared worker may have imported Keras for
    # other tests, and the engine must run without it
    engine = run_alone("fresh_generate:genai_engine", path, prompts, 7)
    assert engine["rows"] == _cut(want, prompts, 0, False)  # eos 0: no tokenizer
    assert not engine["keras_imported"]
    return prompts, want


@native
def test_onnxruntime_genai_and_kexport_generate_keras_tokens(gpt2, fresh_process, tmp_path):
    import shutil

    lm, path = gpt2
    prompts, want = _same_tokens_both_ways(lm, path, fresh_process)
    # a user names the model's eos in genai_config.json: the engine stops there (and, as
    # onnxruntime-genai does, leaves the eos out of the sequence)
    stop = want[0][len(prompts[0]) + 2]
    edited = tmp_path / "edited"
    shutil.copytree(path, edited)
    config = json.loads((edited / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = stop
    (edited / "genai_config.json").write_text(json.dumps(config))
    engine = fresh_process("fresh_generate:genai_engine", str(edited), prompts, 7)
    assert engine["rows"] == _cut(want, prompts, stop, False)
    assert engine["rows"][0] == want[0][:want[0].index(stop, len(prompts[0]))]


@native
def test_the_folder_declares_the_engine_interface_and_the_verdict(gpt2):
    _, path = gpt2
    config = json.loads(Path(path, "genai_config.json").read_text())
    decoder = config["model"]["decoder"]
    assert (decoder["num_key_value_heads"], decoder["head_size"],
            decoder["num_hidden_layers"], decoder["num_attention_heads"]) == (2, 16, 2, 2)
    assert config["model"]["vocab_size"] == VOCAB and config["model"]["context_length"] == 48
    assert config["model"]["type"] == "llama" and decoder["filename"] == "model.onnx"
    assert config["model"]["eos_token_id"] == 0  # no tokenizer: keras_hub's padding id
    artifact = kexport.load(path)
    spec = artifact.metadata["generation"]
    assert spec["convention"] == "past_key_values" and spec["engine"] == "onnxruntime-genai"
    verdict = spec["verification"]
    assert verdict["passed"] and verdict["engine"]["passed"]
    assert [r["prompt_length"] for r in verdict["engine"]["rows"]] == [3, 6, 1]
    model = artifact.endpoints["model"]
    assert [t.name for t in model.inputs][:4] == [
        "input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"]
    assert [t.name for t in model.outputs] == ["logits", "present.0.key", "present.0.value",
                                               "present.1.key", "present.1.value"]
    assert model.inputs[2].shape == (None, 2, None, 16)
    assert "/tmp" not in json.dumps(artifact.metadata) + json.dumps(config)


@native
def test_inspect_shows_the_stored_token_check(gpt2):
    from test_cli import kexport as cli

    _, path = gpt2
    out = cli("inspect", path, backend="torch").stdout
    assert "generation (GPT2CausalLM, checked against the live model on torch):" in out
    assert ("kexport's loop: PASS, greedy tokens equal to lm.generate() for prompts of "
            "lengths [3, 6, 1], 8 new tokens") in out
    assert "onnxruntime-genai's own engine: PASS" in out


@native
@pytest.mark.full_matrix
@pytest.mark.parametrize("family", ["llama", "gemma", "mistral", "qwen", "qwen3", "phi3"])
def test_other_families_generate_keras_tokens(family, tmp_path_factory, fresh_process):
    lm, path = _export(family, tmp_path_factory)
    _same_tokens_both_ways(lm, path, fresh_process)


@rehosted
@pytest.mark.full_matrix
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rehosted_onto_pytorch_generates_the_live_models_tokens(family, tmp_path_factory,
                                                                fresh_process):
    lm, path = _export(family, tmp_path_factory)
    _same_tokens_both_ways(lm, path, fresh_process)  # against the live TensorFlow/JAX model
    metadata = kexport.load(path).metadata
    assert metadata["backend"] == "torch"  # the host that wrote it
    verdict = metadata["generation"]["verification"]
    assert verdict["live_backend"] == BACKEND and verdict["engine"]["passed"]


@pytest.mark.one_backend
def test_special_ids_come_from_the_models_tokenizer():
    import keras_hub

    from kexport.generation import onnx_genai
    from kexport.generation.model import cache_geometry
    from kexport.generation.spec import GenerativeSpec

    vocab = {"a": 0, "b": 1, "Ġa": 2, "ab": 3, "<|endoftext|>": 7}
    vocab.update({f"t{i}": i for i in range(4, VOCAB) if i != 7})
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocab, merges=["a b"])
    lm = _lm("gpt2")
    lm.preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=8)
    config = onnx_genai.config(lm, GenerativeSpec(cache=cache_geometry(lm)))["model"]
    # keras_hub's GPT-2 tokenizer: <|endoftext|> starts and ends, its padding id is 0
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (7, 7, 0)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (7, 7, 0)


@rehosted
def test_a_forward_only_model_is_refused_before_it_travels(tmp_path):
    import keras

    from kexport.errors import UnsupportedRouteError

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedRouteError, match="without call_with_cache"):
        kexport.export_model(model, tmp_path / "m", format="onnx", task="generate")
    assert not (tmp_path / "m").exists()

"""``task="generate"`` to OpenVINO: a stateful IR (``beam_idx``, the cache as variables) that
``openvino_genai.LLMPipeline`` drives, token-exact with ``lm.generate()`` (greedy) through
kexport's loop and through LLMPipeline, each in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kexport
from conftest import BACKEND, run_alone
from test_generate import VOCAB, _keras
from test_generate_onnx import _cut, _lm

native = pytest.mark.backends("torch")


def _export(family, tmp_path_factory):
    import keras

    keras.utils.set_random_seed(7)
    lm = _lm(family)
    lm.compile(sampler="greedy")
    path = tmp_path_factory.mktemp(family) / "lm"
    kexport.export_model(lm, path, format="openvino", task="generate", verbose=False)
    return lm, str(path)


def _same_tokens_both_ways(lm, path, fresh_process):
    rng = np.random.default_rng(5)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (4, 1, 7)]
    want = _keras(lm, prompts, 6)
    got = fresh_process("fresh_generate:generate", path, [
        {"prompts": prompts, "max_new_tokens": 6}])
    assert got["rows"][0] == want and got["format"] == "openvino"
    assert not got["keras_hub_imported"]
    # a process of its own: the session's shared worker may have imported Keras for
    # other tests, and the engine must run without it
    engine = run_alone("fresh_generate:openvino_engine", path, prompts, 6)
    assert engine["rows"] == _cut(want, prompts, 0, True) and not engine["keras_imported"]


@native
def test_llm_pipeline_and_kexport_generate_keras_tokens(tmp_path_factory, fresh_process):
    lm, path = _export("gpt2", tmp_path_factory)
    _same_tokens_both_ways(lm, path, fresh_process)
    artifact = kexport.load(path)
    assert [t.name for t in artifact.endpoints["openvino_model"].inputs] == [
        "input_ids", "attention_mask", "beam_idx"]
    spec = artifact.metadata["generation"]
    assert spec["convention"] == "stateful" and spec["engine"] == "openvino-genai"
    assert spec["verification"]["passed"] and spec["verification"]["engine"]["passed"]
    assert json.loads(Path(path, "generation_config.json").read_text())["eos_token_id"] == 0
    assert sorted(p.name for p in Path(path).iterdir()) == [
        "generation_config.json", "kexport.json", "openvino_model.bin", "openvino_model.xml"]
    assert "/tmp" not in json.dumps(artifact.metadata)


@pytest.mark.full_matrix
@pytest.mark.parametrize("family", ["llama", "gemma", "mistral", "qwen", "qwen3", "phi3"])
@native
def test_other_families_generate_keras_tokens(family, tmp_path_factory, fresh_process):
    _same_tokens_both_ways(*_export(family, tmp_path_factory), fresh_process)


@pytest.mark.full_matrix
@pytest.mark.backends("tensorflow", "jax")
def test_rehosted_onto_pytorch_generates_the_live_models_tokens(tmp_path_factory,
                                                                fresh_process):
    lm, path = _export("gpt2", tmp_path_factory)
    _same_tokens_both_ways(lm, path, fresh_process)
    verdict = kexport.load(path).metadata["generation"]["verification"]
    assert verdict["live_backend"] == BACKEND

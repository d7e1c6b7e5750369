"""``kexport serve`` on Triton's generate extension: a tiny GPT-2 exported with
``task="generate"`` answers ``/generate`` and streams ``/generate_stream`` (server-sent
events) with ``lm.generate()``'s greedy tokens, through a real HTTP client and a
server in a subprocess; a forward-pass model beside it keeps ``/infer``."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from serving import Server, wait_live
from test_generate import VOCAB, _keras, _lm

pytestmark = pytest.mark.backends("tensorflow")

PROMPTS = [[5, 17, 3, 88, 41], [9, 2]]
NEW = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server over a folder holding the GPT-2 and a forward-pass model, and Keras's
    greedy rows, computed while the server starts."""
    import httpx

    keras.utils.set_random_seed(7)
    lm = _lm("gpt2")
    root = tmp_path_factory.mktemp("served_lm")
    kexport.export_model(lm, root / "gpt2", format="tf_saved_model", task="generate",
                         verbose=False)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    kexport.export_model(dense, root / "dense", format="tf_saved_model", verbose=False)
    server = Server(root, wait=False)
    try:
        want = _keras(lm, PROMPTS, NEW)
        stop = want[0][len(PROMPTS[0]) + 2]
        stopped = _keras(lm, PROMPTS[:1], NEW, stop_token_ids=(stop,))[0]
        x = np.ones((1, 4), "float32")
        forward = np.asarray(dense(x))
        drawn = kexport.load(root / "gpt2").generate(PROMPTS[1], max_new_tokens=NEW,
                                                     sampler="top_k", k=4, seed=3)[0]
        server.wait()
        wait_live(server.url)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            yield http, {"rows": want, "stop": stop, "stopped": stopped, "x": x,
                         "forward": forward, "drawn": drawn.tolist()}
        assert server.alive()
    finally:
        server.stop()


def _events(http, path, body):
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert text.endswith("\n\n")
    return [json.loads(chunk.removeprefix("data: ")) for chunk in text.split("\n\n") if chunk]


def test_generate_answers_keras_greedy_tokens(served):
    http, ref = served
    assert "generate" in http.get("/v2").json()["extensions"]
    decode = http.get("/v2/models/gpt2.decode").json()  # its endpoints stay served
    assert [t["name"] for t in decode["inputs"]] == ["token_ids", "cache",
                                                      "cache_update_index"]
    for prompt, row in zip(PROMPTS, ref["rows"], strict=True):
        r = http.post("/v2/models/gpt2/generate",
                      json={"input_ids": prompt, "parameters": {"max_new_tokens": NEW}})
        assert r.status_code == 200, r.text
        assert r.json() == {"model_name": "gpt2", "model_version": "1",
                            "output_ids": row[len(prompt):]}
    r = http.post("/v2/models/gpt2/versions/1/generate",
                  json={"input_ids": PROMPTS[0],
                        "parameters": {"max_new_tokens": NEW, "stop_token_ids": [ref["stop"]]}})
    assert r.json()["output_ids"] == ref["stopped"][len(PROMPTS[0]):]
    assert r.json()["output_ids"][-1] == ref["stop"] and len(r.json()["output_ids"]) < NEW
    top_k = {"max_new_tokens": NEW, "sampler": "top_k", "k": 4, "seed": 3}
    r = http.post("/v2/models/gpt2/generate", json={"input_ids": PROMPTS[1], "parameters": top_k})
    assert r.json()["output_ids"] == ref["drawn"][len(PROMPTS[1]):]  # kexport.load's draws


def test_generate_stream_sends_one_event_per_token(served):
    http, ref = served
    for prompt, row in zip(PROMPTS, ref["rows"], strict=True):
        events = _events(http, "/v2/models/gpt2/generate_stream",
                         {"input_ids": prompt, "parameters": {"max_new_tokens": NEW}})
        assert len(events) == NEW
        assert all(e["model_name"] == "gpt2" and len(e["output_ids"]) == 1 for e in events)
        assert [t for e in events for t in e["output_ids"]] == row[len(prompt):]
    events = _events(http, "/v2/models/gpt2/generate_stream",
                     {"input_ids": PROMPTS[0], "parameters": {
                         "max_new_tokens": NEW, "stop_token_ids": [ref["stop"]]}})
    assert [e["output_ids"][0] for e in events] == ref["stopped"][len(PROMPTS[0]):]


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
@pytest.mark.parametrize("model, body, status, words", [
    ("gpt2", {"text_input": "hello"}, 400, ["expected token ids", '"text_input"',
                                            "no tokenizer"]),
    ("gpt2", {"input_ids": [1, 2.5]}, 400, ["integer token ids", "[1, 2.5]"]),
    ("gpt2", {"input_ids": [1], "parameters": {"max_new_tokens": 0}}, 400,
     ["max_new_tokens", "positive int", "0"]),
    ("gpt2", {"input_ids": [1, VOCAB]}, 400, [f"[0, {VOCAB})", f"[{VOCAB}]"]),
    ("gpt2", {"input_ids": [1] * 45, "parameters": {"max_new_tokens": 5}}, 400,
     ["context of 48 tokens", "50 tokens"]),
    ("gpt2", {"input_ids": [1], "parameters": {"temperature": 0.5}}, 400,
     ["parameters among", "temperature"]),
    ("gpt2", {"input_ids": [1], "parameters": {"sampler": "top_k", "seed": "x"}}, 400,
     ["parameters.seed", "int >= 0", '"x"']),
    ("gpt2", {"input_ids": [1], "parameters": {"sampler": "beam"}}, 400,
     ["parameters.sampler", "greedy", '"beam"']),
    ("dense", {"input_ids": [1]}, 400, ["task='generate'", "forward pass", "/infer"]),
    ("nope", {"input_ids": [1]}, 404, ["model name", "'nope'"]),
])
def test_bad_generate_requests_get_4xx_and_the_server_keeps_serving(
        served, route, model, body, status, words):
    http, ref = served
    r = http.post(f"/v2/models/{model}/{route}", json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert all(w in message for w in words), message
    assert "expected" in message.lower() and "Received" in message
    name = http.get("/v2/models/dense").json()["inputs"][0]["name"]
    infer = http.post("/v2/models/dense/infer", json={"inputs": [
        {"name": name, "datatype": "FP32", "shape": [1, 4],
         "data": ref["x"].ravel().tolist()}]})
    assert infer.status_code == 200, infer.text
    np.testing.assert_allclose(infer.json()["outputs"][0]["data"], ref["forward"].ravel(),
                               rtol=1e-5, atol=1e-6)

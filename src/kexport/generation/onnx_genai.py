"""The generative form as ONNX for onnxruntime-genai: one decoder graph and ``genai_config.json``.

Written from the PyTorch backend. The graph takes the interface optimum and
onnxruntime-genai share: ``input_ids`` int64 ``[B, S]``, ``attention_mask``
int64 ``[B, P+S]``, ``past_key_values.{i}.key/.value`` ``[B, H, P, D]`` ->
``logits`` ``[B, S, V]``, ``present.{i}.key/.value`` ``[B, H, P+S, D]``. Inside,
the past is put back into keras_hub's cache ``[B, L, 2, P+S, H, D]`` (zeros for
the new positions) and ``call_with_cache`` runs with ``cache_update_index = P``
(an int64 tensor: a Python size would specialise ``P``). Positions come from
``P``, as in keras_hub, and the mask is not read (keras_hub's cached call takes
none): the engine generates one prompt per generator. Captured with
``torch.export`` (a batch sample of 2: PyTorch specialises sizes of 1) and
written by ``torch.onnx.export(dynamo=True)``; Keras's torch slices are
rewritten for that capture (:mod:`kexport.generation.keras_torch`).
``genai_config.json`` declares ``model.type = "llama"``: onnxruntime-genai's
plain decoder (with ``"gpt2"`` it asks for an input with an empty name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kexport.artifact import MANIFEST_NAME
from kexport.capture.torch_export import symbolic_sizes
from kexport.errors import CaptureError
from kexport.generation.keras_torch import onnx_slice_updates, traceable_slices
from kexport.generation.spec import GenerativeSpec

__all__ = ["CONFIG", "GRAPH", "config", "manifest_file", "names", "spec_for", "write"]

#: The decoder graph's file and onnxruntime-genai's configuration file.
GRAPH, CONFIG = "model.onnx", "genai_config.json"
#: The context length written when the model has no limit of its own.
DEFAULT_CONTEXT = 2048
_OPSET = 18


def names(num_layers: int) -> dict[str, list[str]]:
    """The decoder graph's input and output names, in order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return {"inputs": ["input_ids", "attention_mask", *past], "outputs": ["logits", *present]}


def spec_for(spec: GenerativeSpec) -> GenerativeSpec:
    """``spec`` as this format writes it: one endpoint for prefill and decode."""
    from dataclasses import replace

    stem = GRAPH.removesuffix(".onnx")
    return replace(spec, prefill=stem, decode=stem, convention="past_key_values",
                   names={"token_ids": "input_ids", "attention_mask": "attention_mask",
                          "past": "past_key_values.{layer}.{kv}",
                          "present": "present.{layer}.{kv}", "logits": "logits"})


def manifest_file(folder: Path) -> Path:
    """Where the artifact's manifest lives."""
    return folder / MANIFEST_NAME


def endpoint_entries(spec: GenerativeSpec) -> dict[str, dict[str, Any]]:
    """The manifest entry of the decoder graph (names, shapes, dtypes)."""
    g = spec.cache
    io = names(g.num_layers)
    kv = {"dtype": g.dtype, "shape": [None, g.kv_heads, None, g.head_dim]}
    return {spec.prefill: {
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [None, None]},
                   {"name": "attention_mask", "dtype": "int64", "shape": [None, None]},
                   *[dict(kv, name=n) for n in io["inputs"][2:]]],
        "outputs": [{"name": "logits", "dtype": g.dtype, "shape": [None, None, g.vocab_size]},
                    *[dict(kv, name=n) for n in io["outputs"][1:]]]}}


def _special_ids(model: Any) -> dict[str, int | None]:
    """bos/eos/pad ids from the model's tokenizer, when it has one."""
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    found = {}
    for key, attr in (("bos_token_id", "start_token_id"), ("eos_token_id", "end_token_id"),
                      ("pad_token_id", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        found[key] = int(value) if isinstance(value, int) else None
    return found


def config(model: Any, spec: GenerativeSpec) -> dict[str, Any]:
    """``genai_config.json`` of ``model``'s decoder graph."""
    g = spec.cache
    backbone = getattr(model, "backbone", None)
    heads = next((getattr(backbone, a) for a in ("num_query_heads", "num_heads")
                  if isinstance(getattr(backbone, a, None), int)), g.kv_heads)
    hidden = getattr(backbone, "hidden_dim", None)
    ids = _special_ids(model)
    context = g.context_length or DEFAULT_CONTEXT
    # without a tokenizer: keras_hub's padding id 0 (onnxruntime-genai needs an
    # eos inside the vocabulary; edit genai_config.json to name the model's own)
    special = {k: 0 if v is None else v for k, v in ids.items()}
    return {
        "model": {
            **special, "type": "llama", "vocab_size": g.vocab_size, "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": GRAPH, "head_size": g.head_dim,
                "hidden_size": int(hidden) if isinstance(hidden, int) else g.kv_heads * g.head_dim,
                "num_attention_heads": int(heads), "num_hidden_layers": g.num_layers,
                "num_key_value_heads": g.kv_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "early_stopping": True, "max_length": context,
                   "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
                   "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def _module(model: Any, spec: GenerativeSpec) -> Any:
    import torch

    g = spec.cache
    dtype = getattr(torch, g.dtype)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, past: Any) -> Any:
            del attention_mask  # keras_hub's cached call takes no mask (module docstring)
            batch, steps = input_ids.shape
            known = past[0].shape[2]
            layers = [torch.stack([past[2 * i], past[2 * i + 1]], 1)  # [B, 2, H, P, D]
                      for i in range(g.num_layers)]
            cache = torch.stack(layers, 1).transpose(3, 4)  # [B, L, 2, P, H, D]
            cache = torch.cat([cache, torch.zeros(g.shape(batch, steps), dtype=dtype)], 3)
            index = torch.full((), known, dtype=torch.int64)
            logits, _, cache = self.model.call_with_cache(input_ids, cache, index)
            present = cache.transpose(3, 4)  # [B, L, 2, H, P+S, D]
            return (logits, *[present[:, i, j] for i in range(g.num_layers) for j in (0, 1)])

    return Decoder()


def write(model: Any, spec: GenerativeSpec, folder: Path) -> None:
    """Write ``model.onnx`` and ``genai_config.json`` of ``model`` into ``folder``.

    Raises:
        CaptureError: when ``torch.export`` or ``torch.onnx`` cannot write the decoder.
    """
    import torch
    from torch.export import Dim

    g = spec.cache
    limit = g.context_length
    batch = Dim("batch", max=1024)
    seq = Dim("sequence_length", min=1, max=limit) if limit else Dim("sequence_length", min=1)
    past = Dim("past_sequence_length", min=0, max=limit - 1) if limit else \
        Dim("past_sequence_length", min=0)
    total = Dim("total_sequence_length", min=1)
    io = names(g.num_layers)
    kv = torch.zeros((2, g.kv_heads, 4, g.head_dim), dtype=getattr(torch, g.dtype))
    args = (torch.zeros((2, 3), dtype=torch.int64), torch.ones((2, 7), dtype=torch.int64),
            [kv.clone() for _ in range(2 * g.num_layers)])
    dims = ({0: batch, 1: seq}, {0: batch, 1: total},
            [{0: batch, 2: past} for _ in range(2 * g.num_layers)])
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), symbolic_sizes(), traceable_slices(), onnx_slice_updates():
            program = torch.export.export(_module(model, spec), args, dynamic_shapes=dims,
                                          strict=False)
            onnx_program = torch.onnx.export(
                program, dynamo=True, input_names=io["inputs"], output_names=io["outputs"],
                opset_version=_OPSET, optimize=True, verbose=False, report=False)
    except Exception as e:  # every capture failure becomes a typed error
        raise CaptureError(
            "task='generate': the ONNX decoder could not be captured with torch.export + "
            f"torch.onnx: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
    onnx_program.save(os.fspath(folder / GRAPH), external_data=False)
    (folder / CONFIG).write_text(json.dumps(config(model, spec), indent=2))


#: onnxruntime-genai's own engine in a fresh process: argv folder, prompts (JSON),
#: max_new_tokens; prints the greedy rows, one generator (batch 1) per prompt.
ENGINE = "onnxruntime-genai"
#: whether the engine's sequence ends with the eos it stopped at (measured: it does not)
EOS_IN_SEQUENCE = False
ENGINE_CHILD = """
import json, sys
import numpy as np
import onnxruntime_genai as og
model = og.Model(sys.argv[1])
rows = []
for prompt in json.loads(sys.argv[2]):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + int(sys.argv[3]), do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([prompt], np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    rows.append([int(t) for t in generator.get_sequence(0)])
print(json.dumps(rows))
"""


def stop_ids(folder: Path) -> list[int]:
    """The ids that end a row in the engine (``genai_config.json``'s ``eos_token_id``)."""
    eos = json.loads((folder / CONFIG).read_text())["model"]["eos_token_id"]
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]

"""The generative form as a stateful OpenVINO IR that ``openvino_genai.LLMPipeline`` drives.

Written from the PyTorch backend: the ONNX decoder of
:mod:`kexport.generation.onnx_genai` is converted with ``openvino.convert_model``
and made stateful the way OpenVINO's LLM pipeline expects it:

- each ``past_key_values.{i}.key/.value`` input is first gathered along the
  batch by a new ``beam_idx`` input (int32 ``[B]``: the pipeline reorders the
  cache with it), then ``apply_make_stateful_transformation`` turns the
  past/present pairs into variables (``ReadValue``/``Assign``, named
  ``past_key_values.{i}.keypresent.{i}.key``);
- every variable starts as zeros of ``[B, H, 0, D]``, ``B`` read from
  ``input_ids`` (a variable of unknown batch would start with batch 0).

The IR takes ``input_ids``, ``attention_mask``, ``beam_idx`` and returns
``logits``; ``generation_config.json`` holds the special ids. kexport's loop
drives it with the variables set and read explicitly
(``Artifact.stateful_run``), so a batch of prompts of different lengths gives
Keras's tokens.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from kexport.artifact import MANIFEST_NAME
from kexport.errors import CaptureError
from kexport.generation import onnx_genai
from kexport.generation.spec import GenerativeSpec

__all__ = ["ENGINE", "ENGINE_CHILD", "GRAPH", "endpoint_entries", "manifest_file", "spec_for",
           "stop_ids", "write"]

#: The IR's file: the name ``LLMPipeline`` reads in a folder.
GRAPH = "openvino_model.xml"
_CONFIG = "generation_config.json"


def spec_for(spec: GenerativeSpec) -> GenerativeSpec:
    """``spec`` as this format writes it: one stateful endpoint for prefill and decode."""
    stem = GRAPH.removesuffix(".xml")
    return replace(spec, prefill=stem, decode=stem, convention="stateful",
                   names={"token_ids": "input_ids", "attention_mask": "attention_mask",
                          "beam_idx": "beam_idx", "logits": "logits",
                          "state": "past_key_values.{layer}.{kv}present.{layer}.{kv}"})


def manifest_file(folder: Path) -> Path:
    """Where the artifact's manifest lives."""
    return folder / MANIFEST_NAME


def endpoint_entries(spec: GenerativeSpec) -> dict[str, dict[str, Any]]:
    """The manifest entry of the stateful IR."""
    g = spec.cache
    return {spec.prefill: {
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [None, None]},
                   {"name": "attention_mask", "dtype": "int64", "shape": [None, None]},
                   {"name": "beam_idx", "dtype": "int32", "shape": [None]}],
        "outputs": [{"name": "logits", "dtype": g.dtype, "shape": [None, None, g.vocab_size]}]}}


def _stateful(model: Any) -> Any:
    import numpy as np
    from openvino import PartialShape, Type
    from openvino import opset13 as op
    from openvino._offline_transformations import apply_make_stateful_transformation

    past = [p for p in model.inputs if p.get_any_name().startswith("past_key_values.")]
    beam = op.parameter(PartialShape([-1]), Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    axis = op.constant(np.int64(0))
    for port in past:
        users = list(port.get_target_inputs())
        reordered = op.gather(port, beam, axis)
        for user in users:
            user.replace_source_output(reordered.output(0))
    model.add_parameters([beam])
    apply_make_stateful_transformation(model, {
        p.get_any_name(): p.get_any_name().replace("past_key_values.", "present.") for p in past})
    batch = op.gather(op.shape_of(model.input("input_ids"), "i64"),
                      op.constant(np.array([0], np.int64)), axis)
    for node in model.get_ops():
        if node.get_type_name() != "ReadValue":
            continue
        shape = node.get_output_partial_shape(0)
        dims = [batch if a == 0 else op.constant(np.array(
            [0 if shape[a].is_dynamic else shape[a].get_length()], np.int64))
            for a in range(len(shape))]
        zero = op.constant(np.zeros((), node.get_output_element_type(0).to_dtype()))
        node.set_arguments([op.broadcast(zero, op.concat(dims, 0))])
    model.validate_nodes_and_infer_types()
    return model


def write(model: Any, spec: GenerativeSpec, folder: Path) -> None:
    """Write ``openvino_model.xml``/``.bin`` and ``generation_config.json`` into ``folder``.

    Raises:
        CaptureError: when the decoder cannot be captured or converted.
    """
    import openvino as ov

    staging = folder / "_onnx"
    onnx_genai.write(model, spec, staging)
    try:
        ir = _stateful(ov.convert_model(os.fspath(staging / onnx_genai.GRAPH)))
    except Exception as e:
        raise CaptureError(
            "task='generate': openvino could not convert the decoder or make it stateful: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
    ov.save_model(ir, os.fspath(folder / GRAPH))
    ids = {k: v for k, v in onnx_genai.config(model, spec)["model"].items()
           if k.endswith("_token_id")}
    (folder / _CONFIG).write_text(json.dumps({**ids, "max_new_tokens": 16,
                                              "do_sample": False}, indent=2))
    shutil.rmtree(staging)


#: openvino-genai's own engine in a fresh process: argv folder, prompts (JSON),
#: max_new_tokens; prints the greedy rows, one prompt per call (token ids in).
ENGINE = "openvino-genai"
#: whether the engine's tokens end with the eos it stopped at (measured: they do)
EOS_IN_SEQUENCE = True
ENGINE_CHILD = """
import json, sys
import numpy as np
import openvino as ov
import openvino_genai
pipe = openvino_genai.LLMPipeline(sys.argv[1], "CPU", INFERENCE_PRECISION_HINT="f32",
                                  KV_CACHE_PRECISION="f32")
rows = []
for prompt in json.loads(sys.argv[2]):
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample = int(sys.argv[3]), False
    out = pipe.generate(ov.Tensor(np.asarray([prompt], np.int64)), config)
    rows.append(prompt + [int(t) for t in out.tokens[0]])
print(json.dumps(rows))
"""


def stop_ids(folder: Path) -> list[int]:
    """The id that ends a row in the engine (``generation_config.json``)."""
    return [int(json.loads((folder / _CONFIG).read_text())["eos_token_id"])]

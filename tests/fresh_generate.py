"""Run in the fresh process: generation through ``kexport.load`` (the format's runtime, no model code)."""

from __future__ import annotations

import sys


def generate(path, requests):
    """``kexport.load(path).generate(**request)`` for each request; rows as lists."""
    import kexport

    artifact = kexport.load(path)
    out = {"format": artifact.format, "rows": []}
    for request in requests:
        rows = artifact.generate(request.pop("prompts"), **request)
        out["rows"].append([r.tolist() for r in rows])
    out["keras_hub_imported"] = "keras_hub" in sys.modules  # no model code
    out["endpoints"] = list(artifact.endpoints)
    return out


def genai_engine(path, prompts, max_new_tokens):
    """onnxruntime-genai's own engine on the folder: greedy rows, one generator per prompt."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(path)
    groups = [[p] for p in prompts]
    rows = []
    for group in groups:
        width = max(len(p) for p in group)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + max_new_tokens, do_sample=False,
                                  batch_size=len(group))
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([[0] * (width - len(p)) + p for p in group],
                                           np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        rows += [[int(t) for t in generator.get_sequence(i)] for i in range(len(group))]
    return {"rows": rows, "keras_imported": "keras" in sys.modules}


def openvino_engine(path, prompts, max_new_tokens):
    """openvino-genai's ``LLMPipeline`` on the IR folder, token ids in, one prompt per call,
    computing in float32 (its CPU default compresses the cache)."""
    import numpy as np
    import openvino as ov
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(path, "CPU", INFERENCE_PRECISION_HINT="f32",
                                      KV_CACHE_PRECISION="f32")
    rows = []
    for prompt in prompts:
        config = pipe.get_generation_config()
        config.max_new_tokens, config.do_sample = max_new_tokens, False
        out = pipe.generate(ov.Tensor(np.asarray([prompt], np.int64)), config)
        rows.append(prompt + [int(t) for t in out.tokens[0]])
    return {"rows": rows, "keras_imported": "keras" in sys.modules}

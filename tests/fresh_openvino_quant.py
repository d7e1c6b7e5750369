"""Quantized OpenVINO IR reloaded in the fresh process (see conftest.FreshProcess).

Only NumPy and openvino are imported: an IR is checked the way a server
without Keras or kexport would load it, compiled in f32 as kexport states it.
"""

from __future__ import annotations

import html
import json
import os
import re

import numpy as np


def describe_and_run(xml, feeds):
    """What the IR at ``xml`` holds (the bytes of its Constant operations by
    element type, input/output element types, the kexport manifest in its
    ``rt_info``, size on disk) and its outputs on ``feeds`` (``{input name: array}``)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml)
    constant_bytes: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() == "Constant":
            kind = op.get_output_element_type(0)
            size = int(np.prod([int(d) for d in op.get_output_shape(0)])) * kind.size
            constant_bytes[kind.get_type_name()] = constant_bytes.get(kind.get_type_name(),
                                                                      0) + size
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    with open(xml) as f:
        text = f.read()
    found = re.search(r'<kexport_manifest value="([^"]*)"', text)
    return {
        "constant_bytes": constant_bytes,
        "io_types": sorted({p.get_element_type().get_type_name()
                            for p in [*model.inputs, *model.outputs]}),
        "manifest": json.loads(html.unescape(found.group(1))) if found else None,
        "size": os.path.getsize(xml[:-4] + ".bin"),
        "outputs": [np.asarray(result[p]) for p in compiled.outputs],
    }

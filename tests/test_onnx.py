"""ONNX export: every zoo model, on every backend, against the live model.

Artifacts are reloaded with ONNX Runtime in a fresh process (``fresh_onnx``)
at batch sizes 1, 3 and 8, and at two sequence lengths where the signature
has a dynamic time axis.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from conftest import BACKEND
from kexport.signature import flat_names, flatten, normalize_for_model, pack_as

EXPECTED_NAMES = {
    "mlp": (["features"], ["probs"]),
    "cnn": (["image"], ["logits"]),
    "lstm": (["sequence"], ["score"]),
    "gru": (["sequence"], ["score"]),
    "bilstm": (["sequence"], ["score"]),
    "transformer": (["tokens"], ["encoded"]),
    "embedding": (["ids"], ["head"]),
    "multi_io": (["left", "right"], ["price", "kind"]),
    "dict_inputs": (["age", "tags"], ["out"]),
    "subclassed": (["input"], ["output_0"]),
    "preprocessing": (["raw"], ["y"]),
}


def _feeds(signature, names, rng):
    """(feed dict, live args) per case: batch 1/3/8, and a second length."""
    specs = flatten(signature)
    has_time = any(ax != 0 for s in specs for ax in s.dynamic_axes)
    cases = [(1, 5), (3, 5), (8, 5)] + ([(3, 9)] if has_time else [])
    out = []
    for batch, length in cases:
        arrays = []
        for spec in specs:
            shape = [batch if ax == 0 else (length if d is None else d)
                     for ax, d in enumerate(spec.shape)]
            if spec.dtype.startswith("int"):
                arrays.append(rng.integers(0, 50, size=shape).astype(spec.dtype))
            else:
                arrays.append(rng.normal(size=shape).astype(spec.dtype))
        out.append((dict(zip(names, arrays, strict=False)), arrays))
    return out


def _live(model, signature, arrays):
    outputs = model(*pack_as(list(signature), arrays), training=False)
    return [keras.ops.convert_to_numpy(o) for o in flatten(outputs)]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, fresh_process):
    """Export every zoo model once; reload all in one fresh-process call."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("onnx_zoo")
    jobs, expected, signatures = {}, {}, {}
    for key, build in onnx_models.ZOO.items():
        model = build()
        signature = normalize_for_model(model, None)
        names = flat_names(signature)
        path = root / f"{key}_model"  # no .onnx suffix on purpose
        kexport.export_onnx(model, path, verbose=False)
        cases = _feeds(signature, names, rng)
        jobs[key] = (str(path), [feed for feed, _ in cases])
        expected[key] = [_live(model, signature, arrays) for _, arrays in cases]
        signatures[key] = signature
    results = fresh_process("fresh_onnx:run_many", jobs)
    return results, expected, signatures, root


@pytest.mark.parametrize("key", list(onnx_models.ZOO))
def test_zoo_matches_live_model(zoo, key):
    results, expected, _, _ = zoo
    got = results[key]
    for case_out, case_ref in zip(got["results"], expected[key], strict=True):
        assert len(case_out) == len(case_ref)
        for o, r in zip(case_out, case_ref, strict=True):
            assert o.shape == r.shape
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("key", list(onnx_models.ZOO))
def test_zoo_names_and_dynamic_dims(zoo, key):
    results, _, signatures, _ = zoo
    got = results[key]
    inputs, outputs = EXPECTED_NAMES[key]
    assert [n for n, _ in got["inputs"]] == inputs
    assert got["session_inputs"] == inputs
    assert [n for n, _ in got["outputs"]] == outputs
    assert got["session_outputs"] == outputs
    for spec, (_, dims) in zip(flatten(signatures[key]), got["inputs"], strict=True):
        assert len(dims) == len(spec.shape)
        for axis, d in enumerate(spec.shape):
            if d is None:
                assert dims[axis] == ("batch" if axis == 0 else f"d{axis}")
            else:
                assert dims[axis] == d


@pytest.mark.parametrize("key", list(onnx_models.ZOO))
def test_zoo_metadata_opset_and_lean_graph(zoo, key):
    results, _, _signatures, _ = zoo
    got = results[key]
    assert got["producer"] == ("kexport", kexport.__version__)
    assert got["opset"]["ai.onnx"] == 18
    meta = got["metadata"]
    assert meta["kexport.backend"] == BACKEND
    assert meta["kexport.keras_version"] == keras.__version__
    assert meta["kexport.endpoint"] == "serve"
    import json

    assert [i["name"] for i in json.loads(meta["kexport.inputs"])] == EXPECTED_NAMES[key][0]
    assert [o["name"] for o in json.loads(meta["kexport.outputs"])] == EXPECTED_NAMES[key][1]
    assert got["dead_nodes"] == []
    assert got["duplicate_nodes"] == 0
    assert "Dropout" not in got["ops"]


def test_zoo_files_hold_no_local_paths(zoo):
    _, _, _, root = zoo
    needles = {str(root), os.getcwd(), os.path.expanduser("~"), str(Path(root).parent)}
    for path in Path(root).iterdir():
        data = path.read_bytes()
        for needle in needles:
            if len(needle) > 4:
                assert needle.encode() not in data, (path.name, needle)


@pytest.mark.parametrize("key", ["lstm", "gru", "bilstm"])
def test_recurrent_time_axis_is_symbolic(zoo, key):
    results, _, _, _ = zoo
    (_, dims), = results[key]["inputs"]
    assert dims[:2] == ["batch", "d1"]
    # the second length ran (9 steps), so the time axis was not unrolled
    assert results[key]["results"][-1][0].shape[0] == 3

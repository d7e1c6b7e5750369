"""TensorFlow -> ONNX with large weights lifted out of tf2onnx's GraphDef.

Variables of at least ``_LIFT_MIN_BYTES`` reach tf2onnx as graph inputs and
become initializers named by the variable's path afterwards (tf2onnx would
otherwise freeze them into constants and copy them many times: 30 s and
9 GiB for a 128 MiB MLP). Artifacts are reloaded in a fresh process and
compared with the live model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from kexport.formats.onnx import _tensorflow
from kexport.signature import flat_names, flatten, normalize_for_model, pack_as

pytestmark = pytest.mark.backends("tensorflow")


def _cases(model, rng):
    signature = normalize_for_model(model, None)
    names = flat_names(signature)
    cases = []
    for batch in (1, 3):
        arrays = []
        for spec in flatten(signature):
            shape = [batch if a == 0 else (5 if d is None else d) for a, d in enumerate(spec.shape)]
            arrays.append(rng.integers(0, 50, shape).astype(spec.dtype)
                          if spec.dtype.startswith("int") else
                          rng.normal(size=shape).astype(spec.dtype))
        live = [keras.ops.convert_to_numpy(o) for o in
                flatten(model(*pack_as(list(signature), arrays), training=False))]
        cases.append((dict(zip(names, arrays, strict=True)), live))
    return cases


@pytest.mark.parametrize("key", ["mlp", "cnn", "lstm", "transformer", "embedding",
                                 "multi_io", "dict_inputs", "subclassed", "preprocessing"])
def test_every_weight_lifted_still_computes_the_model(key, tmp_path, fresh_process, monkeypatch):
    # lift every variable, however small (recurrent layers keep constants)
    monkeypatch.setattr(_tensorflow, "_LIFT_MIN_BYTES", 0)
    model = onnx_models.ZOO[key]()
    lifted = _tensorflow._liftable_variables(model)
    assert lifted or key == "lstm"
    path = tmp_path / f"{key}.onnx"
    kexport.export_onnx(model, path, verbose=False)
    cases = _cases(model, np.random.default_rng(0))
    got = fresh_process("fresh_onnx:run_many", {key: (str(path), [f for f, _ in cases])})[key]
    for out, (_, live) in zip(got["results"], cases, strict=True):
        for o, r in zip(out, live, strict=True):
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=2e-5)
    assert got["dead_nodes"] == [] and got["duplicate_nodes"] == 0


def test_large_weights_are_initializers_named_by_variable_path(tmp_path, fresh_process):
    import onnx

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(64, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.Conv2D(128, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(256, name="head")(x))
    assert [v.path for v in _tensorflow._liftable_variables(model)] == ["conv2/kernel", "head/kernel"]
    path = tmp_path / "m.onnx"
    kexport.export_onnx(model, path, verbose=False)
    graph = onnx.load(str(path)).graph
    names = {t.name for t in graph.initializer}
    assert "head/kernel" in names  # the conv kernel is folded into OIHW layout
    # no layout op is left on a weight: the kernel transpose was folded
    inits = names
    assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    cases = _cases(model, np.random.default_rng(1))
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [f for f, _ in cases])})["m"]
    for out, (_, live) in zip(got["results"], cases, strict=True):
        np.testing.assert_allclose(out[0], live[0], rtol=1e-4, atol=2e-5)

"""``quantization_exclude=`` (issue #16, item 4): Keras layers kept in float in a quantized artifact.

The issue's case: a model whose first and last layers are excluded. The
artifact is reloaded in a fresh process (onnx only): the excluded layers'
MatMuls take their weights as float32 initializers, while the middle layer's
weights are int8 (QDQ: an int8 initializer through DequantizeLinear; dynamic:
MatMulInteger); its outputs are checked against the live model with
``kexport.verify``. The name mapping differs per backend (tf2onnx keeps Keras
name scopes, torch.onnx module paths, jax2onnx none: JAX is re-hosted on
TensorFlow), so the case runs on each. Requests kexport cannot honour are
typed errors, raised before anything is written.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kexport
from conftest import BACKEND
from kexport.artifact.exclusion import excluded_nodes, resolve_layers
from kexport.errors import LayerMappingError, QuantizationError

# the weight dims of each layer (sorted), which tell the layers apart in the graph
FIRST, MIDDLE, LAST = [12, 24], [24, 32], [10, 32]


def _data(rows, seed):
    return {"features": np.random.default_rng(seed).normal(size=(rows, 12)).astype("float32")}


def _model():
    """Dense -> (a block holding a Dense) -> Dense, subclassed, dict input,
    no get_config, whose call takes no ``training``."""

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(32, activation="relu", name="inner")

        def call(self, x):
            return self.inner(x)

    class Tagger(keras.Model):
        def __init__(self):
            super().__init__()
            self.first = keras.layers.Dense(24, activation="relu", name="first")
            self.block = Block(name="block")
            self.last = keras.layers.Dense(10, name="last")

        def call(self, inputs):
            return self.last(self.block(self.first(inputs["features"])))

    model = Tagger()
    model(_data(2, 0))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each mode once per module (first and last layers excluded)."""
    keras.utils.set_random_seed(7)
    model = _model()
    root = tmp_path_factory.mktemp("qexcl")
    paths = {}

    def export(mode):
        if mode not in paths:
            path = root / f"{mode}.onnx"
            calibration = ([_data(32, s) for s in range(1, 5)] if mode == "int8" else None)
            kexport.export_onnx(model, path, verbose=False, quantization=mode,
                                calibration_data=calibration,
                                quantization_exclude=["first", "last"])
            paths[mode] = path
        return paths[mode]

    return model, export


def _by_layer(ops):
    return {tuple(op["dims"]): op for op in ops if op["dims"] is not None}


@pytest.mark.parametrize("mode", ["int8", pytest.param("dynamic_int8", marks=pytest.mark.backends(
    "tensorflow", "torch"))])
def test_first_and_last_layers_stay_float(exported, fresh_process, mode):
    model, export = exported
    path = export(mode)
    graph = fresh_process("fresh_exclude:weight_ops", str(path))
    ops = _by_layer(graph["ops"])
    assert set(ops) >= {tuple(FIRST), tuple(MIDDLE), tuple(LAST)}, graph["ops"]
    for dims in (FIRST, LAST):  # float32 weights, no quantized operator
        op = ops[tuple(dims)]
        assert op["op"] in ("MatMul", "Gemm") and "initializer float32" in op["inputs"], op
        assert not any(s.startswith("DequantizeLinear") for s in op["inputs"][1:]), op
    assert not any(s.startswith("DequantizeLinear") for s in ops[tuple(FIRST)]["inputs"])
    middle = ops[tuple(MIDDLE)]
    if mode == "int8":  # QDQ: int8 weights dequantized into a float MatMul
        assert middle["op"] in ("MatMul", "Gemm") and "DequantizeLinear int8" in middle["inputs"], \
            middle
    else:
        # unsigned weights (U8U8): exact on CPUs without VNNI too
        assert middle["op"] == "MatMulInteger" and "initializer uint8" in middle["inputs"], middle
    recorded = json.loads(graph["metadata"]["kexport.quantization"])
    assert recorded["mode"] == mode and recorded["excluded_layers"] == ["first", "last"]
    if mode == "int8":  # the case, compared with the live model
        report = kexport.verify(model, path, data=_data(64, 99))
        assert report.ok, report.to_json()
        assert report.quantization == mode


@pytest.mark.backends("tensorflow")
def test_float16_keeps_excluded_layers_float32(exported, fresh_process):
    _, export = exported
    graph = fresh_process("fresh_exclude:weight_ops", str(export("float16")))
    ops = _by_layer(graph["ops"])
    for dims in (FIRST, LAST):  # float32 weights (the converter adds a no-op Cast to float32)
        assert {"initializer float32", "Cast float32"} & set(ops[tuple(dims)]["inputs"]), ops
    assert "initializer float16" in ops[tuple(MIDDLE)]["inputs"], ops[tuple(MIDDLE)]


def test_unknown_layer_is_a_typed_error(tmp_path):
    model = _model()
    target = tmp_path / "never.onnx"
    with pytest.raises(QuantizationError, match=r"Received unknown: \['firts'\]\. Valid layers: "
                                                r"\['first', 'block', 'block/inner', 'last'\]"):
        kexport.export_onnx(model, target, verbose=False, quantization="dynamic_int8",
                            quantization_exclude=["firts"])
    assert not target.exists()


def test_exclude_needs_a_quantization_mode(tmp_path):
    model = _model()
    with pytest.raises(QuantizationError, match=r"needs a quantization mode\. Received: "
                                                r"quantization=None, quantization_exclude="
                                                r"\['first'\]"):
        kexport.export_onnx(model, tmp_path / "never.onnx", quantization_exclude=["first"])
    with pytest.raises(QuantizationError, match=r"Expected `quantization_exclude` to be a "
                                                r"non-empty list .* Received: 'first'"):
        kexport.export_onnx(model, tmp_path / "never.onnx", quantization="dynamic_int8",
                            quantization_exclude="first")
    assert not (tmp_path / "never.onnx").exists()


@pytest.mark.backends("tensorflow")
def test_litert_refuses_exclusion(tmp_path):
    with pytest.raises(QuantizationError, match=r"format='litert' cannot keep layers in float "
                                                r"\(its converter offers no supported way.*"
                                                r"Formats that can: \['openvino', 'onnx'\]"):
        kexport.export_litert(_model(), tmp_path / "never.tflite", quantization="dynamic_int8",
                              quantization_exclude=["first"])
    assert not (tmp_path / "never.tflite").exists()


@pytest.mark.backends("tensorflow")
def test_names_paths_and_graph_scopes():
    """Layers by name or by path; TensorFlow's renamed scopes told apart
    (``dense`` runs as scope ``dense_1`` next to a layer named ``dense_1``),
    and what cannot be told apart or found is a LayerMappingError."""
    model = _model()
    by_path = resolve_layers(model, ["block/inner", "last"])
    assert [(x.path, x.names[1:]) for x in by_path] == [
        ("block/inner", ("block", "inner")), ("last", ("last",))]
    assert resolve_layers(model, [f"{model.name}/block/inner"]) == by_path[:1]

    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"),
                            keras.layers.Dense(3, name="dense_1")], name="seq")
    scopes = {"seq_1/dense_1/MatMul": ["seq_1", "dense_1"],
              "seq_1/dense_1_2/MatMul": ["seq_1", "dense_1_2"]}
    assert excluded_nodes(seq, resolve_layers(seq, ["dense"]), scopes, "layer_names",
                          "r") == ["seq_1/dense_1/MatMul"]
    assert excluded_nodes(seq, resolve_layers(seq, ["dense_1"]), scopes, "layer_names",
                          "r") == ["seq_1/dense_1_2/MatMul"]
    with pytest.raises(LayerMappingError, match=r"could come from any of the layers "
                                                r"\['dense', 'dense_1'\]"):
        excluded_nodes(seq, resolve_layers(seq, ["dense"]),
                       {"seq_1/dense_1/MatMul": ["seq_1", "dense_1"]}, "layer_names", "r")
    with pytest.raises(LayerMappingError, match=r"Layer 'dense_1' of quantization_exclude "
                                                r"matched no node"):
        excluded_nodes(seq, resolve_layers(seq, ["dense_1"]),
                       {"seq_1/dense/MatMul": ["seq_1", "dense"]}, "layer_names", "r")
    with pytest.raises(LayerMappingError, match=r"Route 'jax: jax2onnx' keeps no Keras layer "
                                                r"names"):
        excluded_nodes(seq, resolve_layers(seq, ["dense"]), {}, None, "jax: jax2onnx")
    assert issubclass(LayerMappingError, QuantizationError) and BACKEND == "tensorflow"


@pytest.mark.backends("tensorflow")
def test_archive_write_out_excludes_layers(tmp_path, fresh_process):
    """``ExportArchive.write_out(format="onnx", quantization_exclude=...)``: the
    layers of the tracked model, in the archive's graph, stay float."""
    import tensorflow as tf

    model = _model()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda features: model({"features": features}),
                         input_signature=[tf.TensorSpec((None, 12), tf.float32)])
    archive.write_out(tmp_path / "a", format="onnx", verbose=False,
                      quantization="dynamic_int8", quantization_exclude=["last"])
    graph = fresh_process("fresh_exclude:weight_ops", str(tmp_path / "a" / "serve.onnx"))
    ops = _by_layer(graph["ops"])
    assert ops[tuple(LAST)]["op"] == "MatMul", ops
    assert ops[tuple(FIRST)]["op"] == ops[tuple(MIDDLE)]["op"] == "MatMulInteger", ops
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["quantization"]["excluded_layers"] == ["last"]


# -- OpenVINO: the same layers, NNCF's IgnoredScope ----------------------------------------------
@pytest.fixture(scope="module")
def openvino_int8(tmp_path_factory):
    """The model exported once as int8 OpenVINO IR, first and last layers excluded."""
    keras.utils.set_random_seed(7)
    model = _model()
    path = tmp_path_factory.mktemp("qexcl_ov") / "m.xml"
    kexport.export_openvino(model, path, verbose=False, quantization="int8",
                            calibration_data=[_data(32, s) for s in range(1, 5)],
                            quantization_exclude=["first", "last"])
    return model, path


@pytest.mark.backends("tensorflow", "torch")
def test_openvino_first_and_last_layers_stay_float(openvino_int8, fresh_process):
    """TensorFlow: Keras name scopes in the IR's operation names; PyTorch: the
    torch.export program's module paths. The excluded MatMuls take f32
    Constants; the middle one int8 weights (Convert-Multiply) and a
    FakeQuantize'd activation."""
    model, path = openvino_int8
    graph = fresh_process("fresh_exclude:ir_weight_ops", str(path))
    ops = {tuple(op["dims"]): op for op in graph["ops"] if op["dims"]}
    assert set(ops) == {tuple(FIRST), tuple(MIDDLE), tuple(LAST)}, graph["ops"]
    for dims in (FIRST, LAST):
        assert ops[tuple(dims)]["weights"] == ["Constant f32"], ops[tuple(dims)]
        assert ops[tuple(dims)]["activation"] != "FakeQuantize", ops[tuple(dims)]
    middle = ops[tuple(MIDDLE)]
    assert middle["weights"][-1] == "Constant i8" and "Multiply" in middle["weights"], middle
    assert middle["activation"] == "FakeQuantize", middle
    recorded = graph["manifest"]["quantization"]
    assert recorded["mode"] == "int8" and recorded["excluded_layers"] == ["first", "last"]
    report = kexport.verify(model, path, data=_data(64, 99))
    assert report.ok, report.to_json()
    assert report.quantization == "int8"


@pytest.mark.backends("tensorflow")
def test_openvino_dynamic_int8_excludes_by_path(tmp_path, fresh_process):
    """``dynamic_int8`` (nncf.compress_weights) keeps the nested layer, named by
    its path, in f32; the others get u8 weights; ``float16`` is refused."""
    model = _model()
    path = tmp_path / "d.xml"
    kexport.export_openvino(model, path, verbose=False, quantization="dynamic_int8",
                            quantization_exclude=["block/inner"])
    graph = fresh_process("fresh_exclude:ir_weight_ops", str(path))
    ops = {tuple(op["dims"]): op for op in graph["ops"] if op["dims"]}
    assert ops[tuple(MIDDLE)]["weights"] == ["Constant f32"], ops
    for dims in (FIRST, LAST):
        assert ops[tuple(dims)]["weights"][-1] == "Constant u8", ops[tuple(dims)]
    assert graph["manifest"]["quantization"]["excluded_layers"] == ["block/inner"]
    with pytest.raises(QuantizationError, match=r"format='openvino' cannot keep layers in "
                                                r"float in quantization='float16' \(it does in "
                                                r"\['dynamic_int8', 'int8'\]\)"):
        kexport.export_openvino(model, tmp_path / "f.xml", quantization="float16",
                                quantization_exclude=["first"])
    assert not (tmp_path / "f.xml").exists()


@pytest.mark.backends("tensorflow")
def test_openvino_layer_without_operations_is_a_typed_error(tmp_path):
    """A layer that computes nothing in the IR (Dropout at inference) cannot be
    kept in float: a LayerMappingError, nothing written."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(8, name="dense")
            self.drop = keras.layers.Dropout(0.5, name="drop")

        def call(self, x):
            return self.drop(self.dense(x))

    model = Net()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(LayerMappingError, match=r"Layer 'drop' of quantization_exclude matched "
                                                r"no node of the graph written by route "
                                                r"'tensorflow: tf.function -> openvino"):
        kexport.export_openvino(model, tmp_path / "n.xml", verbose=False,
                                quantization="dynamic_int8", quantization_exclude=["drop"])
    assert not (tmp_path / "n.xml").exists()


@pytest.mark.backends("torch")
def test_openvino_torch_functional_layers_refuse_torch_export(tmp_path):
    """On PyTorch, a Functional model's layers are no module attributes, so the
    torch.export strategy cannot name their operations: a LayerMappingError
    before converting (export_model then tries the re-host on TensorFlow)."""
    inputs = keras.Input((12,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(
        keras.layers.Dense(8, name="body")(inputs)))
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model, input_signature=[keras.InputSpec(shape=(None, 12))])
    with pytest.raises(LayerMappingError, match=r"Route 'torch: torch.export -> "
                                                r"openvino.convert_model' names graph nodes by "
                                                r"PyTorch module paths, and layers \['head'\]"):
        archive.write_out(tmp_path / "a", format="openvino", verbose=False,
                          quantization="dynamic_int8", quantization_exclude=["head"])
    assert not (tmp_path / "a").exists()

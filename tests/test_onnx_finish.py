"""The ONNX finishing step as onnx-ir passes: each states what it needs and
leaves, and a failure names the pass and those that ran before it."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from kexport.errors import CaptureError, WriteError
from kexport.formats.onnx._finish import (
    ClearedDebugInfo,
    FinishPass,
    FinishPassError,
    NamedIO,
    finish,
    finishing_passes,
    run_passes,
)
from kexport.formats.onnx._graph import RawGraph
from kexport.signature import Spec

pytestmark = pytest.mark.fast


def _relu_model() -> ir.Model:
    x = ir.Value(name="in_0", shape=ir.Shape(["unk__1", 4]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node("Relu", inputs=[x])
    node.outputs[0].name = "out_0"
    node.outputs[0].shape = ir.Shape(["unk__1", 4])
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 18})
    model = ir.Model(graph, ir_version=10)
    model.doc_string = "/home/someone/model.py"
    return model


class _NeedsTwoInputs(FinishPass):
    name = "needs_two_inputs"

    def requires(self, model):
        if len(model.graph.inputs) != 2:
            raise ValueError(f"expected 2 graph inputs, got {len(model.graph.inputs)}")

    def apply(self, model):
        return False


def test_a_failed_precondition_names_the_pass_and_those_before_it():
    model = _relu_model()
    with pytest.raises(FinishPassError) as info:
        run_passes(model, [NamedIO(["x"], ["y"]), ClearedDebugInfo(), _NeedsTwoInputs()],
                   "test: route")
    error = info.value
    assert isinstance(error, WriteError)
    assert error.pass_name == "needs_two_inputs"
    assert error.after == ["named_io", "cleared_debug_info"]
    text = str(error)
    assert text.startswith("Step 4/6 (finish, precondition of pass 'needs_two_inputs' after "
                           "['named_io', 'cleared_debug_info']) (route: test: route) failed: "
                           "ValueError: expected 2 graph inputs, got 1")
    # the passes before it did their work
    assert [v.name for v in model.graph.inputs] == ["x"] and model.doc_string is None


def test_a_failed_postcondition_is_reported_as_such():
    class _Promises(FinishPass):
        name = "promises_metadata"

        def ensures(self, model):
            if "kexport.route" not in model.metadata_props:
                raise ValueError("no kexport.route")

        def apply(self, model):
            return False

    with pytest.raises(FinishPassError, match=r"postcondition of pass 'promises_metadata' "
                                              r"after none\) .*no kexport.route"):
        run_passes(_relu_model(), [_Promises()], "r")


def test_named_io_precondition_keeps_its_capture_error():
    with pytest.raises(CaptureError, match=r"Step 4/6 \(finish, pass 'named_io'\): expected 2 "
                                           r"graph inputs and 1 outputs. Received 1 and 1"):
        run_passes(_relu_model(), [NamedIO(["a", "b"], ["y"])], "r")


def test_finish_runs_every_pass_in_order():
    raw = RawGraph(_relu_model(), ["x"], ["y"], [Spec((None, 4), "float32", "y")], "test: route")
    specs = [Spec((None, 4), "float32", "x")]
    names = [p.name for p in finishing_passes(raw, opset=18, backend="tensorflow",
                                              endpoint="serve", input_specs=specs)]
    assert names == ["named_io", "cleared_debug_info", "optimized", "at_opset",
                     "named_dynamic_dims", "kexport_metadata"]
    proto = finish(raw, opset=17, backend="tensorflow", endpoint="serve", input_specs=specs)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["kexport.route"] == "test: route" and meta["kexport.endpoint"] == "serve"
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    assert proto.producer_name == "kexport" and "/home/" not in proto.SerializeToString().decode(
        "latin-1")
    assert proto.graph.input[0].name == "x" and proto.graph.output[0].name == "y"
    dims = [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim[:1]]
    assert dims == ["batch"]  # the converter's unk__1 follows the input's symbol

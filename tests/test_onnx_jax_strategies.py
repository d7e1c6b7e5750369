"""JAX -> ONNX strategies: jax2onnx in process where ONNX Runtime agrees, else re-host.

jax2onnx misbehaves on this stack in two ways this file pins down: a MaxPool
graph it writes fails in ONNX Runtime, and it refuses reverse scans
(Bidirectional RNNs). Both must end on the re-host route with a correct
artifact. Artifacts are reloaded in a fresh process and compared with the live
model at batch 1, 3 and 8.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx_ir as ir
import pytest

import kexport
import onnx_models
from kexport.context import ExportContext
from kexport.signature import flatten, normalize_for_model

pytestmark = pytest.mark.backends("jax")
REHOST = "re-host on tensorflow (child process): tf.function -> tf2onnx"


def _export_and_check(key, tmp_path, fresh_process):
    model = onnx_models.ZOO[key]()
    spec = flatten(normalize_for_model(model, None))[0]
    path = tmp_path / f"{key}.onnx"
    kexport.export_onnx(model, path, verbose=False)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=[b if a == 0 else (6 if d is None else d)
                           for a, d in enumerate(spec.shape)]).astype("float32")
          for b in (1, 3, 8)]
    got = fresh_process("fresh_onnx:run_many", {key: (str(path), [{spec.name: x} for x in xs])})
    for x, out in zip(xs, got[key]["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x, training=False))
        assert out[0].shape == ref.shape
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=2e-5)
    return got[key]["metadata"]["kexport.route"]


def test_plain_model_is_converted_in_process_by_jax2onnx(tmp_path, fresh_process):
    assert _export_and_check("transformer", tmp_path, fresh_process) == "jax: jax2onnx (verified)"


def test_graph_onnx_runtime_cannot_run_falls_back_to_rehost(tmp_path, fresh_process, capfd):
    # jax2onnx writes the CNN's MaxPool in a form ONNX Runtime refuses at run time
    assert _export_and_check("cnn", tmp_path, fresh_process) == REHOST
    # ... which is an answer, not an error for the user: ORT must not log it
    assert "Non-zero status code" not in capfd.readouterr().err


def test_recurrent_model_goes_to_rehost_for_the_lstm_op(tmp_path, fresh_process):
    assert _export_and_check("lstm", tmp_path, fresh_process) == REHOST


def test_jax2onnx_refusals_are_not_traceable():
    from kexport.formats.onnx._accept import NotTraceable
    from kexport.formats.onnx._graph import Source
    from kexport.formats.onnx._jax import Jax2Onnx

    model = onnx_models.bilstm()
    with pytest.raises(NotTraceable, match="jax2onnx: NotImplementedError: Reverse scan"):
        Jax2Onnx().capture(Source.of(model, normalize_for_model(model, None)), 18,
                          ExportContext())
    model = onnx_models.cnn()
    raw = Jax2Onnx().capture(Source.of(model, normalize_for_model(model, None)), 18,
                          ExportContext())
    with pytest.raises(NotTraceable, match=r"ONNX Runtime: .*MaxPool"):
        raw.accept(ir.to_proto(raw.model).SerializeToString())


def _jax2onnx_connected_check():
    """jax2onnx's connectivity check, the shipped one and the one kexport installs."""
    from jax2onnx.converter import output_binding

    return output_binding, output_binding._value_is_graph_connected


def test_linear_output_binding_gives_jax2onnx_the_same_graph_and_restores_it():
    import jax
    import jax2onnx

    from kexport.formats.onnx.compat import linear_output_binding

    model = onnx_models.transformer()
    inputs = [jax.ShapeDtypeStruct(("batch", "d1", 16), np.float32)]

    def convert():
        return jax2onnx.to_onnx(lambda x: model(x, training=False), inputs=inputs,
                                input_names=["tokens"], output_names=["encoded"], opset=18,
                                return_mode="proto").SerializeToString()

    module, shipped = _jax2onnx_connected_check()
    plain = convert()
    with linear_output_binding():
        with linear_output_binding():  # nested (another export in a thread): counted
            assert module._value_is_graph_connected is not shipped
        assert module._value_is_graph_connected is not shipped
        fast = convert()
    assert module._value_is_graph_connected is shipped
    assert fast == plain


def test_linear_output_binding_leaves_other_values_to_jax2onnx_scan():
    from types import SimpleNamespace

    from kexport.formats.onnx.compat import linear_output_binding

    graph = ir.Graph([], [], nodes=[])
    inside = ir.node("Relu", inputs=[ir.Value(name="x")])
    inside.outputs[0].name = "relu_out"
    graph.append(inside)
    outside = ir.node("Relu", inputs=[ir.Value(name="z")])  # not part of the graph
    outside.outputs[0].name = "elsewhere"
    ctx = SimpleNamespace(builder=SimpleNamespace(inputs=[], initializers=[], nodes=graph))
    module, _ = _jax2onnx_connected_check()
    with linear_output_binding():
        connected = module._value_is_graph_connected
        assert connected(ctx, inside.outputs[0]) is True
        assert connected(ctx, outside.outputs[0]) is False  # jax2onnx's own scan says so
        outside.outputs[0].name = "relu_out"  # jax2onnx also matches values by name
        assert connected(ctx, outside.outputs[0]) is True


def test_verbose_export_says_why_the_fast_graph_was_not_used(tmp_path, capsys):
    import sys

    kexport.export_onnx(onnx_models.cnn(), tmp_path / "cnn.onnx")
    out = capsys.readouterr().out
    assert "kexport: not using the jax2onnx graph: ONNX Runtime:" in out
    assert "MaxPool" in out
    assert "kexport: trying the next route: re-host on tensorflow (child process) -> tf2onnx" in out
    assert sys.prefix not in out and "site-packages" not in out


# -- one ONNX path: export_model and ExportArchive ------------------------------------------------
def _ops(path):
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in graph.metadata_props}
    return collections.Counter(n.op_type for n in graph.graph.node), meta["kexport.route"]


def test_export_model_and_a_one_endpoint_archive_give_the_same_graph(tmp_path):
    """The same strategies (jax2onnx, checked by ONNX Runtime) and the same finishing
    convert a model's default endpoint and an archive's endpoint: the same
    operators; both artifacts verify against the live model in a fresh process."""
    model = onnx_models.transformer()
    single = tmp_path / "m.onnx"
    kexport.export_model(model, str(single), format="onnx", verbose=False)
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda tokens: model(tokens, training=False),
                         normalize_for_model(model, None))
    folder = tmp_path / "archive"
    archive.write_out(str(folder), format="onnx", verbose=False)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "serve.onnx",
                                                        "weights.data"]
    single_ops, single_route = _ops(single)
    archive_ops, archive_route = _ops(folder / "serve.onnx")
    assert single_route == "jax: jax2onnx (verified)"
    assert archive_route == "jax: ExportArchive jax2onnx (verified)"
    assert archive_ops == single_ops and sum(single_ops.values()) > 10
    for path in (single, folder):
        report = kexport.verify(model, path, store=False)
        assert report.ok, report


def test_archive_endpoint_jax2onnx_cannot_run_is_rehosted(tmp_path, fresh_process, capsys):
    """A refusal of an archive's endpoint (ONNX Runtime cannot run jax2onnx's
    MaxPool) re-hosts the whole archive on TensorFlow, as for one model."""
    model = onnx_models.cnn()
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         normalize_for_model(model, None))
    folder = tmp_path / "archive"
    archive.write_out(str(folder), format="onnx")
    out = capsys.readouterr().out
    assert "kexport: not using the jax2onnx graph: ONNX Runtime:" in out
    assert "kexport: re-hosting the archive (" in out
    _, route = _ops(folder / "serve.onnx")
    assert route.startswith("re-host on tensorflow"), route
    assert kexport.verify(model, folder, store=False).ok


def test_archive_endpoint_with_extra_computation_is_written_in_process(tmp_path, fresh_process):
    """An endpoint a re-host cannot describe as data (it computes more than one
    call) is no obstacle in process: jax2onnx converts the function itself."""
    model = onnx_models.mlp()
    spec = normalize_for_model(model, None)
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("doubled", lambda x: model(x, training=False) * 2.0, spec)
    assert archive.described_endpoints()["doubled"][0] == (
        "it does more than return the result of one call")
    folder = tmp_path / "archive"
    archive.write_out(str(folder), format="onnx", verbose=False)
    assert _ops(folder / "doubled.onnx")[1] == "jax: ExportArchive jax2onnx (verified)"
    from kexport.signature import flat_names

    name = flat_names(spec)[0]
    x = np.random.default_rng(0).normal(size=(3, *flatten(spec)[0].shape[1:])).astype("float32")
    got = fresh_process("fresh_onnx:run_many", {"d": (str(folder / "doubled.onnx"), [{name: x}])})
    want = 2.0 * keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got["d"]["results"][0][0], want, rtol=1e-4, atol=2e-5)

"""The fast converters' graphs (jax2onnx, traced torch.onnx) are checked as written.

``RawGraph.accept`` runs ONNX Runtime on the *finished* graph (renamed,
optimised, with metadata): the bytes it checks must be the bytes on disk. A
graph too large to serialize in memory cannot be checked that way and goes to
the next strategy. Artifacts are reloaded in a fresh process and compared with
the live model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from kexport.formats import _onnx_check
from kexport.formats import onnx as onnx_format

pytestmark = pytest.mark.backends("jax", "torch")

FAST = {"jax": "jax: jax2onnx (verified)", "torch": "torch: torch.onnx (traced, verified)"}
# where a graph that cannot be checked in memory goes instead
NEXT = {"jax": "re-host on tensorflow (child process): tf.function -> tf2onnx",
        "torch": "torch: torch.export -> torch.onnx"}


def _run_fresh(model, path, fresh_process):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(b, 8)).astype("float32") for b in (1, 3, 8)]
    got = fresh_process("fresh_onnx:run_many", {"m": (str(path), [{"features": x} for x in xs])})
    for x, out in zip(xs, got["m"]["results"], strict=True):
        ref = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=2e-5)
    return got["m"]["metadata"]["kexport.route"]


def test_the_graph_onnx_runtime_checked_is_the_file_written(tmp_path, monkeypatch,
                                                            fresh_process):
    checked = []
    compare = _onnx_check._compare

    def spy(data, *args):
        checked.append(bytes(data))
        return compare(data, *args)

    monkeypatch.setattr(_onnx_check, "_compare", spy)
    model = onnx_models.mlp()
    path = tmp_path / "mlp.onnx"
    kexport.export_onnx(model, path, verbose=False)
    assert checked == [path.read_bytes()]
    assert _run_fresh(model, path, fresh_process) == FAST[keras.backend.backend()]


def test_graph_too_large_to_check_in_memory_goes_to_the_next_strategy(tmp_path, monkeypatch,
                                                                       fresh_process):
    # pretend protobuf's 2 GiB limit is just above the 64 MiB kept for the graph
    monkeypatch.setattr(onnx_format, "_PROTO_LIMIT", (64 << 20) + 100)
    model = onnx_models.mlp()  # 780 bytes of weights
    path = tmp_path / "mlp.onnx"
    kexport.export_onnx(model, path, verbose=False)
    assert _run_fresh(model, path, fresh_process) == NEXT[keras.backend.backend()]


def test_write_model_refuses_to_check_what_it_cannot_serialize_and_writes_nothing(
        tmp_path, monkeypatch):
    import onnx

    monkeypatch.setattr(onnx_format, "_PROTO_LIMIT", (64 << 20) + 100)
    weights = onnx.numpy_helper.from_array(np.ones((64,), "float32"), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64])], [weights])
    proto = onnx.helper.make_model(graph)
    calls = []
    with pytest.raises(_onnx_check.NotTraceable, match="over 2 GiB"):
        onnx_format.write_model(proto, tmp_path / "g.onnx", 2**40, "test", calls.append)
    assert calls == [] and list(tmp_path.iterdir()) == []

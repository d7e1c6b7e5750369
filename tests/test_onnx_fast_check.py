"""The fast converters' graphs (jax2onnx, traced torch.onnx) are checked as written.

``RawGraph.accept`` runs ONNX Runtime on the *finished* graph (renamed,
optimised, with metadata): the bytes it checks must be the bytes on disk. A
graph too large to serialize in memory cannot be checked that way and goes to
the next strategy. Artifacts are reloaded in a fresh process and compared with
the live model.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

import kexport
import onnx_models
from kexport.formats.onnx import _accept as _onnx_check
from kexport.formats.onnx import _write

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
    compare = _onnx_check._run_in_onnxruntime

    def spy(data, *args):
        checked.append(bytes(data))
        return compare(data, *args)

    monkeypatch.setattr(_onnx_check, "_run_in_onnxruntime", spy)
    model = onnx_models.mlp()
    path = tmp_path / "mlp.onnx"
    kexport.export_onnx(model, path, verbose=False)
    assert checked == [path.read_bytes()]
    assert _run_fresh(model, path, fresh_process) == FAST[keras.backend.backend()]


def test_with_external_data_the_staged_files_are_checked_then_placed(tmp_path, monkeypatch,
                                                                    fresh_process):
    checked = []
    compare = _onnx_check._run_in_onnxruntime

    def spy(data, *args):
        checked.append(data)
        return compare(data, *args)

    monkeypatch.setattr(_onnx_check, "_run_in_onnxruntime", spy)
    model = onnx_models.mlp()  # 780 bytes of weights
    path = tmp_path / "mlp.onnx"
    kexport.export_onnx(model, path, verbose=False, external_data_threshold=100)
    assert (tmp_path / "mlp.onnx.data").is_file()
    # ONNX Runtime read a staged file of the same name, since removed
    assert len(checked) == 1 and isinstance(checked[0], str)
    assert Path(checked[0]).name == "mlp.onnx" and not Path(checked[0]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    assert _run_fresh(model, path, fresh_process) == FAST[keras.backend.backend()]


def _tiny_graph():
    import onnx

    weights = onnx.numpy_helper.from_array(np.ones((512,), "float32"), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [512])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [512])], [weights])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_refused_external_data_graph_leaves_the_earlier_artifact_as_it_was(tmp_path):
    target = tmp_path / "g.onnx"
    _write.write_model(_tiny_graph(), target, 16, "test", overwrite=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["g.onnx", "g.onnx.data"]

    def refuse(data):
        raise _onnx_check.NotTraceable("differs from the live model at batch 3")

    with pytest.raises(_onnx_check.NotTraceable, match="at batch 3"):
        _write.write_model(_tiny_graph(), target, 16, "test", refuse, overwrite=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_weights_too_large_for_one_protobuf_go_to_external_data_whatever_the_threshold(
        tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(_write, "INLINE_LIMIT", 1000)  # stands for protobuf's 2 GiB
    target = tmp_path / "g.onnx"
    assert _write.write_model(_tiny_graph(), target, 2**40, "test", overwrite=False) is True
    assert (tmp_path / "g.onnx.data").stat().st_size == 2048
    x = np.arange(512, dtype="float32")
    got = ort.InferenceSession(str(target)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x + 1)


def test_messages_quoted_from_peer_libraries_lose_their_local_paths():
    from kexport.formats.onnx._export import without_paths

    torch_error = ("SymbolicValueError: Failed to export a node '%117', scope: Functional:: "
                   "# /home/me/.venv/lib/python3.11/site-packages/keras/src/ops/nn.py:3154:0\n"
                   "Torch IR graph at exception: graph(...)")
    assert without_paths(torch_error) == ("SymbolicValueError: Failed to export a node '%117', "
                                          "scope: Functional:: # nn.py:3154:0")
    assert without_paths(r'Load model from C:\Users\me\m.onnx failed: "/tmp/x/y.txt"') == \
        'Load model from m.onnx failed: "y.txt"'
    kept = "see https://github.com/onnx/onnx/issues/1 and ./relative/file.py"
    assert without_paths(kept) == kept
    assert without_paths("x" * 500).endswith("...") and len(without_paths("x" * 500)) == 240


def test_external_data_into_a_missing_folder_creates_it(tmp_path):
    """Staged graph + data files go into folders that did not exist (as Keras
    creates them); a parent that is a file is a clear WriteError, nothing written."""
    import onnxruntime as ort

    from kexport.errors import WriteError

    target = tmp_path / "missing" / "deeper" / "g.onnx"
    assert _write.write_model(_tiny_graph(), target, 16, "test", overwrite=False) is True
    assert sorted(p.name for p in target.parent.iterdir()) == ["g.onnx", "g.onnx.data"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.arange(512, dtype="float32")
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + 1)

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match="Expected every path component above the artifact "
                                         "to be a folder"):
        _write.write_model(_tiny_graph(), tmp_path / "file" / "g.onnx", 16, "test",
                           overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "missing"]

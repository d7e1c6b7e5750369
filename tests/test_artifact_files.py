"""An artifact's size counts every file it is made of (sidecars included)."""

from __future__ import annotations

import keras
import pytest

import kexport
from kexport import artifact
from kexport._summary import size_of

pytestmark = pytest.mark.backends("tensorflow")


def _model():
    i = keras.Input((64,), name="x")
    return keras.Model(i, keras.layers.Dense(256, name="y")(i))


@pytest.mark.parametrize(("fmt", "name", "sidecar", "kwargs"), [
    ("onnx", "m.onnx", "m.onnx.data", {"external_data_threshold": 0}),
    ("openvino", "m.xml", "m.bin", {}),
])
def test_single_file_artifact_counts_its_sidecar(tmp_path, fmt, name, sidecar, kwargs, capsys):
    unrelated = tmp_path / "m.keras"
    unrelated.write_bytes(b"x" * 10_000)  # same stem, not part of the artifact
    path = tmp_path / name
    kexport.export_model(_model(), path, format=fmt, verbose=True, **kwargs)
    files = kexport.load(path).files
    assert set(files) == {name, sidecar}
    assert files[sidecar] >= 64 * 256 * 4  # the kernel lives in the sidecar
    assert size_of(path, fmt) == sum(files.values())
    assert [p.name for p in artifact.artifact_files(path, fmt)] == [name, sidecar]
    printed = capsys.readouterr().out
    from kexport._summary import human_size

    assert f"({human_size(sum(files.values()))})" in printed

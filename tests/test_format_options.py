"""Typed per-format options: declared once by each format, parsed once where the call enters.

An unknown option or a wrong type is refused before any work with one message that
names the format, the backend and the options the format takes there; nothing is
written. The options a backend's capture takes (JAX: ``is_static``) are accepted only
where that capture runs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.errors import QuantizationError, SignatureError, SignatureTypeError
from kexport.formats.litert import LiteRTOptions
from kexport.formats.onnx import OnnxOptions

BACKEND = keras.backend.backend()


class Scorer(keras.Model):
    """A subclassed model as users write one: no get_config, no `training` argument."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = keras.layers.Embedding(50, 8)
        self.out = keras.layers.Dense(3)

    def call(self, ids):
        return self.out(keras.ops.mean(self.embed(ids), axis=1))


@pytest.fixture(scope="module")
def model():
    m = Scorer()
    m(np.zeros((2, 5), "int32"))
    return m


def _spec():
    return [keras.InputSpec(shape=(None, 5), dtype="int32")]


@pytest.mark.parametrize("format,suffix,taken", [
    ("onnx", ".onnx", "['opset_version', 'external_data_threshold', 'quantization', "
                      "'calibration_data', 'quantization_exclude']"),
    ("litert", ".tflite", "['quantization', 'calibration_data', 'representative_dataset', "
                          "'allow_flex']"),
])
def test_unknown_option_names_format_backend_and_options(model, tmp_path, format, suffix, taken):
    target = tmp_path / f"m{suffix}"
    with pytest.raises(SignatureTypeError) as info:
        kexport.export_model(model, target, format=format, input_signature=_spec(), bogus=1)
    assert str(info.value).startswith(
        f"Unexpected keyword arguments for export_model(format='{format}') on the "
        f"{BACKEND} backend: ['bogus']. Expected only: {taken}")
    assert not target.exists() and not list(tmp_path.iterdir())


def test_capture_options_only_where_that_capture_runs(model, tmp_path):
    """LiteRT hands `is_static` to the JAX capture; elsewhere it is an unknown option."""
    target = tmp_path / "m.tflite"
    if BACKEND == "jax":
        with pytest.raises(SignatureTypeError, match=r"on the jax backend: \['bogus'\]\. "
                           r"Expected only: .* \(and the jax capture's \['is_static', "
                           r"'jax2tf_kwargs'\]\)"):
            kexport.export_model(model, target, format="litert", input_signature=_spec(),
                                 is_static=True, bogus=1)
    else:
        with pytest.raises(SignatureTypeError,
                           match=rf"format='litert'\) on the {BACKEND} backend: \['is_static'\]"):
            kexport.export_model(model, target, format="litert", input_signature=_spec(),
                                 is_static=True)
    assert not target.exists()


def test_wrong_types_refused_at_the_entry(model, tmp_path):
    with pytest.raises(SignatureError, match=r"Expected `opset_version` to be an int from 13 .* "
                       r"Received: opset_version='17'"):
        kexport.export_model(model, tmp_path / "m.onnx", format="onnx",
                             input_signature=_spec(), opset_version="17")
    with pytest.raises(SignatureTypeError, match=r"Expected `allow_flex` to be True or False\. "
                       r"Received: 'yes'"):
        kexport.export_model(model, tmp_path / "m.tflite", format="litert",
                             input_signature=_spec(), allow_flex="yes")
    with pytest.raises(QuantizationError):
        kexport.export_model(model, tmp_path / "m.onnx", format="onnx",
                             input_signature=_spec(), quantization="int3")
    assert not list(tmp_path.iterdir())


def test_write_out_takes_the_archive_options(model, tmp_path):
    """An archive is a folder: no `external_data_threshold`; LiteRT's `options=` or its
    keywords, not both."""
    archive = kexport.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, _spec())
    with pytest.raises(SignatureTypeError, match=rf"write_out\(format='onnx'\) on the {BACKEND} "
                       r"backend: \['external_data_threshold'\]\. Expected only: "
                       r"\['opset_version', 'quantization', 'calibration_data', "
                       r"'quantization_exclude'\]"):
        archive.write_out(tmp_path / "a", format="onnx", external_data_threshold=1024)
    with pytest.raises(SignatureError, match=r"either in `options` or as write_out"):
        archive.write_out(tmp_path / "a.tflite", LiteRTOptions(), format="litert",
                          quantization="float16")
    assert not list(tmp_path.iterdir())


def test_declarations_normalise_values():
    opts = OnnxOptions.parse({"opset_version": 17, "quantization": None},
                             backend="tensorflow", entry="export_model")
    assert (opts.opset_version, opts.quantization, opts.quantization_exclude) == (17, None, ())
    assert OnnxOptions().opset_version == kexport.formats.onnx.DEFAULT_OPSET
    data = [np.zeros((1, 5), "int32")]
    lite = LiteRTOptions.parse({"calibration_data": data, "quantization": "int8"},
                               backend="tensorflow", entry="export_model")
    assert lite.representative_dataset is data and lite.allow_flex is False

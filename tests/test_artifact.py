"""The artifact layer (fast tier: no export, no framework runtime).

Manifest building and strict reading, the one default-endpoint rule, format
descriptors and ``artifact_files``, and the recognisers on crafted files.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import zipfile
from types import SimpleNamespace

import pytest

import kexport
from kexport import artifact, routing
from kexport.artifact import (
    DEFAULT_ENDPOINT,
    FORMATS,
    SERVING_DEFAULT,
    Manifest,
    default_endpoint,
    manifest_default_endpoint,
    read_manifest,
)
from kexport.signature import Spec

pytestmark = pytest.mark.fast


def _endpoint(name, inputs=("x",)):
    return SimpleNamespace(name=name, signature=[Spec((None, 4), "float32", n) for n in inputs],
                           input_names=list(inputs),
                           output_specs=[Spec((None, 2), "float32", "y")])


# -- Manifest ----------------------------------------------------------------------------
def test_manifest_build_records_every_common_key_and_round_trips():
    import keras

    m = Manifest.build([_endpoint("predict"), _endpoint("serve", ("a", "b"))],
                       format="onnx", backend="jax", file_suffix=".onnx", opset=18)
    data = m.to_json()
    assert data["producer"] == "kexport" and data["producer_version"] == kexport.__version__
    assert data["keras_version"] == keras.__version__
    assert (data["format"], data["backend"], data["opset"]) == ("onnx", "jax", 18)
    assert data["default_endpoint"] == "predict"  # the first added
    assert list(data["endpoints"]) == ["predict", "serve"]  # order kept, keys sorted
    assert data["endpoints"]["serve"] == {
        "file": "serve.onnx",
        "inputs": [{"dtype": "float32", "name": "a", "shape": [None, 4]},
                   {"dtype": "float32", "name": "b", "shape": [None, 4]}],
        "outputs": [{"dtype": "float32", "name": "y", "shape": [None, 2]}]}
    assert "source_backend" not in data and "route" not in data
    again = Manifest.from_json(m.dumps())
    assert again == m
    assert json.loads(m.dumps(indent=None)) == data
    noted = again.with_extras(operators=["ADD"])
    assert noted.to_json()["operators"] == ["ADD"] and "operators" not in m.to_json()


def test_manifest_without_newer_keys_still_loads(tmp_path):
    # written by an older version: no format, no default_endpoint, no keras_version
    old = {"producer": "kexport", "producer_version": "0.0.1", "backend": "tensorflow",
           "endpoints": {"encode": {"inputs": [], "outputs": []}, "serve": {}},
           "source_backend": "torch", "route": "rehost"}
    path = tmp_path / "kexport.json"
    path.write_text(json.dumps(old, indent=2, sort_keys=True))
    m = read_manifest(path)
    assert (m.format, m.default_endpoint, m.keras_version) == ("", "", "")
    assert (m.source_backend, m.route, m.producer_version) == ("torch", "rehost", "0.0.1")
    assert m.to_json() == old
    assert manifest_default_endpoint(old, ["encode", "serve"]) == "serve"
    assert Manifest.from_json('{"producer": "kexport"}').endpoints == {}


@pytest.mark.parametrize(("text", "message"), [
    ('{"producer": "kexport", "producer": "kexport"}', "duplicate key 'producer'"),
    ('{"producer": "kexport", "x": NaN}', "non-finite number NaN"),
    ('{"producer": "kexport", "x": Infinity}', "non-finite number Infinity"),
    ('["producer", "kexport"]', "to hold a JSON object. Received: list"),
    ('{"producer": "other"}', "producer 'kexport'. Received: producer='other'"),
    ('{"endpoints": {}}', "producer 'kexport'. Received: producer=None"),
    ('{"producer": "kexport", "endpoints": []}', "`endpoints` to be an object"),
    ('{"producer": "kexport", "endpoints": {"serve": 3}}', "`endpoints` to be an object"),
    ('{"producer": "kexport", "format": 3}', "`format` to be a string. Received: format=3"),
    ('{"producer": "kexport", "default_endpoint": ["a"]}', "`default_endpoint` to be a string"),
    ('{"producer": "kexport"', "valid strict JSON"),
    ("\udcff", "valid strict JSON"),
])
def test_manifest_parsed_strictly(tmp_path, text, message):
    path = tmp_path / "kexport.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(kexport.ArtifactError, match=re.escape(message)):
        read_manifest(path)
    with pytest.raises(kexport.ArtifactError, match=re.escape(message)):
        Manifest.from_json(path.read_bytes())


def test_manifest_file_missing_or_too_large(tmp_path):
    with pytest.raises(kexport.ArtifactError, match="Could not read the kexport manifest"):
        read_manifest(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(kexport.ArtifactError, match=r"under 16777216 bytes\. Received 16777217"):
        read_manifest(big)


def test_strict_json_names_the_document():
    with pytest.raises(kexport.ArtifactError,
                       match=r"Expected config\.json to be valid strict JSON"):
        artifact.strict_json("{", what="config.json")
    assert artifact.strict_json(b'{"a": 1}', what="x") == {"a": 1}


# -- the default-endpoint rule -------------------------------------------------------------
@pytest.mark.parametrize(("names", "recorded", "ordered", "expected"), [
    (["logits", SERVING_DEFAULT], None, True, SERVING_DEFAULT),  # serving_default present
    (["logits", "serve"], None, True, "logits"),  # order known: first added
    (["encode", "serve"], None, False, "serve"),  # order lost (sorted keys): serve
    (["encode", "predict"], None, False, "encode"),  # then the first
    (["encode", "predict"], "predict", False, "predict"),  # the recorded default
    (["encode", SERVING_DEFAULT], "encode", True, "encode"),  # recorded beats serving_default
    (["encode"], "gone", True, "encode"),  # a record naming no endpoint is ignored
    (["encode"], 3, True, "encode"),
    ([], None, True, ""),
])
def test_default_endpoint_rule(names, recorded, ordered, expected):
    assert default_endpoint(names, recorded, ordered=ordered) == expected


def test_manifest_default_endpoint_follows_the_manifest_order():
    found = ["a", "b", "serve"]
    assert manifest_default_endpoint({"endpoints": {"b": {}, "a": {}}}, ["a", "b"]) == "b"
    assert manifest_default_endpoint({"endpoints": {"b": {}, "a": {}}}, found) == "serve"
    assert manifest_default_endpoint({"default": "a", "endpoints": ["b", "a"]}, found) == "a"
    assert manifest_default_endpoint({"endpoints": [{"name": "b"}]}, ["a", "b"]) == "b"
    assert manifest_default_endpoint({}, []) == DEFAULT_ENDPOINT
    assert artifact.endpoint_order({"endpoints": {"b": {}, "gone": {}}}, ["a", "b"]) == ["b", "a"]


# -- descriptors and artifact_files --------------------------------------------------------
def test_descriptors_hold_the_artifact_facts():
    assert list(FORMATS) == ["tf_saved_model", "litert", "torch", "openvino", "onnx"]
    assert {n: f.suffix for n, f in FORMATS.items()} == {
        "tf_saved_model": "", "litert": ".tflite", "torch": ".pt2", "openvino": ".xml",
        "onnx": ".onnx"}
    assert all(f.name == n for n, f in FORMATS.items())
    assert FORMATS["tf_saved_model"].recognizer is None
    assert FORMATS["onnx"].recognizer is artifact.is_onnx_artifact
    assert artifact.BACKENDS == ("tensorflow", "jax", "torch")
    assert routing.format_info("onnx") is FORMATS["onnx"]
    with pytest.raises(kexport.UnsupportedRouteError, match="Did you mean 'onnx'"):
        routing.format_info("onx")


def test_quantized_litert_declares_no_tolerance_of_its_own():
    # a quantized artifact is judged by its mode's thresholds in the one table
    # (kexport.check.tolerance.QUANTIZED), never by a format's own atol/rtol
    from kexport.check.tolerance import QUANTIZED, quantization_mode
    from kexport.verify import declared_tolerances

    assert artifact.LITERT_QUANTIZATIONS == (None, "float16", "dynamic_int8", "int8")
    assert all(m in QUANTIZED for m in artifact.LITERT_QUANTIZATIONS if m is not None)
    assert FORMATS["litert"].tolerance is None and FORMATS["onnx"].tolerance is None
    assert declared_tolerances("litert", {"quantization": "int8"}) is None
    assert declared_tolerances("nope", {}) is None
    assert quantization_mode({"quantization": "int8"}) == "int8"
    assert quantization_mode({"kexport.quantization": "float16"}) == "float16"
    assert quantization_mode({"quantization": None}) is None
    assert quantization_mode({"quantization": ["int8"]}) is None
    assert quantization_mode({"quantization": "int4"}) is None


def test_artifact_files_single_files_and_folders(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"g")
    assert artifact.artifact_files(onnx, "onnx") == [onnx]
    (tmp_path / "m.onnx.data").write_bytes(b"w")
    (tmp_path / "m.bin").write_bytes(b"w")  # not an ONNX sidecar
    assert artifact.artifact_files(onnx, "onnx") == [onnx, tmp_path / "m.onnx.data"]
    assert artifact.artifact_files(onnx) == [onnx]  # format unknown: no sidecars
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    assert artifact.artifact_files(xml, "openvino") == [xml, tmp_path / "m.bin"]
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("b")
    (folder / "sub" / "a.txt").write_text("a")
    assert artifact.artifact_files(folder, "onnx") == [folder / "b.txt", folder / "sub" / "a.txt"]
    assert artifact.artifact_files(tmp_path / "missing", "onnx") == []


# -- recognisers ----------------------------------------------------------------------------
def _manifest_text(fmt, **extra):
    return json.dumps(dict({"producer": "kexport", "format": fmt, "endpoints": {"serve": {}}},
                           **extra))


def test_onnx_recogniser_reads_the_producer(tmp_path):
    ours = tmp_path / "m.onnx"
    ours.write_bytes(b"\x08\x08\x12\x07kexport\x1a\x03x.y")
    other = tmp_path / "o.onnx"
    other.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x03x.y")
    truncated = tmp_path / "t.onnx"
    truncated.write_bytes(b"\x08\xff")
    assert artifact.is_onnx_artifact(ours)
    assert not artifact.is_onnx_artifact(other) and not artifact.is_onnx_artifact(truncated)
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "serve.onnx").write_bytes(ours.read_bytes())
    assert artifact.is_onnx_artifact(folder)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(b"\0" * 8)
    assert artifact.is_kexport_artifact(data)  # the sidecar of a kexport graph
    (tmp_path / "o.onnx.data").write_bytes(b"\0")
    assert not artifact.is_kexport_artifact(tmp_path / "o.onnx.data")


def test_litert_recogniser_needs_magic_and_metadata(tmp_path):
    body = b'{"producer": "kexport"} kexport.json'
    ours = tmp_path / "m.tflite"
    ours.write_bytes(b"\x1c\0\0\0TFL3" + body)
    no_magic = tmp_path / "n.tflite"
    no_magic.write_bytes(b"\x1c\0\0\0XXXX" + body)
    no_meta = tmp_path / "x.tflite"
    no_meta.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 64)
    assert artifact.is_litert_artifact(ours) and artifact.is_kexport_artifact(ours)
    assert not artifact.is_litert_artifact(no_magic)
    assert not artifact.is_litert_artifact(no_meta)
    assert not artifact.is_litert_artifact(tmp_path)


def test_torch_program_recogniser_and_metadata(tmp_path):
    pt2 = tmp_path / "m.pt2"
    with zipfile.ZipFile(pt2, "w") as z:
        z.writestr("m/extra/kexport.json", _manifest_text("torch"))
    assert artifact.read_torch_program_metadata(pt2)["format"] == "torch"
    assert artifact.is_torch_program_artifact(pt2) and artifact.is_kexport_artifact(pt2)
    other = tmp_path / "o.pt2"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("m/extra/kexport.json", _manifest_text("onnx"))
    assert not artifact.is_torch_program_artifact(other)
    junk = tmp_path / "j.pt2"
    junk.write_bytes(b"not a zip")
    assert artifact.read_torch_program_metadata(junk) is None
    assert not artifact.is_kexport_artifact(junk)
    folder = tmp_path / "programs"
    folder.mkdir()
    (folder / "kexport.json").write_text(_manifest_text("torch"))
    assert artifact.is_torch_program_artifact(folder)


def test_openvino_recogniser_metadata_and_weights_check(tmp_path):
    weights = b"\1\2\3\4"
    digest = hashlib.sha256(weights).hexdigest()
    xml = tmp_path / "m.xml"
    meta = _manifest_text("openvino", weights_sha256=digest)
    xml.write_text(f'<net><rt_info><kexport_manifest value="{html.escape(meta)}"/>'
                   "</rt_info></net>")
    (tmp_path / "m.bin").write_bytes(weights)
    assert artifact.read_openvino_metadata(xml)["weights_sha256"] == digest
    assert artifact.is_openvino_artifact(xml) and artifact.is_openvino_artifact(tmp_path / "m.bin")
    assert artifact.is_kexport_artifact(tmp_path / "m.bin")
    assert artifact.file_sha256(tmp_path / "m.bin") == digest
    artifact.check_openvino_weights(xml)  # the pair matches
    (tmp_path / "m.bin").write_bytes(b"other")
    with pytest.raises(kexport.ArtifactError, match=r"interrupted between writing the \.bin"):
        artifact.check_openvino_weights(xml)
    (tmp_path / "m.bin").unlink()
    with pytest.raises(kexport.ArtifactError, match=r"Received: sha256 missing"):
        artifact.check_openvino_weights(xml)
    plain = tmp_path / "p.xml"
    plain.write_text("<net/>")
    assert artifact.read_openvino_metadata(plain) is None
    assert not artifact.is_openvino_artifact(plain)


def test_kexport_artifact_folders_by_manifest(tmp_path):
    for rel in artifact.MANIFESTS:
        folder = tmp_path / rel.replace("/", "_")
        (folder / rel).parent.mkdir(parents=True)
        (folder / rel).write_text('{"producer": "kexport"}')
        assert artifact.has_manifest(folder) and artifact.is_kexport_artifact(folder)
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "kexport.json").write_text('{"producer": "kexport", "producer": "evil"}')
    assert not artifact.is_kexport_artifact(forged)
    assert not artifact.is_kexport_artifact(tmp_path / "missing")


def test_quantization_table_in_the_docs_matches_the_formats():
    """docs/quantization.md's table says, per format and mode, what the
    descriptors declare: "yes" or the typed error."""
    import pathlib

    from kexport.artifact.quantization import MODES, supported_modes

    text = (pathlib.Path(__file__).parents[1] / "docs" / "quantization.md").read_text()
    table = text.split("<!-- quantization table")[1].split("<!-- end quantization table")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines()[1:] if line.startswith("|")]
    assert rows[0] == ["format", *MODES]
    documented = {r[0]: dict(zip(MODES, r[1:], strict=True)) for r in rows[2:]}
    assert set(documented) == set(artifact.FORMATS)
    for name, cells in documented.items():
        for mode in MODES:
            expected = "yes" if mode in supported_modes(name) else "QuantizationError"
            assert cells[mode] == expected, (name, mode)


def test_quantization_modes_are_checked_once_for_every_format():
    from kexport.artifact.quantization import check_quantization, read_record
    from kexport.errors import QuantizationError

    assert check_quantization("onnx", None) is None
    assert check_quantization("onnx", "int8", calibration_data=[1]) == "int8"
    assert check_quantization("litert", "float16") == "float16"
    with pytest.raises(QuantizationError, match=r"Received: 8 \(of type int\)"):
        check_quantization("onnx", 8)
    with pytest.raises(QuantizationError, match=r"format='tf_saved_model' can write: none .*"
                       r"Formats that write quantization='float16': \['litert', 'openvino', "
                       r"'onnx'\]"):
        check_quantization("tf_saved_model", "float16")
    with pytest.raises(QuantizationError, match=r"format='onnx' can write: \['float16'\]"):
        check_quantization("onnx", "int8", [1], supported=("float16",))
    with pytest.raises(QuantizationError, match=r"only used with quantization='int8'\. "
                       r"Received: quantization=None"):
        check_quantization("onnx", None, calibration_data=[1])
    assert read_record({"kexport.quantization": {"mode": "int8", "precision": "int8"}}
                       )["mode"] == "int8"
    assert read_record({"quantization": "float16"}) == {"mode": "float16",
                                                        "precision": "float16"}
    for bad in ({}, {"quantization": None}, {"quantization": "int4"},
                {"kexport.quantization": {"mode": 3}}, {"quantization": ["int8"]}):
        assert read_record(bad) is None


def test_calibration_batches_read_what_users_have():
    import numpy as np

    from kexport.check.calibration import calibration_batches, calibration_rows
    from kexport.errors import QuantizationError
    from kexport.signature import Spec

    specs = [Spec((None, 4), "float32"), Spec((None,), "int32")]
    names = ["x", "ids"]
    x, ids = np.ones((3, 4), "float64"), np.arange(3)
    one = calibration_batches({"x": x, "ids": ids}, specs, names)
    assert len(one) == 1 and one[0]["x"].dtype == np.float32 and calibration_rows(one) == 3
    many = calibration_batches(((x, ids) for _ in range(4)), specs, names)
    assert len(many) == 4 and calibration_rows(many) == 12
    # (x, y) elements of a dataset give their x
    pairs = calibration_batches([({"x": x, "ids": ids}, np.zeros(3))] * 2, specs, names)
    assert len(pairs) == 2
    with pytest.raises(QuantizationError, match=r"batch 2 does not: .*rank"):
        calibration_batches([(x, ids), (x[0], ids)], specs, names)
    with pytest.raises(QuantizationError, match=r"to fit the model's inputs: .*missing"):
        calibration_batches({"x": x}, specs, names)

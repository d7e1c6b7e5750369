"""No data loss by accident, untrusted files, strict manifests.

Parametrised over ``kexport.artifact.FORMATS`` so each format that lands is
covered: formats without an available route on this backend are skipped
with the reason the route table gives.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import kexport
from kexport import _atomic, artifact, routing, runtime
from kexport._keras_file import load_keras_file

BACKEND = keras.backend.backend()
FORMATS = sorted(artifact.FORMATS)


def small_model(scale: float = 1.0) -> keras.Model:
    i = keras.Input((3,), name="x")
    model = keras.Model(i, keras.layers.Dense(2, name="y")(i))
    model.set_weights([np.full((3, 2), scale, "float32"), np.zeros(2, "float32")])
    return model


def target_for(tmp_path: Path, fmt: str, name: str = "out") -> Path:
    return tmp_path / f"{name}{artifact.FORMATS[fmt].suffix}"


def route_or_skip(fmt: str, native_only: bool = False) -> routing.Route:
    candidates = routing.routes(BACKEND, fmt)
    if not candidates:
        pytest.skip(f"no route from {BACKEND} to {fmt} is registered")
    for route in candidates:
        if route.available and (route.kind == "native" or not native_only):
            return route
    pytest.skip(f"{BACKEND} -> {fmt}: " + "; ".join(
        r.reason or f"{r.kind} route (covered in the run of its host backend)"
        for r in candidates))


# -- 2. no data loss by accident ---------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_refuses_to_replace_other_data(tmp_path, fmt):
    route_or_skip(fmt)
    model = small_model()
    folder = target_for(tmp_path, fmt, "folder")
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    file = target_for(tmp_path, fmt, "file")
    file.write_bytes(b"precious bytes, not an artifact")
    for path, kind in ((folder, "a folder of other files"),
                       (file, "a file that is not a kexport artifact")):
        with pytest.raises(kexport.TargetExistsError,
                           match=rf"which is {kind}\. Nothing was written\. .*overwrite=True"):
            kexport.export_model(model, str(path), format=fmt, verbose=False)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    assert file.read_bytes() == b"precious bytes, not an artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, file.name])


@pytest.mark.parametrize("fmt", FORMATS)
def test_overwrite_true_and_artifact_replacement(tmp_path, fmt):
    """overwrite=True replaces other data; a kexport artifact is replaced without it."""
    route_or_skip(fmt, native_only=True)
    path = target_for(tmp_path, fmt)
    if artifact.FORMATS[fmt].suffix:
        path.write_bytes(b"junk")
    else:
        path.mkdir()
        (path / "junk.txt").write_text("junk")
    kexport.export_model(small_model(1.0), str(path), format=fmt, verbose=False, overwrite=True)
    assert artifact.is_kexport_artifact(path)
    model = small_model(3.0)
    kexport.export_model(model, str(path), format=fmt, verbose=False)  # no overwrite needed
    assert not (path / "junk.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if ".kexport-" in p.name) == []
    if fmt not in runtime.RUNTIMES:
        pytest.skip(f"{fmt}: replaced and recognised; no runtime in kexport.load yet to verify")
    x = np.ones((2, 3), "float32")
    report = kexport.verify(model, str(path), [x], store=False)  # runs in a fresh process
    assert report.ok  # the new weights (scale 3) are in place


@pytest.mark.backends("tensorflow")  # backend-independent; the torch archive re-hosts (slow)
def test_archive_write_out_refuses_other_data(tmp_path):
    archive = kexport.ExportArchive()
    model = small_model()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [keras.InputSpec(shape=(None, 3))])
    path = tmp_path / "notes"
    path.write_text("keep me")
    with pytest.raises(kexport.TargetExistsError, match="a file that is not a kexport artifact"):
        archive.write_out(str(path), verbose=False)
    assert path.read_text() == "keep me"
    with pytest.raises(kexport.SignatureError, match="Expected `overwrite` to be True or False"):
        archive.write_out(str(path), verbose=False, overwrite="yes")
    archive.write_out(str(path), verbose=False, overwrite=True)
    assert artifact.is_kexport_artifact(path)


# -- 2b. missing parent folders are created, and removed again on failure ---------------
SRC = str(Path(kexport.__file__).resolve().parents[1])
X = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)


def reload_and_run(fresh_process, fmt: str, path: Path) -> np.ndarray:
    """Run ``path`` on ``X`` in a fresh process with the format's own runtime."""
    if fmt == "tf_saved_model":
        return np.asarray(fresh_process("saved_model_call", str(path), "serve", [X]))
    if fmt == "onnx":
        return fresh_process("fresh_onnx:inspect_and_run", str(path), [{"x": X}])["results"][0][0]
    if fmt == "litert":
        (res,) = fresh_process("fresh_formats:litert_run", [(str(path), "serve", [{"x": X}])])
        return res["outputs"][0]["y"]
    if fmt == "openvino":
        (res,) = fresh_process("fresh_formats:openvino_run", [(str(path), [{"x": X}])])
        return res["outputs"][0]["y"]
    if fmt == "torch":
        (res,) = fresh_process("fresh_formats:torch_run", [(str(path), [[X]])])
        return res["outputs"][0][0]
    raise AssertionError(f"no fresh-process reload for {fmt}; add one here")


# (case id, format, export options): every format, ONNX also with external weights
# (written through staging_dir).
PARENT_CASES = [(fmt, fmt, {}) for fmt in FORMATS] + [
    ("onnx-external-data", "onnx", {"external_data_threshold": 0})]


@pytest.mark.parametrize(("case", "fmt", "options"), PARENT_CASES,
                         ids=[c[0] for c in PARENT_CASES])
def test_missing_parent_folders_created_and_removed_on_failure(tmp_path, fresh_process,
                                                              monkeypatch, case, fmt, options):
    """As keras.Model.export: missing parents are made (every level). A failed export
    removes the folders it made, not the ones that were there; the next one succeeds."""
    route_or_skip(fmt, native_only=True)
    model = small_model(2.0)
    keep = tmp_path / "keep"
    keep.mkdir()
    path = target_for(keep / "a" / "b", fmt, "model")

    real_swap = _atomic._swap_in

    def failing_swap(tmp, target, old):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic, "_swap_in", failing_swap)  # fails after the writer ran
    with pytest.raises(kexport.WriteError, match="No space left on device"):
        kexport.export_model(model, str(path), format=fmt, verbose=False, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert list(keep.iterdir()) == [], "the failed export left folders it created"

    monkeypatch.setattr(_atomic, "_swap_in", real_swap)
    kexport.export_model(model, str(path), format=fmt, verbose=False, **options)
    assert artifact.is_kexport_artifact(path)
    assert sorted(p.name for p in path.parent.iterdir() if ".kexport-" in p.name) == []
    if options.get("external_data_threshold") == 0:
        assert (path.parent / f"{path.name}.data").is_file()
    np.testing.assert_allclose(reload_and_run(fresh_process, fmt, path),
                               keras.ops.convert_to_numpy(model(X)), atol=1e-5)


@pytest.mark.backends("tensorflow", "jax")  # the torch archive re-hosts (slow)
def test_archive_write_out_creates_missing_folders(tmp_path, fresh_process):
    archive = kexport.ExportArchive()
    model = small_model(3.0)
    archive.track(model)
    archive.add_endpoint("serve", model.call, [keras.InputSpec(shape=(None, 3))])
    path = tmp_path / "new" / "deeper" / "archive"
    archive.write_out(str(path), verbose=False)
    assert artifact.is_kexport_artifact(path)
    np.testing.assert_allclose(reload_and_run(fresh_process, "tf_saved_model", path),
                               keras.ops.convert_to_numpy(model(X)), atol=1e-5)


@pytest.mark.backends("tensorflow")  # the check runs before any backend-specific work
def test_parent_that_is_a_file_is_a_typed_error(tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("keep me")
    archive = kexport.ExportArchive()
    model = small_model()
    archive.track(model)
    archive.add_endpoint("serve", model.call, [keras.InputSpec(shape=(None, 3))])
    for path in (notes / "model", notes / "a" / "b" / "model.onnx"):
        message = (rf"Expected every path component above the artifact to be a folder\. "
                   rf"Received: filepath='{re.escape(str(path))}' where "
                   rf"'{re.escape(str(notes))}' is a file, not a folder\. Nothing was written\.")
        fmt = "onnx" if path.suffix == ".onnx" else "tf_saved_model"
        with pytest.raises(kexport.WriteError, match=message):
            kexport.export_model(model, str(path), format=fmt, verbose=False)
        with pytest.raises(kexport.WriteError, match=message):
            archive.write_out(str(path), verbose=False, format=fmt)
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.backends("tensorflow")
def test_readme_first_example_runs_as_written(tmp_path):
    """The README's first example, verbatim, in a fresh empty folder (``out/`` missing)."""
    import subprocess
    import sys
    import textwrap

    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'kexport.export_model(model, "out/model")' in example
    setup = textwrap.dedent("""
        import keras, numpy as np
        i = keras.Input((3,), name="x")
        model = keras.Model(i, keras.layers.Dense(2, name="y")(i))
        input_data = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)
        np.save("expected.npy", keras.ops.convert_to_numpy(model(input_data)))
    """)
    check = '\nnp.save("predictions.npy", np.asarray(predictions))\n'
    work = tmp_path / "empty"
    work.mkdir()
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", setup + example + check], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "out" / "model" / "saved_model.pb").is_file()
    np.testing.assert_allclose(np.load(work / "predictions.npy"), np.load(work / "expected.npy"),
                               atol=1e-6)


@pytest.mark.backends("tensorflow")
def test_is_kexport_artifact_recognisers(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _atomic.check_target(empty)  # an empty folder holds nothing to lose
    onnx_like = tmp_path / "m.onnx"
    onnx_like.write_bytes(b"\x08\x08\x12\x07kexport\x1a\x03x.y")
    other_onnx = tmp_path / "o.onnx"
    other_onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x03x.y")
    data = tmp_path / "m.onnx.data"
    data.write_bytes(b"\0" * 64)
    sm = tmp_path / "sm"
    (sm / "assets.extra").mkdir(parents=True)
    (sm / "assets.extra" / "kexport.json").write_text('{"producer": "kexport"}')
    forged = tmp_path / "forged"
    (forged / "assets.extra").mkdir(parents=True)
    (forged / "assets.extra" / "kexport.json").write_text(
        '{"producer": "kexport", "producer": "evil"}')
    assert artifact.is_kexport_artifact(onnx_like)
    assert artifact.is_kexport_artifact(data)  # external weights beside a kexport graph
    assert artifact.is_kexport_artifact(sm)
    assert not artifact.is_kexport_artifact(other_onnx)
    assert not artifact.is_kexport_artifact(forged)
    assert not artifact.is_kexport_artifact(tmp_path / "missing")
    with pytest.raises(kexport.TargetExistsError, match="a folder of other files"):
        _atomic.check_target(forged)

    def recognise(p):
        return p.suffix == ".custom"

    custom = tmp_path / "a.custom"
    custom.write_text("x")
    assert not artifact.is_kexport_artifact(custom)
    artifact.register_artifact_check(recognise)
    try:
        assert artifact.is_kexport_artifact(custom)
    finally:
        artifact.recognize._CHECKS.remove(recognise)


# -- 4. untrusted files ---------------------------------------------------------------------
# (manifests are parsed strictly: tests/test_artifact.py)
def _lambda_model() -> keras.Model:
    i = keras.Input((3,), name="x")
    return keras.Model(i, keras.layers.Lambda(lambda t: t * 2.0)(i))


@pytest.mark.backends("tensorflow")
def test_keras_files_load_in_safe_mode(tmp_path, monkeypatch):
    unsafe = tmp_path / "lambda.keras"
    _lambda_model().save(unsafe)
    with pytest.raises(kexport.ArtifactError,
                       match=r"Refused to load 'lambda\.keras' in safe mode.*safe_mode=False"):
        load_keras_file(unsafe)
    model = load_keras_file(unsafe, safe_mode=False)  # the user's explicit opt-in
    np.testing.assert_allclose(np.asarray(model(np.ones((1, 3), "float32"))), 2.0)

    # Nothing is unpickled or unmarshalled while loading a normal model.
    import marshal
    import pickle

    safe = tmp_path / "safe.keras"
    small_model(2.0).save(safe)

    def forbidden(*args, **kwargs):
        raise AssertionError("kexport must not unpickle untrusted files")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (marshal, "loads"), (marshal, "load")):
        monkeypatch.setattr(module, name, forbidden)
    loaded = load_keras_file(safe)
    np.testing.assert_allclose(np.asarray(loaded(np.ones((1, 3), "float32"))), 6.0)


def test_no_unpickling_anywhere_in_kexport():
    """Static guard: no module of kexport deserialises code-carrying formats."""
    src = Path(kexport.__file__).parent
    banned = re.compile(r"pickle\.loads?\(|Unpickler\(|marshal\.loads?\(|allow_pickle\s*=\s*True"
                        r"|yaml\.load\(|dill\.|cloudpickle\.|torch\.load\((?![^)]*weights_only=True)")
    hits = [(p.relative_to(src).as_posix(), line.strip())
            for p in sorted(src.rglob("*.py"))
            for line in p.read_text().splitlines() if banned.search(line)]
    # The one exception: a re-host worker reads back the model that kexport itself
    # pickled in the parent process, from the job's private (0700) folder
    # (kexport.rehost.recipe); the other lines there only write pickles.
    own = "rehost/recipe.py"
    assert [h for h in hits if h[0] != own] == []
    assert [line for path, line in hits if re.search(r"loads?\(|Unpickler", line)] == [
        "return pickle.loads(blob)"]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def keras_file_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    """Bad .keras inputs and the message each must give (shared with the catalogue)."""
    good = tmp_path / "good.keras"
    small_model().save(good)
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 4)
    corrupt = tmp_path / "corrupt.keras"
    data = bytearray(raw)
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    data[start:start + 16] = bytes(16)  # flip bytes inside a member: checksum fails
    corrupt.write_bytes(bytes(data))
    config = json.dumps({"class_name": "Functional", "config": {}})
    return [
        (truncated, "is not a zip archive (corrupted, truncated"),
        (garbage, "is not a zip archive"),
        (corrupt, "is corrupted: member 'model.weights.h5' fails its checksum"),
        (_zip(tmp_path / "escape.keras", {"config.json": config, "../../evil.py": b"x"}),
         "member '../../evil.py' would escape the archive"),
        (_zip(tmp_path / "absolute.keras", {"config.json": config, "/etc/x": b"x"}),
         "member '/etc/x' would escape the archive"),
        (_zip(tmp_path / "noconfig.keras", {"model.weights.h5": b""}),
         "without ['config.json']"),
        (_zip(tmp_path / "dupkeys.keras", {"config.json": '{"a": 1, "a": 2}'}),
         "duplicate key 'a'"),
        (_zip(tmp_path / "nan.keras", {"config.json": '{"a": NaN}'}), "non-finite number NaN"),
        (_zip(tmp_path / "badcfg.keras", {"config.json": '{"class_name": "Nope"}'}),
         "Could not load the .keras file 'badcfg.keras'"),
        (tmp_path / "missing.keras", "Expected an existing .keras file"),
        (tmp_path, "Expected an existing .keras file"),
        (_zip(tmp_path / "legacy.h5", {"x": b""}), "Legacy .h5 files can carry marshalled"),
    ]


@pytest.mark.backends("tensorflow")
def test_bad_keras_files_give_typed_errors(tmp_path):
    for path, message in keras_file_cases(tmp_path):
        with pytest.raises(kexport.ArtifactError, match=re.escape(message)):
            load_keras_file(path)

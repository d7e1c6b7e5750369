"""Several exports at once: threads and processes, different paths and one path.

All exports to different paths succeed and their artifacts compute what
their models compute (reloaded in a fresh process); two exports to the same
path both succeed and leave exactly one complete artifact, equal to one of
them, and no temporaries.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest

import kexport

BACKEND = keras.backend.backend()
X = np.linspace(-1, 1, 6, dtype="float32").reshape(2, 3)


def scaled_model(scale: float) -> keras.Model:
    i = keras.Input((3,), name="x")
    model = keras.Model(i, keras.layers.Dense(2, name="y")(i))
    model.set_weights([np.full((3, 2), scale, "float32"), np.full(2, scale, "float32")])
    return model


def expected(scale: float) -> np.ndarray:
    return X @ np.full((3, 2), scale, "float32") + scale


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".kexport-" in p.name)


def which_scale(fresh_process, path: str, scales: list[float]) -> float:
    out = np.asarray(fresh_process("saved_model_call", path, "serve", [X]))
    matches = [s for s in scales if np.allclose(out, expected(s), atol=1e-5)]
    assert len(matches) == 1, f"artifact at {path} matches none of {scales}: {out}"
    return matches[0]


@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.parametrize("where", ["existing", "new/sub"], ids=["existing-folder", "new-folder"])
def test_threads_different_paths_and_same_path(tmp_path, fresh_process, where):
    """Threads export to their own path and to one shared path; in a folder that
    exists, or in one that they all create at once."""
    scales = [1.0, 2.0, 3.0]
    folder = tmp_path if where == "existing" else tmp_path / where
    models = [scaled_model(s) for s in scales]  # built here: Keras layer creation is not
    barrier = threading.Barrier(len(scales) * 2)  # meant to race; exports are

    def job(i: int, same: bool) -> None:
        barrier.wait(60)
        path = folder / ("shared" if same else f"own{i}")
        kexport.export_model(models[i], str(path), verbose=False)

    with ThreadPoolExecutor(len(scales) * 2) as pool:
        futures = [pool.submit(job, i, same) for i in range(len(scales)) for same in (False, True)]
        for f in futures:
            f.result(timeout=600)  # every export succeeds
    for i, s in enumerate(scales):
        assert which_scale(fresh_process, str(folder / f"own{i}"), scales) == s
    assert which_scale(fresh_process, str(folder / "shared"), scales) in scales
    assert leftovers(folder) == []


def _process_job(src: str, backend: str, out_dir: str, scale: float) -> str:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, src)
    sys.path.insert(0, os.path.dirname(__file__))
    import kexport as kx

    model = scaled_model(scale)
    kx.export_model(model, os.path.join(out_dir, f"own{scale}"), verbose=False)
    kx.export_model(model, os.path.join(out_dir, "shared"), verbose=False)
    return "ok"


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("where", ["existing", "new/sub"], ids=["existing-folder", "new-folder"])
def test_processes_different_paths_and_same_path(tmp_path, fresh_process, where):
    """Processes export to their own path and to one shared path; in a folder
    that exists, or in one that none of them has created yet."""
    scales = [1.0, 2.0]
    folder = tmp_path if where == "existing" else tmp_path / where
    src = str(Path(kexport.__file__).resolve().parents[1])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(scales), mp_context=ctx) as pool:
        futures = [pool.submit(_process_job, src, BACKEND, str(folder), s) for s in scales]
        assert [f.result(timeout=600) for f in futures] == ["ok"] * len(scales)
    for s in scales:
        assert which_scale(fresh_process, str(folder / f"own{s}"), scales) == s
    assert which_scale(fresh_process, str(folder / "shared"), scales) in scales
    assert leftovers(folder) == []


# -- exports into one folder that does not exist yet ------------------------------------
@pytest.mark.backends("tensorflow")  # atomic_target only: backend-independent
@pytest.mark.parametrize("is_dir", [True, False], ids=["folder", "file"])
def test_failed_write_spares_a_new_folder_another_write_uses(tmp_path, is_dir):
    """Write A creates the folder, write B starts in it, A fails: A's clean-up must
    not remove the folder B is writing into (only empty folders are removed)."""
    from kexport import _atomic

    folder = tmp_path / "new" / "sub"
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write_a() -> None:
        try:
            with _atomic.atomic_target(folder / "a", is_dir=True, overwrite=True):
                a_in.set()
                assert b_in.wait(30)
                raise RuntimeError("A fails")
        except kexport.WriteError:
            pass
        finally:
            a_done.set()

    def write_b() -> None:
        try:
            assert a_in.wait(30)
            with _atomic.atomic_target(folder / ("b" if is_dir else "b.onnx"),
                                       is_dir=is_dir, overwrite=True) as tmp:
                b_in.set()
                assert a_done.wait(30)  # the writer runs on after A cleaned up
                if is_dir:
                    (tmp / "kexport.json").write_text('{"producer": "kexport"}')
                else:
                    tmp.write_bytes(b"b")
        except BaseException as e:  # reported below
            errors.append(e)
            b_in.set()

    threads = [threading.Thread(target=write_a), threading.Thread(target=write_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(p.name for p in folder.iterdir()) == ["b" if is_dir else "b.onnx"]


@pytest.mark.backends("tensorflow")
def test_folder_removed_before_the_first_entry_is_made_again(tmp_path, monkeypatch):
    """The window between making the folders and the write's first entry in them: a
    concurrent failed write removes them there; the write makes them again."""
    from kexport import _atomic

    real = _atomic._writable_target
    calls: list[list[Path]] = []

    def racing(filepath):
        target, parent, created = real(filepath)
        calls.append(created)
        if len(calls) == 1:  # as if another write had made them and now removed them
            for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
                os.rmdir(folder)
            created = []
        return target, parent, created

    monkeypatch.setattr(_atomic, "_writable_target", racing)
    for name, is_dir in (("m", True), ("m.onnx", False)):
        calls.clear()
        target = tmp_path / f"new-{is_dir}" / "sub" / name
        with _atomic.atomic_target(target, is_dir=is_dir, overwrite=True) as tmp:
            if is_dir:
                (tmp / "kexport.json").write_text('{"producer": "kexport"}')
            else:
                tmp.write_bytes(b"graph")
        assert target.exists() and len(calls) == 2
        assert leftovers(target.parent) == []
    calls.clear()
    with pytest.raises(RuntimeError), _atomic.staging_dir(tmp_path / "staged" / "m.onnx"):
        raise RuntimeError("fails after the retry: the folders it made are removed")
    assert len(calls) == 2 and not (tmp_path / "staged").exists()


@pytest.mark.backends("tensorflow")  # _atomic only: backend-independent
def test_folder_made_by_another_write_during_the_check_is_no_file(tmp_path, monkeypatch):
    """Another write creates the missing folder between the check's "is it a
    folder?" and "does something exist there?": that is a folder, not a file."""
    from kexport import _atomic

    folder = tmp_path / "new"
    real = os.path.lexists

    def lexists_after_a_concurrent_mkdir(path):
        if Path(path) == folder and not real(folder):
            os.mkdir(folder)  # the other write wins the race here
        return real(path)

    monkeypatch.setattr(_atomic.os.path, "lexists", lexists_after_a_concurrent_mkdir)
    _atomic.check_parent(folder / "model")
    with _atomic.atomic_target(folder / "file.txt", is_dir=False, overwrite=True) as tmp:
        Path(tmp).write_text("ok")
    assert (folder / "file.txt").read_text() == "ok"


def _attention_model(seed: int) -> keras.Model:
    """Attention (Einsum: the tf2onnx optimizer's workaround) and a grouped
    convolution (Keras compiles it with XLA: the inlining workaround)."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((6, 8), name="tokens")
    h = keras.layers.MultiHeadAttention(2, 4, name="attention")(tokens, tokens)
    h = keras.layers.Conv1D(4, 3, groups=2, padding="same", name="grouped")(h)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(h))


def _tf2onnx_patched_attributes() -> dict[str, tuple[object, str]]:
    import tf2onnx.graph
    from keras.src.backend.tensorflow import nn
    from tf2onnx.optimizer import einsum_optimizer

    return {"tf2onnx.graph.np": (tf2onnx.graph, "np"),
            "einsum_optimizer.optimize_einsum": (einsum_optimizer, "optimize_einsum"),
            "keras nn.tf": (nn, "tf")}


@pytest.mark.backends("tensorflow")
def test_two_tf2onnx_exports_in_threads_both_verify_and_restore_the_patches(
        tmp_path, monkeypatch):
    """Two TensorFlow -> ONNX exports convert at the same time, and the first to
    enter kexport's tf2onnx workarounds is the first to leave them (the order
    in which per-caller save/restore leaves a replacement installed for good;
    the test forces it). Each artifact verifies against its own live model in
    a fresh ONNX Runtime process, and afterwards every attribute the tf2onnx
    workarounds replace holds its shipped value."""
    import numpy
    import tf2onnx

    from kexport.formats.onnx import compat

    attributes = _tf2onnx_patched_attributes()
    shipped = {k: vars(owner)[name] for k, (owner, name) in attributes.items()}
    models = [_attention_model(seed) for seed in (1, 2)]
    first_inside, second_inside, first_out = (threading.Event() for _ in range(3))
    role = threading.local()
    replaced_inside: dict[str, set[str]] = {}
    convert = tf2onnx.convert.from_function
    after = compat.captured_inputs_to_initializers  # called once the patches are left

    def from_function(*args, **kwargs):
        (first_inside if role.name == "first" else second_inside).set()
        if role.name == "first":
            assert second_inside.wait(120)  # both inside the patches now
        replaced_inside[role.name] = {k for k, (owner, name) in attributes.items()
                                      if vars(owner)[name] is not shipped[k]}
        result = convert(*args, **kwargs)
        if role.name == "second":
            assert first_out.wait(120)  # the first has left the patches
        return result

    def left_patches(*args, **kwargs):
        after(*args, **kwargs)
        if role.name == "first":
            first_out.set()

    monkeypatch.setattr(tf2onnx.convert, "from_function", from_function)
    monkeypatch.setattr(compat, "captured_inputs_to_initializers", left_patches)
    paths = [tmp_path / f"m{i}.onnx" for i in range(2)]

    def job(i: int) -> None:
        role.name = ("first", "second")[i]
        if i == 1:
            assert first_inside.wait(120)
        kexport.export_model(models[i], str(paths[i]), format="onnx", verbose=False)

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(job, i) for i in range(2)]:
            f.result(timeout=600)
    monkeypatch.undo()
    patched = {k for k in attributes if k != "tf2onnx.graph.np" or not hasattr(numpy, "product")}
    assert replaced_inside == {"first": patched, "second": patched}
    assert {k: vars(owner)[name] for k, (owner, name) in attributes.items()} == shipped
    for model, path in zip(models, paths, strict=True):
        report = kexport.verify(model, path, store=False)
        assert report.ok, report
    assert paths[0].read_bytes() != paths[1].read_bytes()  # each holds its own weights

"""Faults during a write: SIGKILL at every point, failing disks, stale temporaries.

Guarantee under test (see docs/reliability.md): after any fault the target
holds the complete previous artifact or the complete new one, never a partial
one, and the next export removes what the dead writer left behind.

Most tests drive :func:`kexport._atomic.atomic_target` (which every format
writes through) from a small child process that imports only
``kexport._atomic``, so they cost milliseconds; a few export real SavedModels.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import kexport
from kexport import _atomic

SRC = str(Path(kexport.__file__).resolve().parents[1])

# Child: write artifact version VERSION at TARGET through atomic_target, in
# pieces; die (SIGKILL) at the fault point named by _KEXPORT_FAULT, or halfway
# through the writer's own files when MIDWRITE is set.
CHILD = textwrap.dedent("""
    import hashlib, json, os, signal, sys
    sys.path.insert(0, {src!r})
    from kexport import _atomic
    target, version, is_dir, fallback, midwrite = sys.argv[1:6]
    if fallback == "1":
        _atomic._exchange = lambda a, b: False
    payload = (version * 50000).encode()
    with _atomic.atomic_target(target, is_dir=is_dir == "1", overwrite=True) as tmp:
        if is_dir == "1":
            (tmp / "variables").mkdir()
            (tmp / "variables" / "data.bin").write_bytes(payload)
            if midwrite == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            (tmp / "kexport.json").write_text(json.dumps(
                {{"producer": "kexport", "version": version,
                  "sha": hashlib.sha256(payload).hexdigest()}}))
        else:
            with open(tmp, "wb") as f:
                f.write(b"\\x08\\x08\\x12\\x07kexport")
                f.write(payload[: len(payload) // 2])
                f.flush()
                if midwrite == "1":
                    os.kill(os.getpid(), signal.SIGKILL)
                f.write(payload[len(payload) // 2:])
""").format(src=SRC)


def run_child(target: Path, version: str, *, is_dir: bool, fault: str | None = None,
              fallback: bool = False, midwrite: bool = False) -> int:
    env = dict(os.environ)
    env.pop("_KEXPORT_FAULT", None)
    if fault:
        env["_KEXPORT_FAULT"] = fault
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(target), version, str(int(is_dir)),
         str(int(fallback)), str(int(midwrite))],
        env=env, capture_output=True, text=True, timeout=240,
    )
    return proc.returncode


def artifact_version(target: Path, is_dir: bool) -> str | None:
    """The version of the complete artifact at ``target``; fails on a partial one."""
    if not (target.exists() or target.is_symlink()):
        return None
    if is_dir:
        meta = json.loads((target / "kexport.json").read_text())
        data = (target / "variables" / "data.bin").read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha"], "partial artifact"
        assert sorted(p.name for p in target.iterdir()) == ["kexport.json", "variables"]
        return meta["version"]
    data = target.read_bytes()
    head = b"\x08\x08\x12\x07kexport"
    assert data.startswith(head)
    body = data[len(head):]
    assert len(body) == 50000 and len(set(body)) == 1, "partial artifact"
    return chr(body[0])


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".kexport-" in p.name)


# (fault point, version expected at the target right after the kill, with a previous artifact)
KILLS = [("created", "A"), ("midwrite", "A"), ("written", "A"), ("swapped", "B")]


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("is_dir", [True, False], ids=["folder", "file"])
@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "rename-aside"])
@pytest.mark.parametrize(("point", "expected"), [*KILLS, ("aside", "A")],
                         ids=[k[0] for k in KILLS] + ["aside"])
def test_sigkill_leaves_previous_or_new_artifact(tmp_path, is_dir, fallback, point, expected):
    if point == "aside" and not fallback:
        pytest.skip("the 'aside' point exists only in the rename-aside fallback swap")
    target = tmp_path / ("model" if is_dir else "model.onnx")
    assert run_child(target, "A", is_dir=is_dir) == 0
    assert artifact_version(target, is_dir) == "A"
    rc = run_child(target, "B", is_dir=is_dir, fallback=fallback,
                   fault=None if point == "midwrite" else point, midwrite=point == "midwrite")
    assert rc == -signal.SIGKILL
    seen = artifact_version(target, is_dir)
    if not (point == "created" and not is_dir):  # a file temporary is made by the writer
        assert leftovers(tmp_path), "the kill should have left a temporary behind"
    if point == "aside":
        # Between the two renames of the fallback, only the hidden copy
        # exists; recover() (run by every export) puts it back whole.
        assert seen is None
        _atomic.recover(target)
        seen = artifact_version(target, is_dir)
    assert seen == expected
    # The next export cleans up and replaces the artifact.
    assert run_child(target, "C", is_dir=is_dir, fallback=fallback) == 0
    assert artifact_version(target, is_dir) == "C"
    assert leftovers(tmp_path) == []


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("point", ["created", "midwrite", "written", "swapped"])
def test_sigkill_with_no_previous_artifact(tmp_path, point):
    target = tmp_path / "model"
    rc = run_child(target, "B", is_dir=True, fault=None if point == "midwrite" else point,
                   midwrite=point == "midwrite")
    assert rc == -signal.SIGKILL
    assert artifact_version(target, True) == ("B" if point == "swapped" else None)
    _atomic.recover(target)
    assert leftovers(tmp_path) == []


@pytest.mark.backends("tensorflow")
def test_recover_spares_live_writers(tmp_path):
    """A write in progress (other thread, other process) survives recover()."""
    target = tmp_path / "model"
    started, release = threading.Event(), threading.Event()
    seen: dict[str, Path] = {}

    def writer():
        with _atomic.atomic_target(target, is_dir=True, overwrite=True) as tmp:
            (tmp / "kexport.json").write_text('{"producer": "kexport"}')
            seen["tmp"] = tmp
            started.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    assert started.wait(30)
    _atomic.recover(target)
    assert seen["tmp"].is_dir(), "recover() removed a live thread's temporary"
    release.set()
    t.join()
    assert (target / "kexport.json").is_file() and leftovers(tmp_path) == []

    # Another live process: its temporary is kept until that process is gone.
    code = textwrap.dedent(f"""
        import sys, time; sys.path.insert(0, {SRC!r})
        from kexport import _atomic
        with _atomic.atomic_target({str(target)!r}, is_dir=True, overwrite=True) as tmp:
            print(tmp, flush=True); time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.is_dir()
        _atomic.recover(target)
        assert tmp.is_dir(), "recover() removed a live process's temporary"
    finally:
        proc.kill()
        proc.wait()
    _atomic.recover(target)
    assert not tmp.exists()
    assert (target / "kexport.json").is_file()


@pytest.mark.backends("tensorflow")
def test_writer_exception_is_typed_and_target_kept(tmp_path):
    target = tmp_path / "model"
    assert run_child(target, "A", is_dir=True) == 0

    class Boom(RuntimeError):
        pass

    with pytest.raises(kexport.WriteError, match=r"failed: Boom: disk on fire\. The target was left"), \
            _atomic.atomic_target(target, is_dir=True, overwrite=True) as tmp:
        (tmp / "partial").write_text("x")
        raise Boom("disk on fire")
    with pytest.raises(kexport.WriteError, match=r"No space left on device"), \
            _atomic.atomic_target(target, is_dir=True, overwrite=True) as tmp:
        (tmp / "partial").write_text("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(kexport.WriteError, match="The writer produced nothing"), \
            _atomic.atomic_target(tmp_path / "f.onnx", is_dir=False, overwrite=True):
        pass
    assert artifact_version(target, True) == "A"
    assert leftovers(tmp_path) == []


@pytest.mark.backends("tensorflow")
def test_failed_write_removes_only_the_folders_it_created(tmp_path):
    """Missing parents are created; on failure exactly those are removed again, and
    only while empty: folders that were there, or that someone filled, are kept."""
    keep = tmp_path / "keep"
    keep.mkdir()
    for name, is_dir in (("model", True), ("model.onnx", False)):
        with pytest.raises(kexport.WriteError, match=r"failed: RuntimeError: boom"), \
                _atomic.atomic_target(keep / "a" / "b" / name, is_dir=is_dir, overwrite=True) as tmp:
            assert (keep / "a" / "b").is_dir()
            if is_dir:
                (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
        assert list(keep.iterdir()) == []
    with pytest.raises(RuntimeError), _atomic.staging_dir(keep / "s" / "t" / "m.onnx") as stage:
        with _atomic.atomic_target(keep / "s" / "t" / "m.onnx", is_dir=False, overwrite=True) as tmp:
            tmp.write_bytes(b"graph")  # placed...
        raise RuntimeError("...but the export fails afterwards")
    assert [p.name for p in (keep / "s" / "t").iterdir()] == ["m.onnx"]  # not empty: kept
    assert not stage.exists()
    with pytest.raises(kexport.WriteError), \
            _atomic.atomic_target(keep / "c" / "d" / "model", is_dir=True, overwrite=True):
        (keep / "c" / "theirs.txt").write_text("someone else's")
        raise RuntimeError("boom")
    assert sorted(p.name for p in (keep / "c").iterdir()) == ["theirs.txt"]
    assert leftovers(keep) == [] and leftovers(keep / "c") == []


@pytest.mark.backends("tensorflow")
def test_sigkill_in_a_new_folder_then_next_export_cleans_up(tmp_path):
    """A killed write cannot remove what it made: the folder stays with the dead
    writer's temporary (a ``-hold`` marker for a file), which the next write removes."""
    for name, is_dir in (("model", True), ("model.onnx", False)):
        target = tmp_path / f"new-{name}" / "sub" / name
        assert run_child(target, "B", is_dir=is_dir, fault="created") == -signal.SIGKILL
        assert leftovers(target.parent)
        assert run_child(target, "C", is_dir=is_dir) == 0
        assert artifact_version(target, is_dir) == "C"
        assert leftovers(target.parent) == []


# -- real filesystems that fail: a tiny tmpfs and a read-only mount (root only) --------
def _mount(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.backends("tensorflow")
def test_full_disk_keeps_previous_artifact(tmp_path):
    disk = tmp_path / "disk"
    if not _mount(disk, "size=256k"):
        pytest.skip("needs root and permission to mount a tmpfs (full-disk case is also "
                    "covered by test_saved_model_write_failure_is_typed)")
    try:
        target = disk / "model"
        assert run_child(target, "A", is_dir=True) == 0  # ~50 KB: fits
        with pytest.raises(kexport.WriteError, match="No space left on device"), \
                _atomic.atomic_target(target, is_dir=True, overwrite=True) as tmp:
            (tmp / "kexport.json").write_text('{"producer": "kexport"}')
            (tmp / "big.bin").write_bytes(b"\0" * (1 << 20))
        assert artifact_version(target, True) == "A"
        assert leftovers(disk) == []
    finally:
        _umount(disk)


@pytest.mark.backends("tensorflow")
def test_read_only_folder_is_refused_before_writing(tmp_path):
    ro = tmp_path / "ro"
    if _mount(ro, "size=64k,ro"):
        cleanup = lambda: _umount(ro)  # noqa: E731
    elif os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
        cleanup = lambda: ro.chmod(0o755)  # noqa: E731
    else:
        pytest.skip("root without mount permission: no way to make a folder read-only")
    try:
        with pytest.raises(kexport.WriteError, match="in a folder that is not writable"), \
                _atomic.atomic_target(ro / "model", is_dir=True, overwrite=True):
            pytest.fail("the writer must not run")
        missing = ro / "new" / "model"  # the missing folders cannot be made there either
        message = (rf"in a folder that is not writable \('{re.escape(str(ro))}', "
                   r"where its missing folders would be created\)")
        with pytest.raises(kexport.WriteError, match=message), \
                _atomic.atomic_target(missing, is_dir=True, overwrite=True):
            pytest.fail("the writer must not run")
        assert list(ro.iterdir()) == []
    finally:
        cleanup()


# -- the same guarantees through a real SavedModel export -------------------------------
SAVED_MODEL_CHILD = textwrap.dedent("""
    import os, sys, signal
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, {src!r})
    import keras, numpy as np, tensorflow as tf, kexport
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="y")])
    model.set_weights([np.full((3, 2), 2.0, "float32"), np.zeros(2, "float32")])
    real_save = tf.saved_model.save
    def patched(obj, path, **kw):
        real_save(obj, path, **kw)                # variables and graph written...
        os.kill(os.getpid(), signal.SIGKILL)      # ...then die before the manifest
    tf.saved_model.save = patched
    kexport.export_model(model, sys.argv[1], verbose=False)
""").format(src=SRC)


@pytest.mark.backends("tensorflow")
def test_saved_model_kill_and_write_failure(tmp_path, fresh_process, monkeypatch):
    """A real SavedModel export killed mid-write, then one failing with ENOSPC:
    the previous artifact is intact and reloads; the next export cleans up."""
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="y")])
    model.set_weights([np.ones((3, 2), "float32"), np.zeros(2, "float32")])
    target = tmp_path / "sm"
    kexport.export_model(model, str(target), verbose=False)
    x = np.ones((2, 3), "float32")
    proc = subprocess.run([sys.executable, "-c", SAVED_MODEL_CHILD, str(target)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert leftovers(tmp_path), "a killed export leaves its temporary behind"
    np.testing.assert_allclose(fresh_process("saved_model_call", str(target), "serve", [x]),
                               np.full((2, 2), 3.0))  # the previous weights

    real_save = tf.saved_model.save

    def full_disk(obj, path, **kw):
        real_save(obj, path, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model.set_weights([np.full((3, 2), 4.0, "float32"), np.zeros(2, "float32")])
    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    with pytest.raises(kexport.WriteError, match="No space left on device"):
        kexport.export_model(model, str(target), verbose=False)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []  # this process's own temporary, and the dead one's
    np.testing.assert_allclose(fresh_process("saved_model_call", str(target), "serve", [x]),
                               np.full((2, 2), 3.0))

    model.set_weights([np.full((3, 2), 5.0, "float32"), np.zeros(2, "float32")])
    kexport.export_model(model, str(target), verbose=False)
    assert leftovers(tmp_path) == []
    np.testing.assert_allclose(fresh_process("saved_model_call", str(target), "serve", [x]),
                               np.full((2, 2), 15.0))


OPENVINO_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    import keras, numpy as np, kexport
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="y")])
    model.set_weights([np.full((3, 2), float(sys.argv[2]), "float32"), np.zeros(2, "float32")])
    kexport.export_openvino(model, sys.argv[1], verbose=False)
""").format(src=SRC)


@pytest.mark.backends("tensorflow")
def test_openvino_pair_killed_between_bin_and_xml(tmp_path, fresh_process):
    """SIGKILL after the new .bin is in place but before the new .xml: kexport's
    readers refuse the mixed pair (no silent wrong weights); the next export
    replaces both and runs."""
    target = tmp_path / "m.xml"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("_KEXPORT_FAULT", None)
    x = np.ones((2, 3), "float32")

    def export(scale, fault=None):
        run_env = dict(env, _KEXPORT_FAULT=fault) if fault else env
        return subprocess.run([sys.executable, "-c", OPENVINO_CHILD, str(target), str(scale)],
                              env=run_env, capture_output=True, text=True, timeout=300)

    assert export(2.0).returncode == 0
    first = kexport.load(target)
    np.testing.assert_allclose(first.run("serve", {"x": x})["y"], np.full((2, 2), 6.0))
    xml_before = target.read_bytes()
    # "swapped" fires after the first swap of the pair: the .bin
    assert export(3.0, fault="swapped").returncode == -signal.SIGKILL
    assert target.read_bytes() == xml_before  # old graph beside the new weights
    with pytest.raises(kexport.ArtifactError, match=r"interrupted between writing the .bin "
                       r"and the .xml\. Next step: export again"):
        kexport.load(target)

    assert export(4.0).returncode == 0
    assert leftovers(tmp_path) == []
    got = fresh_process("fresh_formats:openvino_run", [(str(target), [{"x": x}])])
    np.testing.assert_allclose(got[0]["outputs"][0]["y"], np.full((2, 2), 12.0))
    np.testing.assert_allclose(kexport.load(target).run("serve", {"x": x})["y"],
                               np.full((2, 2), 12.0))

"""No local paths inside artifacts: every available format, byte by byte.

The export runs from a distinctively named working folder into a
distinctively named output folder; afterwards every byte of every file of
the artifact is searched for the export's temporary folder, the working
folder, the output folder, the user's home, and where kexport, Keras and the
virtual environment live. Runs on every backend (JAX embeds StableHLO with
source locations unless told not to).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import keras
import pytest

import kexport
from kexport import _atomic, artifact, routing

BACKEND = keras.backend.backend()


def small_model() -> keras.Model:
    i = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(i)
    return keras.Model(i, keras.layers.Dense(2, name="y")(h))


def needles(tmp: Path, work: Path, temporaries: list[str]) -> dict[str, bytes]:
    found = {
        "output folder": str(tmp),
        "working folder": str(work),
        "home": os.path.expanduser("~"),
        "kexport source": str(Path(kexport.__file__).resolve().parent),
        "keras source": str(Path(keras.__file__).resolve().parent),
        "sys.prefix": sys.prefix,
        "temporary marker": ".kexport-tmp-",
    }
    for i, name in enumerate(temporaries):
        found[f"temporary folder {i}"] = name
    out = {}
    for what, text in found.items():
        if len(text) >= 4:
            out[what] = text.encode()
            out[what + " (utf-16)"] = text.encode("utf-16-le")
    return out


@pytest.mark.parametrize("fmt", sorted(artifact.FORMATS))
def test_artifact_holds_no_local_paths(tmp_path, monkeypatch, fmt):
    candidates = [r for r in routing.routes(BACKEND, fmt) if r.available]
    if not candidates:
        pytest.skip(f"no available route from {BACKEND} to {fmt}")
    if candidates[0].kind != "native":
        pytest.skip(f"{BACKEND} -> {fmt} re-hosts on another backend; covered by that run")
    work = tmp_path / "leakcheck-working-folder"
    out_dir = tmp_path / "leakcheck-output-folder"
    work.mkdir()
    out_dir.mkdir()
    monkeypatch.chdir(work)
    temporaries: list[str] = []
    real = _atomic.atomic_target

    def recording(filepath, **kwargs):
        manager = real(filepath, **kwargs)

        class Recorder:
            def __enter__(self):
                tmp = manager.__enter__()
                temporaries.append(str(tmp))
                return tmp

            def __exit__(self, *exc):
                return manager.__exit__(*exc)

        return Recorder()

    # Import every kexport module first: one imported during the export would
    # bind whichever atomic_target is current then, and escape the patch.
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(kexport.__path__, "kexport."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for module in list(sys.modules.values()):
        if getattr(module, "atomic_target", None) is real:
            monkeypatch.setattr(module, "atomic_target", recording)
    target = out_dir / f"model{artifact.FORMATS[fmt].suffix}"
    kexport.export_model(small_model(), str(target), format=fmt, verbose=True)
    assert temporaries, "the export did not write through atomic_target"
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    files += [p for p in out_dir.iterdir() if p.is_file() and p != target]  # e.g. .onnx.data
    assert files
    leaks = []
    patterns = needles(out_dir, work, temporaries)
    for f in files:
        data = f.read_bytes()
        for what, needle in patterns.items():
            if needle in data:
                at = data.find(needle)
                leaks.append(f"{f.relative_to(out_dir)}: {what}: {data[max(0, at - 40):at + 80]!r}")
    assert leaks == []
    # The artifact is usable and was really written (not an empty shell).
    assert artifact.is_kexport_artifact(target)
    assert sum(f.stat().st_size for f in files) > 100

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
def test_threads_different_paths_and_same_path(tmp_path, fresh_process):
    scales = [1.0, 2.0, 3.0]
    models = [scaled_model(s) for s in scales]  # built here: Keras layer creation is not
    barrier = threading.Barrier(len(scales) * 2)  # meant to race; exports are

    def job(i: int, same: bool) -> None:
        barrier.wait(60)
        path = tmp_path / ("shared" if same else f"own{i}")
        kexport.export_model(models[i], str(path), verbose=False)

    with ThreadPoolExecutor(len(scales) * 2) as pool:
        futures = [pool.submit(job, i, same) for i in range(len(scales)) for same in (False, True)]
        for f in futures:
            f.result(timeout=600)  # every export succeeds
    for i, s in enumerate(scales):
        assert which_scale(fresh_process, str(tmp_path / f"own{i}"), scales) == s
    assert which_scale(fresh_process, str(tmp_path / "shared"), scales) in scales
    assert leftovers(tmp_path) == []


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
def test_processes_different_paths_and_same_path(tmp_path, fresh_process):
    scales = [1.0, 2.0]
    src = str(Path(kexport.__file__).resolve().parents[1])
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(scales), mp_context=ctx) as pool:
        futures = [pool.submit(_process_job, src, BACKEND, str(tmp_path), s) for s in scales]
        assert [f.result(timeout=600) for f in futures] == ["ok"] * len(scales)
    for s in scales:
        assert which_scale(fresh_process, str(tmp_path / f"own{s}"), scales) == s
    assert which_scale(fresh_process, str(tmp_path / "shared"), scales) in scales
    assert leftovers(tmp_path) == []

"""Shared test fixtures.

The suite runs once per Keras backend (``KERAS_BACKEND``), each run in its
own process. Tests marked ``@pytest.mark.backends("jax", ...)`` run only on
those backends; unmarked tests run on every backend.

Artifacts are reloaded in a *fresh* process: a worker started with the
``spawn`` method that never imports Keras, kexport or the model code, and
uses only the format's own runtime (see ``fresh.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


#: ``KEXPORT_FULL_MATRIX=1`` also runs the ``full_matrix`` cells (see :func:`native_formats`).
FULL_MATRIX = os.environ.get("KEXPORT_FULL_MATRIX", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these Keras backends")
    config.addinivalue_line(
        "markers", "full_matrix: a cell the default run leaves to KEXPORT_FULL_MATRIX=1")
    config.addinivalue_line(
        "markers", "one_backend: kexport's own plumbing (the CLI's output, the checks' "
                   "judging), the same on every backend: the TensorFlow run tests it, "
                   "KEXPORT_FULL_MATRIX=1 every run")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker and BACKEND not in marker.args:
            item.add_marker(pytest.mark.skip(reason=f"only on {marker.args}, this run is {BACKEND}"))
        elif item.get_closest_marker("one_backend") and BACKEND != "tensorflow" \
                and not FULL_MATRIX:
            item.add_marker(pytest.mark.skip(
                reason="the same on every backend: the tensorflow run tests it "
                       "(KEXPORT_FULL_MATRIX=1 runs it here too)"))
        elif item.get_closest_marker("full_matrix") and not FULL_MATRIX:
            item.add_marker(pytest.mark.skip(
                reason="a re-hosted cell of a cross-backend matrix: KEXPORT_FULL_MATRIX=1 runs it"))


def native_formats(formats):
    """``formats`` as pytest params, those with no native route from this backend marked
    ``full_matrix``: a re-hosted cell runs the host backend's native route in a child
    process, which that backend's own run tests; ``KEXPORT_FULL_MATRIX=1`` runs them all."""
    import kexport

    native = {r.format for r in kexport.routes() if r.backend == BACKEND and r.kind == "native"}
    return [f if f in native else pytest.param(f, marks=pytest.mark.full_matrix)
            for f in formats]


class FreshProcess:
    """Runs functions of ``fresh.py`` in a spawned child process."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, func: str, *args, **kwargs):
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        return self._pool.submit(_dispatch, func, args, kwargs).result(timeout=600)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _dispatch(func, args, kwargs):
    import importlib

    module, _, name = func.rpartition(":")
    return getattr(importlib.import_module(module or "fresh"), name)(*args, **kwargs)


def run_alone(func: str, *args):
    """``func(*args)`` (as for :class:`FreshProcess`) in a new spawned process of its own,
    which no other test has used (the session's ``fresh_process`` worker is shared)."""
    process = FreshProcess()
    try:
        return process(func, *args)
    finally:
        process.close()


@pytest.fixture(scope="session")
def fresh_process():
    """Call ``fresh_process("function_name", *args)`` to run ``fresh.function_name``
    (or ``"module:function"`` for another module in tests/) in a separate
    process that has never imported Keras or kexport."""
    proc = FreshProcess()
    yield proc
    proc.close()


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield

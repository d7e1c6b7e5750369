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


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these Keras backends")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker and BACKEND not in marker.args:
            item.add_marker(pytest.mark.skip(reason=f"only on {marker.args}, this run is {BACKEND}"))


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

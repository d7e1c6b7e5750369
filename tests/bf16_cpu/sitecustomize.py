"""A simulated CPU whose OpenVINO defaults to bf16, for any machine.

Put this folder on ``PYTHONPATH`` of a child process (kexport's verification
worker inherits it): once ``openvino`` is imported, ``Core.compile_model``
behaves as OpenVINO's CPU plugin does on CPUs with bf16 units — without an
``INFERENCE_PRECISION_HINT`` (or with ``bf16``) the compiled model computes in
bf16 and says so. The bf16 compute is emulated by rounding every output to
bf16 (8 significant bits), so the simulation bites on CPUs without bf16 units
too; with the hint ``f32`` the real compiled model is returned unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


def _round_bf16(array):
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.float32)
    bits = a.view(np.uint32)
    # round to nearest even on the 16 dropped mantissa bits
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).reshape(a.shape)


class _Rounded:
    """The result of a call, every output rounded to bf16 (any key OpenVINO takes)."""

    def __init__(self, result):
        self._result = result

    def __getitem__(self, key):
        return _round_bf16(self._result[key])

    def __len__(self):
        return len(self._result)

    def values(self):
        return [_round_bf16(v) for v in self._result.values()]


class _Bf16Compiled:
    """A compiled model that answers like one compiled in bf16."""

    def __init__(self, compiled, ov):
        self._compiled = compiled
        self._ov = ov

    def __call__(self, *args, **kwargs):
        return _Rounded(self._compiled(*args, **kwargs))

    def get_property(self, name):
        if name == "INFERENCE_PRECISION_HINT":
            return self._ov.Type.bf16
        return self._compiled.get_property(name)

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def patch_core(ov):
    """Make ``ov.Core.compile_model`` behave as on a bf16 CPU; returns the undo function."""
    real = ov.Core.compile_model

    def compile_model(self, model, device_name="CPU", config=None):
        config = dict(config or {})
        hint = str(config.get("INFERENCE_PRECISION_HINT", "bf16")).lower()
        if hint in ("bf16", "bfloat16"):
            config["INFERENCE_PRECISION_HINT"] = "f32"
            return _Bf16Compiled(real(self, model, device_name, config), ov)
        return real(self, model, device_name, config)

    ov.Core.compile_model = compile_model
    ov.SIMULATED_BF16_CPU = True

    def undo():
        ov.Core.compile_model = real
        ov.SIMULATED_BF16_CPU = False

    return undo


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "openvino":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch_core(module)

        loader.exec_module = exec_and_patch
        return spec


if __name__ == "sitecustomize":  # a child process with this folder on PYTHONPATH
    sys.meta_path.insert(0, _Finder())

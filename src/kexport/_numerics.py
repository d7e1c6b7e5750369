"""Same numbers on every CPU: the precision each runtime kexport drives computes in.

Runtimes choose their own precision by default, and some choose it by CPU:
OpenVINO runs ``f32`` IR in ``bf16`` on CPUs with bf16 units (its documented
``INFERENCE_PRECISION_HINT`` default), so one artifact gives other numbers on
another machine. kexport always states the precision instead: ``float32``
unless the caller asks for another one. This module is the one place that
says how, per runtime:

- OpenVINO: :func:`openvino_config` (``INFERENCE_PRECISION_HINT`` on every
  compile; the compiled model reports what it really uses);
- ONNX Runtime: :func:`onnxruntime_options` (its CPU provider computes float
  graphs in float32 on x86; the one reduced-precision switch it has, arm64
  bf16 fast-math GEMM, is stated off);
- PyTorch (``.pt2``): :func:`torch_compute` (float32 matmuls at ``"highest"``
  whatever ``torch.set_float32_matmul_precision`` says; float32 only, since
  ``torch.export`` programs assert the float32 dtypes of their intermediates
  and refuse CPU autocast);
- TensorFlow and LiteRT: :func:`child_env` (oneDNN's fp32 math mode stated
  strict in kexport's child processes, so a user's ``ONEDNN_DEFAULT_FPMATH_MODE
  =BF16`` cannot leak into a check); their CPU kernels compute float32.

It names and parses precisions and imports nothing heavy at module level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kexport.errors import SignatureError, describe

__all__ = ["DEFAULT", "PRECISIONS", "check_supported", "child_env", "normalize",
           "onnxruntime_options", "openvino_config", "openvino_precision", "short",
           "torch_compute"]

DEFAULT = "float32"
# Canonical names (NumPy/verify spelling) -> the short names users type.
PRECISIONS: dict[str, str] = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
_ALIASES: dict[str, str] = {
    **{name: name for name in PRECISIONS},
    **{s: name for name, s in PRECISIONS.items()},
    "fp32": "float32", "fp16": "float16", "half": "float16",
}


def normalize(precision: str | None) -> str:
    """``"bf16"`` -> ``"bfloat16"``; ``None`` -> :data:`DEFAULT`.

    Raises:
        SignatureError: for anything that is not a known precision name.
    """
    if precision is None:
        return DEFAULT
    key = precision.strip().lower() if isinstance(precision, str) else None
    if key not in _ALIASES:
        raise SignatureError(
            f"Expected `precision` to be one of {list(PRECISIONS.values())} (or "
            f"{list(PRECISIONS)}). Received: {describe(precision)}"
        )
    return _ALIASES[key]


def short(precision: str) -> str:
    """``"bfloat16"`` -> ``"bf16"`` (unknown names unchanged)."""
    return PRECISIONS.get(precision, precision)


def check_supported(precision: str, supported: Iterable[str], format: str,
                    elsewhere: Iterable[str] = ()) -> None:
    """Raise unless the ``format`` runtime can compute in ``precision``.

    Args:
        precision: a canonical name (see :func:`normalize`).
        supported: what the ``format`` runtime offers.
        format: the artifact's format, for the message.
        elsewhere: formats whose runtime does offer ``precision``, for the message.

    Raises:
        SignatureError: naming the precisions that runtime offers.
    """
    offered = list(supported)
    if precision in offered:
        return
    others = sorted(elsewhere)
    hint = (f" Runtimes that compute in {short(precision)}: {others}." if others else "")
    raise SignatureError(
        f"Expected a precision the {format} runtime can compute in: "
        f"{[short(p) for p in offered]}. Received: precision={short(precision)!r}. "
        f"kexport never falls back to another precision silently.{hint}"
    )


# -- OpenVINO -----------------------------------------------------------------

# kexport precision -> OpenVINO element type of INFERENCE_PRECISION_HINT.
_OPENVINO = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def openvino_config(precision: str = DEFAULT) -> dict[str, str]:
    """The ``Core.compile_model`` config that pins the CPU plugin to ``precision``."""
    return {"INFERENCE_PRECISION_HINT": _OPENVINO[precision]}


def openvino_precision(compiled: Any) -> str:
    """The precision a compiled model reports using (``"bfloat16"``, ...).

    OpenVINO may not honour a hint: ``f16`` on a CPU without f16 units runs
    in ``bf16`` (or ``f32``), and the compiled model says so.
    """
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:
        return DEFAULT
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return {v: k for k, v in _OPENVINO.items()}.get(name, name)


# -- ONNX Runtime -----------------------------------------------------------

def onnxruntime_options(*, threads: int | None = None, log_level: int = 3) -> Any:
    """``onnxruntime.SessionOptions`` with the precision stated (float32)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
    return options


# -- PyTorch ----------------------------------------------------------------

@contextlib.contextmanager
def torch_compute() -> Iterator[None]:
    """Run the enclosed torch calls in float32 on the CPU, without gradients.

    float32 matmuls run at ``"highest"`` precision (a process-wide setting of
    ``"medium"`` lets oneDNN use bf16); the previous setting is restored on
    exit. Not thread-safe against another thread changing that setting.
    """
    import torch

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


# -- TensorFlow, LiteRT and child processes ---------------------------------

def child_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of a kexport child process that runs an artifact.

    oneDNN (TensorFlow's CPU kernels) reads ``ONEDNN_DEFAULT_FPMATH_MODE`` at
    start-up; ``BF16`` there would compute float32 ops in bf16. Checks state
    it strict; TensorFlow's C++ start-up log is off unless the user set it.
    """
    env = dict(base)
    env["ONEDNN_DEFAULT_FPMATH_MODE"] = "STRICT"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env

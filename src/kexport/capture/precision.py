"""Mixed-precision models: float32 at the artifact's boundary, and float32 compute where needed.

A model built under ``keras.mixed_precision.set_global_policy("mixed_bfloat16")``
stores its variables in float32 and computes in bfloat16. Two things follow:

- **the boundary**: its outputs come out in bfloat16, which a client (NumPy,
  ONNX Runtime, TF-Serving's JSON) does not send or read. Every capture casts
  a float output narrower than the model's variable dtype back to that dtype
  (:func:`at_boundary`): a client sends and receives float32;
- **the compute**: runtimes without bfloat16 kernels (ONNX Runtime's CPU
  ``Conv``, LiteRT's builtins, OpenVINO's CPU plugin) refuse such a graph.
  For those formats the whole export runs under :func:`float32_compute`: a
  scoped patch (:func:`kexport._patch.scoped_patch`) of Keras's
  ``DTypePolicy.compute_dtype`` makes a mixed policy compute in its variable
  dtype, so every layer (and every trace of it: tf.function, jax2tf,
  torch.export) computes in float32. Nothing else changes; outside the scope
  the model computes as before.

Where the format's runtime holds the compute dtype (SavedModel), the graph
keeps it. :func:`kept_compute_dtype` says which the artifact computes in, so
the check's tolerance fits it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from kexport._patch import scoped_patch
from kexport.check.tolerance import default_tolerances

__all__ = ["FORMATS_WITH_LOW_PRECISION", "at_boundary", "float32_compute", "live_precision",
           "kept_compute_dtype", "mixed_compute_dtype"]

_NARROW = ("bfloat16", "float16")
#: formats whose runtimes run a mixed-precision graph as it is (the compute dtype is kept)
FORMATS_WITH_LOW_PRECISION = frozenset({"tf_saved_model"})


def _mixed(policy: Any) -> bool:
    return (getattr(policy, "_compute_dtype", None) in _NARROW
            and getattr(policy, "_variable_dtype", None) == "float32")


def mixed_compute_dtype(model: Any) -> str | None:
    """The narrow compute dtype of a mixed-precision ``model`` (or of any of its layers),
    else ``None``."""
    layers = [model]
    with contextlib.suppress(Exception):
        layers += list(model._flatten_layers(include_self=False))
    for layer in layers:
        policy = getattr(layer, "_dtype_policy", None)
        if _mixed(policy):
            return str(policy._compute_dtype)
    return None


def kept_compute_dtype(model: Any, format: str) -> str:
    """What the artifact of ``model`` in ``format`` computes in: the model's narrow
    compute dtype where the format keeps it, else ``float32``."""
    narrow = mixed_compute_dtype(model)
    return narrow if narrow is not None and format in FORMATS_WITH_LOW_PRECISION else "float32"


@contextlib.contextmanager
def float32_compute() -> Iterator[None]:
    """Within the context, a mixed Keras dtype policy computes in its variable dtype."""
    try:
        from keras.src.dtype_policies.dtype_policy import DTypePolicy
    except ImportError:  # Keras moved it: its own behaviour applies
        yield
        return

    def make(original: Any) -> Any:
        def compute_dtype(policy: Any) -> Any:
            return policy._variable_dtype if _mixed(policy) else original.fget(policy)
        return property(compute_dtype, doc=original.__doc__)

    with scoped_patch(DTypePolicy, "compute_dtype", make):
        yield


def for_format(model: Any, format: str) -> contextlib.AbstractContextManager[None]:
    """:func:`float32_compute` where ``format``'s runtime lacks ``model``'s compute dtype."""
    if mixed_compute_dtype(model) is None or format in FORMATS_WITH_LOW_PRECISION:
        return contextlib.nullcontext()
    return float32_compute()


def at_boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its bfloat16/float16 outputs cast to float32 (the artifact's boundary)."""
    import functools

    import keras

    def cast(value: Any) -> Any:
        dtype = getattr(value, "dtype", None)
        if dtype is None:
            return value
        try:
            name = keras.backend.standardize_dtype(dtype)
        except Exception:  # not a tensor Keras knows: left as it is
            return value
        return keras.ops.cast(value, "float32") if name in _NARROW else value

    @functools.wraps(fn)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        return keras.tree.map_structure(cast, fn(*args, **kwargs))

    return endpoint


def live_precision(model: Any, precision: str) -> str:
    """``precision``, or the live model's narrower compute dtype (``mixed_bfloat16``):
    the reference itself is only that exact, so its tolerance applies."""
    narrow = mixed_compute_dtype(model)
    if narrow is not None and default_tolerances(narrow)[0] > default_tolerances(precision)[0]:
        return narrow
    return precision

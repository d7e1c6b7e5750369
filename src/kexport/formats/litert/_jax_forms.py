"""JAX forms the TFLite converter gets wrong or refuses, rewritten while tracing.

Within :func:`jax_forms` (the LiteRT writer's trace), two scoped workarounds:

**Contractions over several axes.** A JAX endpoint reaches the TFLite converter as StableHLO; a
``dot_general`` that contracts two or more axes at once (``EinsumDense``'s
``"bquh,uhm->bqm"``, the attention output projection of keras_hub's Llama,
Gemma, Mistral... backbones) comes out of its legalisation wrong (max error
1.7 on unit-scale inputs, measured with keras 3.15.1, jax 0.10.2, TF 2.21),
while one contracted axis is right. Within :func:`single_contractions`
Keras's JAX ``einsum`` merges the contracted axes of a two-operand einsum
into one (a transpose and a reshape of each operand, the same sum), so every
``dot_general`` the converter sees contracts one axis. Einsums of other forms
(one operand, ``...``, repeated or summed-away letters) are left as they are.


**Indexing by constants on symbolic shapes.** ``x[:, 0, :]`` (keras_hub
BERT's pooled ``[CLS]`` token, Keras's ``GetItem``) on an axis of symbolic
size lowers through ``jnp``'s gather, i.e. StableHLO ``dynamic_gather``,
which the converter refuses (``'vhlo.dynamic_gather_v1' op is not part of
the vhlo support yet``). Within the scope a key of non-negative ints and
unit-step slices is a ``lax.slice`` plus a squeeze (the same values); other
keys go through ``jnp`` indexing as before.

Both only touch Keras's JAX backend, and only when it is loaded.
"""

from __future__ import annotations

import contextlib
import string
import sys
from collections.abc import Iterator
from typing import Any

from kexport._patch import scoped_patch

__all__ = ["jax_forms", "merged_subscripts", "slice_plan"]


def merged_subscripts(subscripts: str) -> tuple[str, list[int], list[int], int] | None:
    """How to merge the contracted axes of a two-operand einsum into one.

    Returns ``(new subscripts, permutation of operand a, permutation of
    operand b, number of contracted axes)``: each operand transposed so its
    contracted axes come last (in one order), then reshaped to merge them; or
    ``None`` where fewer than two axes are contracted or the form is not a
    plain two-operand contraction.
    """
    text = subscripts.replace(" ", "")
    if "..." in text or "->" not in text:
        return None
    inputs, out = text.split("->")
    operands = inputs.split(",")
    if len(operands) != 2:
        return None
    a, b = operands
    if any(len(set(s)) != len(s) for s in (a, b, out)):
        return None  # a trace or a repeated output letter
    contracted = [c for c in a if c in b and c not in out]
    if len(contracted) < 2 or any(c not in out and c not in contracted for c in a + b):
        return None
    fresh = next(c for c in string.ascii_letters if c not in a + b + out)
    kept_a = [c for c in a if c not in contracted]
    kept_b = [c for c in b if c not in contracted]
    new = f"{''.join(kept_a)}{fresh},{''.join(kept_b)}{fresh}->{out}"
    return (new, [a.index(c) for c in kept_a + contracted],
            [b.index(c) for c in kept_b + contracted], len(contracted))


def _merged(x: Any, permutation: list[int], count: int) -> Any:
    import jax.numpy as jnp

    x = jnp.transpose(x, permutation)
    return jnp.reshape(x, (*x.shape[: x.ndim - count], -1))


def slice_plan(key: Any, shape: tuple[Any, ...]) -> tuple[list[int], list[Any], list[int]] | None:
    """``(starts, limits, axes to squeeze)`` of ``x[key]`` as one ``lax.slice``, or
    ``None`` where ``key`` is not made of non-negative ints, unit-step slices
    and at most one ``...`` (or a bound falls outside a static axis)."""
    key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        return None
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1:]
    if len(key) > len(shape):
        return None
    key = key + (slice(None),) * (len(shape) - len(key))
    starts, limits, squeeze = [], [], []
    for axis, (k, size) in enumerate(zip(key, shape, strict=True)):
        static = isinstance(size, int)
        if isinstance(k, int) and not isinstance(k, bool):
            if k < 0 or (static and k >= size):
                return None
            starts.append(k)
            limits.append(k + 1)
            squeeze.append(axis)
        elif isinstance(k, slice) and k.step in (None, 1):
            start, stop = k.start or 0, k.stop
            if not isinstance(start, int) or start < 0 or (stop is not None and (
                    not isinstance(stop, int) or stop < 0 or not static)):
                return None
            stop = size if stop is None else min(stop, size)
            if static and start > stop:
                return None
            starts.append(start)
            limits.append(stop)
        else:
            return None
    return starts, limits, squeeze


def _sliced(original: Any) -> Any:
    def call(self: Any, x: Any, key: Any) -> Any:
        plan = slice_plan(key, tuple(getattr(x, "shape", ())))
        if plan is None or not type(x).__module__.startswith("jax"):
            return original(self, x, key)
        from jax import lax

        starts, limits, squeeze = plan
        out = lax.slice(x, starts, limits)
        return lax.squeeze(out, squeeze) if squeeze else out
    return call


@contextlib.contextmanager
def jax_forms() -> Iterator[None]:
    """Keras's JAX ``einsum`` contracts one (merged) axis per ``dot_general`` and its
    constant indexing is a slice, for one trace."""
    module = sys.modules.get("keras.src.backend.jax.numpy")
    if module is None:  # Keras's JAX backend is not loaded: nothing traced uses it
        yield
        return
    from keras.src.ops.numpy import GetItem

    def make(original: Any) -> Any:
        def einsum(subscripts: Any, *operands: Any, **kwargs: Any) -> Any:
            plan = merged_subscripts(subscripts) if isinstance(subscripts, str) \
                and len(operands) == 2 else None
            if plan is None:
                return original(subscripts, *operands, **kwargs)
            new, perm_a, perm_b, count = plan
            a, b = (module.convert_to_tensor(x) for x in operands)
            return original(new, _merged(a, perm_a, count), _merged(b, perm_b, count),
                            **kwargs)
        return einsum

    with scoped_patch(module, "einsum", make), scoped_patch(GetItem, "call", _sliced):
        yield

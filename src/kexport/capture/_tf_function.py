"""Endpoints that are ``tf.function`` already, and TF tensor specs.

A ``tf.function`` given as an endpoint is not traced again: it is used with
its own input signature, with the one given (which must fit inside its own),
or with the signature of a call it has already traced, relaxed to any batch
size (:func:`_traced_tf_function`). :func:`tf_specs` turns kexport specs into
named ``tf.TensorSpec`` structures, and :func:`_to_plain` unwraps TF's output
containers.
"""

from __future__ import annotations

from typing import Any

from kexport.capture._naming import named_like
from kexport.errors import SignatureError, SignatureTypeError
from kexport.signature import (
    Spec,
    _dtype_name,
    _to_spec,
    flat_names,
    flatten_with_paths,
    map_structure,
    pack_as,
)

__all__ = ["tf_specs"]


def _to_plain(structure: Any) -> Any:
    """Turn TF's wrapped dict/list outputs into plain Python containers."""
    from collections.abc import Mapping

    if isinstance(structure, Mapping):
        return {k: _to_plain(v) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_to_plain(v) for v in structure]
    return structure


def _np_dtype(dtype: Any) -> str:
    return _dtype_name(dtype)


def tf_specs(signature: list[Any], names: list[str]) -> list[Any]:
    """``tf.TensorSpec`` structures for ``signature``, named by ``names``."""
    import tensorflow as tf


    flat = [spec for _, spec in flatten_with_paths(signature)]
    ordered = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=n) for s, n in zip(flat, names)]
    return pack_as(list(signature), ordered)


def _from_tf_spec(spec: Any) -> Spec:
    return _to_spec(spec)


def _traced_tf_function(name: str, fn: Any, signature: list[Any] | None) -> tuple[Any, list[Any]]:
    """Use an existing ``tf.function``: with its own signature or a traced one."""

    own = getattr(fn, "input_signature", None)
    if signature is not None:
        names = flat_names(signature)
        specs = tf_specs(signature, names)
        if own is None:
            concrete = fn.get_concrete_function(*specs)
        else:  # the tf.function fixes its signature: the given one must fit inside it
            _check_fits(name, signature, own)
            concrete = fn.get_concrete_function()
        return _as_function(concrete, specs, fn), signature
    concretes = fn._list_all_concrete_functions()  # a declared signature is listed too
    if not concretes:
        raise SignatureError(
            f"Endpoint '{name}' is a tf.function that was never called, so its "
            "input shapes are unknown. Call it once on sample data, or pass "
            "`input_signature=`."
        )
    concrete = concretes[0]
    args, _ = concrete.structured_input_signature
    if getattr(fn, "input_signature", None) is None:
        # Traced once on a sample: serve any batch size, like every other endpoint.
        relaxed = [map_structure(_relax_batch, a) for a in args]
        try:
            concrete = fn.get_concrete_function(*relaxed)
            args = relaxed
        except Exception:
            pass
    signature = [map_structure(_from_tf_spec, a) for a in args]
    return _as_function(concrete, list(args), fn), signature


def _check_fits(name: str, signature: list[Any], own: Any) -> None:
    """Refuse an ``input_signature`` that a ``tf.function``'s own one does not accept.

    Every given input must have the dtype and rank of the function's, and each
    dimension the function fixes must be fixed to the same size (a dimension
    the function leaves dynamic may be anything).
    """
    import tensorflow as tf

    given = [spec for _, spec in flatten_with_paths(signature)]
    declared = [_from_tf_spec(s) for s in tf.nest.flatten(list(own))]

    def fits(g: Spec, d: Spec) -> bool:
        return g.dtype == d.dtype and len(g.shape) == len(d.shape) and all(
            dd is None or gd == dd for gd, dd in zip(g.shape, d.shape))

    if len(given) != len(declared) or not all(map(fits, given, declared)):
        show = ", ".join(f"{s.shape} {s.dtype}" for s in declared)
        got = ", ".join(f"{s.shape} {s.dtype}" for s in given)
        raise SignatureTypeError(
            f"Endpoint '{name}': `fn` is a tf.function with its own input_signature, "
            f"which does not accept the `input_signature` given. Expected inputs that fit "
            f"[{show}]. Received: [{got}]. Next step: pass no `input_signature` (the "
            "function's own is used) or one that fits it."
        )


def _relax_batch(spec: Any) -> Any:
    import tensorflow as tf

    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    if not shape:
        return spec
    return tf.TensorSpec([None] + shape[1:], spec.dtype, name=spec.name)


def _as_function(concrete: Any, specs: list[Any], fn: Any = None) -> Any:
    import tensorflow as tf

    def endpoint(*args: Any) -> Any:
        return concrete(*args)

    return tf.function(named_like(fn, len(specs), endpoint), input_signature=specs,
                       autograph=False)

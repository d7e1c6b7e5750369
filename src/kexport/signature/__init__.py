"""Input signatures: what goes into an endpoint, with names and dynamic dims.

A signature is a list with one entry per positional argument of the endpoint
function; each entry is a :class:`Spec` or a (nested) list, tuple or dict of
them. Everything kexport accepts as a spec (``keras.InputSpec``,
``tf.TensorSpec``, ``keras.KerasTensor``, backend tensors, NumPy arrays) is
normalised to :class:`Spec` here, so the later stages see one plain type.

The package: :mod:`._spec` (one tensor's :class:`Spec`, dtype and shape
normalisation), :mod:`._structure` (nested structures, names, JSON),
:mod:`._infer` (a user signature normalised, or the model's inferred) and
:mod:`._first_call` (what a subclassed model's first call left unsaid: integer
ids and the axes it does not fix, found by probing the live model).
"""

from __future__ import annotations

from kexport.signature._infer import (
    infer_model_signature,
    normalize,
    normalize_for_model,
)
from kexport.signature._spec import (
    Spec,
    default_symbol,
    sanitize_name,
)
from kexport.signature._spec import (
    _dtype_name as _dtype_name,  # kexport's own modules use it
)
from kexport.signature._spec import (
    _to_spec as _to_spec,  # kexport's own modules use it
)
from kexport.signature._structure import (
    flat_names,
    flatten,
    flatten_with_paths,
    map_structure,
    pack_as,
    specs_from_json,
    specs_to_json,
    structure_of,
    unique_name,
)

__all__ = [
    "specs_from_json",
    "specs_to_json",
    "Spec",
    "default_symbol",
    "flatten",
    "flatten_with_paths",
    "map_structure",
    "pack_as",
    "flat_names",
    "infer_model_signature",
    "normalize",
    "normalize_for_model",
    "sanitize_name",
    "structure_of",
    "unique_name",
]

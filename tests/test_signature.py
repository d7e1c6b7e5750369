"""Fast tier: input signatures as data (no export, no tracing)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from kexport.errors import SignatureError
from kexport.signature import (
    Spec,
    flat_names,
    flatten,
    normalize,
    pack_as,
    sanitize_name,
    specs_from_json,
    specs_to_json,
)

pytestmark = pytest.mark.fast


def test_every_kind_of_leaf_becomes_a_spec_and_structures_are_kept():
    sig = normalize([
        keras.InputSpec(shape=(None, 3), dtype="float32", name="a"),
        (keras.Input((2,), dtype="int32", name="ids"), np.zeros((4, 5), "float16")),
        {"mask": keras.InputSpec(shape=(None, 7), dtype="bool")},
    ])
    assert sig[0] == Spec((None, 3), "float32", "a")
    assert isinstance(sig[1], tuple)
    assert sig[1][0] == Spec((None, 2), "int32", "ids")
    assert sig[1][1] == Spec((None, 5), "float16", None)  # an example: batch made dynamic
    assert sig[2] == {"mask": Spec((None, 7), "bool", None)}
    # a single spec or a dict is one positional argument
    assert normalize(Spec((None, 1))) == [Spec((None, 1))]
    assert normalize({"x": Spec((2,))}) == [{"x": Spec((2,))}]


@pytest.mark.parametrize("bad, match", [
    (None, "Expected an input signature. Received: None"),
    ([], "Expected a non-empty `input_signature`"),
    ([(123,)], r"keras.InputSpec, tf.TensorSpec, keras.KerasTensor or a tensor. "
               r"Received: 123 \(of type int\)"),
    ([[None]], "Received None inside"),
    ([keras.InputSpec(ndim=2)], "Expected keras.InputSpec with a full `shape`"),
])
def test_bad_signatures_are_typed_errors_that_say_what_was_expected(bad, match):
    with pytest.raises(SignatureError, match=match):
        normalize(bad)


def test_negative_dimensions_are_refused():
    with pytest.raises(SignatureError, match=r"non-negative int or None. Received: shape=\(-1,"):
        Spec((-1, 3))


def test_flatten_sorts_dict_keys_and_pack_as_restores_tuples_lists_and_dicts():
    structure = [{"b": Spec((1,), name="b"), "a": (Spec((2,), name="a0"), [Spec((3,))])}]
    flat = flatten(structure)
    assert [s.shape for s in flat] == [(2,), (3,), (1,)]
    packed = pack_as(structure, [10, 20, 30])
    assert packed == [{"b": 30, "a": (10, [20])}]
    assert list(packed[0]) == ["b", "a"]  # the user's key order is kept
    assert isinstance(packed[0]["a"], tuple) and isinstance(packed[0]["a"][1], list)


def test_json_form_round_trips_every_container_kind():
    structure = [(Spec((None, 2), "int32", "x"), {"m": [Spec((None,), "bool")]})]
    text = json.dumps(specs_to_json(structure))
    assert specs_from_json(json.loads(text)) == structure
    with pytest.raises(SignatureError, match="Expected a Spec structure"):
        specs_to_json([object()])


def test_names_are_usable_in_every_format_and_unique():
    assert sanitize_name("input ids/0") == "input_ids_0"
    assert sanitize_name("_private") == "x_private"
    names = flat_names([Spec((1,), name="x"), Spec((1,), name="x"), Spec((1,))])
    assert len(set(names)) == 3 and names[0] == "x"

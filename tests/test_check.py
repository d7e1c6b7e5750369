"""kexport.check: the one sample generator, tolerance table, comparison and worker.

Fast tier: pure logic and tiny child processes, no export (seconds).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from kexport.check.compare import compare, tolerance_for
from kexport.check.live import flat_numpy, live_reference
from kexport.check.samples import CASE_SIZES, dynamic_size, sample_inputs
from kexport.check.tolerance import TOLERANCES, default_tolerances, tolerances_for
from kexport.check.worker import Worker
from kexport.errors import SignatureError
from kexport.runtime import TensorInfo
from kexport.signature import Spec

pytestmark = pytest.mark.fast

# -- the sample generator -------------------------------------------------------------------------


def test_floats_normal_ints_zero_or_one_bools_prefix_masks():
    specs = [Spec((None, 400), "float32", "x"), Spec((None, 50), "int64", "ids"),
             Spec((None, 50), "uint8", "small"), Spec((None, 50), "bool", "mask")]
    x, ids, small, mask = sample_inputs(specs, 10, 0)
    assert x.dtype == np.float32 and abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05
    # ids in {0, 1}: safe for any Embedding/lookup, both values drawn
    assert ids.dtype == np.int64 and set(np.unique(ids)) == {0, 1}
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1}
    # booleans are masks: a kept prefix per row (at least one), padding in some rows
    kept = mask.sum(axis=1)
    assert mask.dtype == np.bool_ and (kept >= 1).all() and (kept < 50).any()
    assert all(row[:k].all() and not row[k:].any() for row, k in zip(mask, kept, strict=True))


def test_batch_axis_takes_the_case_size_other_dynamic_axes_distinct_sizes():
    specs = [Spec((None, None, 4, None), "float32", "seq"), Spec((5, None), "int32", "ids"),
             Spec((7,), "float32", "static")]
    for size in (1, 3, 8):
        seq, ids, static = sample_inputs(specs, size, 0)
        assert seq.shape == (size, size + 2, 4, size + 4)
        assert ids.shape == (5, size + 2)  # static axis 0 kept, axis 1 sized as axis 1
        assert static.shape == (7,)
        # every non-batch dynamic axis differs from the batch and from the others, never 1
        assert len({seq.shape[0], seq.shape[1], seq.shape[3]}) == 3 and 1 not in seq.shape[1:]
    assert [dynamic_size(a, 1) for a in range(4)] == [1, 3, 4, 5]
    # sized_as: other axes sized for another case (cases that can be concatenated)
    (seq,) = sample_inputs(specs[:1], 3, 0, sized_as=1)
    assert seq.shape == (3, 3, 4, 5)
    assert CASE_SIZES == (1, 3)


def test_seeded_reproducible_and_generator_continues():
    specs = [Spec((None, 6), "float32", "x"), Spec((None, 6), "int32", "i")]
    a, b = sample_inputs(specs, 3, 7), sample_inputs(specs, 3, 7)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(sample_inputs(specs, 3, 8)[0], a[0])
    rng = np.random.default_rng(7)
    first, second = sample_inputs(specs, 3, rng), sample_inputs(specs, 3, rng)
    np.testing.assert_array_equal(first[0], a[0])
    assert not np.array_equal(second[0], first[0])


def test_runtime_tensor_infos_are_specs_too():
    infos = [TensorInfo("x", (None, 3), "float16")]
    (x,) = sample_inputs(infos, 2, 0)
    assert x.shape == (2, 3) and x.dtype == np.float16


def test_strings_are_generated_as_text_and_other_dtypes_say_inputs_must_be_given():
    specs = [Spec((None, 2), "float32", "x"), Spec((None,), "string", "text")]
    _, text = sample_inputs(specs, 3, 0, endpoint="serve")
    assert text.shape == (3,) and text.dtype == object and all(isinstance(t, str) for t in text)
    with pytest.raises(SignatureError, match=r"Input 'z' has dtype complex64, which cannot be "
                                             r"generated at random\. Expected `inputs=`"):
        sample_inputs([Spec((1,), "complex64", "z")], 1, 0)


# -- the tolerance table --------------------------------------------------------------------------


def test_one_table_by_precision_float32_for_unknown():
    assert TOLERANCES["float32"] == (1e-4, 1e-3) and TOLERANCES["float64"] == (1e-7, 1e-6)
    assert default_tolerances("bfloat16") == (5e-2, 5e-2)
    assert default_tolerances("no-such-precision") == TOLERANCES["float32"]


def test_rehost_and_onnx_acceptance_use_the_float32_row():
    from kexport import rehost
    from kexport.formats.onnx import _accept as _onnx_check

    assert TOLERANCES["float32"] == (rehost.DEFAULT_ATOL, rehost.DEFAULT_RTOL)
    # the acceptance decides with the float32 row: at 0.1 the limit is 1e-4 + 1e-3 * 0.1
    want = [[np.full((1, 2), 0.1, "float32")], [np.full((3, 2), 0.1, "float32")]]
    cases = [[np.zeros((b, 2), "float32")] for b in (1, 3)]
    graph = _identity_plus_graph(0.1 + 1.5e-4)
    _onnx_check._run_in_onnxruntime(graph, ["x"], cases, lambda: want, True)
    with pytest.raises(_onnx_check.NotTraceable, match="differs from the live model at batch 1"):
        _onnx_check._run_in_onnxruntime(_identity_plus_graph(0.1 + 2.5e-4), ["x"], cases,
                                        lambda: want, True)


def _identity_plus_graph(value):
    import onnx

    c = onnx.numpy_helper.from_array(np.array([value], "float32"), "c")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "c"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])], [c])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_runtime_below_float32_widens_and_names_its_row():
    assert tolerances_for("float32", "float32") == (TOLERANCES["float32"], "float32")
    assert tolerances_for("float64", "float32") == (TOLERANCES["float64"], "float64")
    assert tolerances_for("float32", "bfloat16") == (TOLERANCES["bfloat16"], "bfloat16")
    # a declared tolerance wins over the precision's row ...
    assert tolerances_for("float32", "float32", (0.25, 0.01)) == ((0.25, 0.01), "float32")
    # ... and is only widened where the runtime's row is looser, naming the declared row
    assert tolerances_for("int8", "bfloat16", (0.25, 0.01)) == ((0.25, 0.05), "int8")
    assert tolerances_for("float32", "float16", (1e-3, 1e-3)) == ((1e-2, 1e-2), "float16")


# -- the comparison -------------------------------------------------------------------------------


def test_equal_close_and_far():
    e = np.array([1.0, -2.0, 100.0], "float32")
    assert compare(e, e.copy(), 1e-4, 1e-3) == (0.0, 0.0, True)
    max_abs, max_rel, ok = compare(e, e + np.array([0, 0, 0.05], "float32"), 1e-4, 1e-3)
    assert ok and max_abs == pytest.approx(0.05, rel=1e-3) and max_rel == pytest.approx(5e-4, 1e-3)
    # at -2 the limit is 1e-4 * 100 (the output's scale) + 1e-3 * 2 = 0.012
    assert not compare(e, e + np.array([0, 0.013, 0], "float32"), 1e-4, 1e-3)[2]
    assert compare(e, e + np.array([0, 0.011, 0], "float32"), 1e-4, 1e-3)[2]


def test_atol_rtol_edge_is_inclusive_like_allclose():
    e = np.array([100.0])
    limit = 1e-4 * 100.0 + 1e-3 * 100.0  # atol in units of the output's scale (100)
    assert compare(e, e + limit * 0.999, 1e-4, 1e-3)[2]
    assert not compare(e, e + limit * 1.001, 1e-4, 1e-3)[2]
    # relative error only over elements larger than atol: 0 vs 5e-5 is within atol
    max_abs, max_rel, ok = compare(np.array([0.0]), np.array([5e-5]), 1e-4, 0.0)
    assert ok and max_rel == 0.0 and max_abs == pytest.approx(5e-5)


def test_atol_scales_with_the_outputs_magnitude():
    """float32 rounding near 0 in an output whose values reach 40 is that of numbers of
    size 40: atol counts in units of max(1, max |expected|), per output."""
    e = np.array([0.0, 3.0, -40.0])
    assert compare(e, e + np.array([3.9e-3, 0, 0]), 1e-4, 1e-3)[2]
    assert not compare(e, e + np.array([4.1e-3, 0, 0]), 1e-4, 1e-3)[2]
    small = np.array([0.0, 0.3, -0.9])  # within [-1, 1]: exactly numpy.allclose
    assert not compare(small, small + np.array([1.1e-4, 0, 0]), 1e-4, 1e-3)[2]
    assert compare(small, small + np.array([0.9e-4, 0, 0]), 1e-4, 1e-3)[2]
    for got in (small + np.array([1.1e-4, 0, 0]), small + np.array([0.9e-4, 0, 0])):
        assert compare(small, got, 1e-4, 1e-3)[2] == np.allclose(got, small, 1e-3, 1e-4)


def test_nans_must_sit_at_the_same_positions():
    e = np.array([1.0, np.nan, 3.0])
    assert compare(e, np.array([1.0, np.nan, 3.0]), 1e-4, 1e-3) == (0.0, 0.0, True)
    max_abs, max_rel, ok = compare(e, np.array([1.0, 2.0, 3.0]), 1e-4, 1e-3)
    assert not ok and math.isnan(max_abs) and math.isnan(max_rel)
    assert not compare(np.array([np.nan]), np.array([np.nan, np.nan]), 1, 1)[2]


def test_shape_mismatch_is_infinite():
    assert compare(np.zeros((2, 3)), np.zeros((3, 2)), 1, 1) == (math.inf, math.inf, False)
    assert compare(np.zeros((0, 3)), np.zeros((0, 3)), 0, 0) == (0.0, 0.0, True)


def test_ints_bools_and_strings_are_exact():
    ids = np.array([3, 7], "int64")
    assert tolerance_for(ids, 1e-4, 1e-3) == (0.0, 0.0)
    assert tolerance_for(np.array([True]), 0.1, 0.1) == (0.0, 0.0)
    assert tolerance_for(np.array([1.0], "float16"), 0.1, 0.2) == (0.1, 0.2)
    assert compare(ids, ids.copy(), *tolerance_for(ids, 1e-4, 1e-3))[2]
    # off by one in 7: within 1e-4 + 1e-3 * 7? no, but 1 vs 1000 would be with a tolerance
    big = np.array([1000], "int64")
    assert compare(big, big + 1, 1e-4, 1e-2)[2]
    assert not compare(big, big + 1, *tolerance_for(big, 1e-4, 1e-2))[2]
    mask = np.array([True, False])
    assert not compare(mask, ~mask, *tolerance_for(mask, 1e-4, 1e-3))[2]
    words = np.array(["a", "b"])
    assert compare(words, words.copy(), 0, 0) == (0.0, 0.0, True)
    assert not compare(words, np.array(["a", "c"]), 0, 0)[2]


# -- the live side ----------------------------------------------------------------------------------


def test_flat_numpy_in_the_canonical_flat_order():
    out = flat_numpy({"b": keras.ops.ones((1, 2)), "a": [np.zeros(3), np.float32(2.0)]})
    assert [o.shape for o in out] == [(3,), (), (1, 2)]
    assert all(isinstance(o, np.ndarray) for o in out)


def test_live_reference_feeds_inputs_by_name():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], keras.layers.Concatenate()([a, b * 2.0]))
    call = live_reference(model, ["b", "a"])
    (y,) = call({"a": np.ones((1, 2), "float32"), "b": np.ones((1, 3), "float32")})
    np.testing.assert_allclose(y, [[1, 1, 2, 2, 2]])


# -- the worker ---------------------------------------------------------------------------------


def test_worker_answers_by_marker_and_reports_a_dead_child():
    from kexport.runtime._worker import MARKER

    worker = Worker("kexport.runtime._worker", marker=MARKER, lifetime=60)
    try:
        reply = worker.ask({"cmd": "nonsense"}, timeout=60)
        assert reply is not None and reply["ok"] is False and "unknown command" in reply["error"]
    finally:
        worker.close({"cmd": "exit"})
    assert not worker.alive() and worker.exit_code() == 0

    closed = []
    dead = Worker("kexport_no_such_module", on_close=lambda: closed.append(True))
    try:
        assert dead.ask({"cmd": "x"}, timeout=60) is None
        assert dead.exit_code() != 0 and "No module named" in dead.log_tail(500, lines=3)
        assert dead.ask({"cmd": "x"}, timeout=60) is None  # asking again: still the end
    finally:
        dead.close()
    dead.close()
    assert closed == [True]


def test_worker_times_out_and_is_killed(tmp_path):
    silent = tmp_path / "kexport_silent_child.py"
    silent.write_text("import sys, time\nsys.stdin.readline()\ntime.sleep(60)\n")
    worker = Worker("kexport_silent_child", cwd=tmp_path,
                    env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    try:
        with pytest.raises(TimeoutError):
            worker.ask({"cmd": "x"}, timeout=1)
        assert worker.exit_code() != 0
    finally:
        worker.close()


# -- positions a padding mask marks as padding (kexport.check.padding) -----------------------

def test_padding_masks_and_the_outputs_they_apply_to():
    from kexport.check.padding import drop_padded, kept_positions, padding_masks

    suffix = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype="int32")
    feeds = {"token_ids": np.ones((2, 5), "int32"), "padding_mask": suffix,
             "keep": suffix.copy(),  # an integer input whose name does not say mask
             "full_mask": np.ones((2, 5), "int32"),  # nothing padded: nothing to leave out
             "features": np.zeros((2, 5), "float32")}
    masks = padding_masks(feeds)
    assert list(masks) == ["padding_mask"] and masks["padding_mask"].dtype == bool
    keep = kept_positions(masks, "sequence_output", (2, 5, 4))
    np.testing.assert_array_equal(keep, suffix == 1)
    # rank 2 ((batch, features) may have the length by chance) and other shapes: whole
    assert kept_positions(masks, "pooled", (2, 5)) is None
    assert kept_positions(masks, "other", (2, 6, 4)) is None
    # encoder and decoder masks of one shape: the one the output's name starts with
    two = padding_masks({"encoder_padding_mask": suffix,
                         "decoder_padding_mask": suffix[::-1].copy()})
    np.testing.assert_array_equal(kept_positions(two, "decoder_sequence_output", (2, 5, 4)),
                                  suffix[::-1] == 1)
    np.testing.assert_array_equal(kept_positions(two, None, (2, 5, 4)),
                                  (suffix == 1) & (suffix[::-1] == 1))
    expected = np.arange(40, dtype="float32").reshape(2, 5, 4)
    received = expected.copy()
    received[0, 3:] = 1e6  # garbage where the mask pads
    want, got, padded = drop_padded(expected, received, keep)
    assert padded == 2 and want.shape == got.shape == (8, 4)
    np.testing.assert_array_equal(want, got)
    # shapes that differ are left for the shape check
    assert drop_padded(expected, received[:, :4], keep)[2] == 0


def test_verify_compares_sequence_outputs_where_the_mask_keeps_them():
    """The check of one case (``kexport.verify``): an artifact that differs from
    the model only at padded positions passes, and the table says how many were
    left out; a difference at a real position still fails."""
    from kexport.check.report import VerificationReport
    from kexport.runtime import EndpointInfo, TensorInfo
    from kexport.verify import _checked

    info = EndpointInfo("serve", (TensorInfo("token_ids", (None, None), "int32"),
                                  TensorInfo("padding_mask", (None, None), "int32")),
                        (TensorInfo("sequence_output", (None, None, 4), "float32"),))
    feeds = {"token_ids": np.ones((2, 5), "int32"),
             "padding_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "int32")}
    expected = np.random.default_rng(0).normal(size=(2, 5, 4)).astype("float32")
    padded_only = expected.copy()
    padded_only[0, 4] += 3.0
    real_too = padded_only.copy()
    real_too[1, 4] += 3.0
    report = VerificationReport("onnx", "f32", 1e-4, 1e-3, 0)
    _checked(report, {"serve": info}, {"a": ("serve", "dyn=2", feeds),
                                       "b": ("serve", "dyn=2b", feeds)},
             {"serve": lambda _: [expected]},
             {"a/sequence_output": padded_only, "b/sequence_output": real_too}, {}, None)
    first, second = report.checks
    assert first.ok and first.padded == 2 and first.max_abs == 0.0
    assert first.expected_shape == first.received_shape == [2, 5, 4]
    assert not second.ok and second.max_abs == pytest.approx(3.0)
    assert "not compared: positions the inputs' padding mask marks as padding" in \
        report.table() and "serve/sequence_output 4" in report.table()

"""Checks that mean something for quantized artifacts: SQNR, cosine, top-1/top-5.

The metrics on arrays with known answers (fast tier), the report carrying
them and the thresholds it applied, and LiteRT int8 artifacts judged by them:
a broken one that the old ``atol = rtol = 0.25`` passed is refused, a good
one with large outputs that it failed is accepted.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

import kexport
from kexport.artifact import read_litert_metadata
from kexport.check.compare import Quality, compare, is_scores, judge, quality, top_overlap
from kexport.check.report import OutputCheck, VerificationReport
from kexport.check.tolerance import (
    QUANTIZATION_MODES,
    QUANTIZED,
    Thresholds,
    quantization_mode,
    thresholds_for,
)
from kexport.errors import SignatureError, VerificationError
from kexport.verify import raise_if_failed

OLD_INT8 = (0.25, 0.25)  # what LiteRT int8 artifacts were judged by before


# -- the metrics on arrays (fast) --------------------------------------------------------------

@pytest.mark.fast
def test_identical_outputs_are_infinite_sqnr_cosine_one_full_agreement():
    ref = np.random.default_rng(0).normal(size=(6, 10)).astype("float32")
    q = quality(ref, ref.copy(), scores=True)
    assert q.sqnr_db == math.inf
    assert q.cosine_min == pytest.approx(1.0) and q.cosine_mean == pytest.approx(1.0)
    assert q.top1 == 1.0 and q.top5 == 1.0 and q.samples == 6 and q.rows == 6
    assert judge(q, QUANTIZED["float16"]) == []


@pytest.mark.fast
def test_known_noise_gives_known_sqnr():
    ref = np.ones((100, 10))
    q = quality(ref, ref + 0.1)  # signal 1000, noise 10: 20 dB
    assert q.sqnr_db == pytest.approx(20.0)
    assert q.signal == pytest.approx(1000.0) and q.noise == pytest.approx(10.0)
    assert q.cosine_min == pytest.approx(1.0)  # a constant shift of a constant row
    half = quality(ref, 0.5 * ref)  # a wrong scale: 10 log10(1 / 0.25)
    assert half.sqnr_db == pytest.approx(10 * math.log10(4.0))
    assert half.cosine_min == pytest.approx(1.0)  # cosine cannot see a scale error
    assert judge(half, QUANTIZED["int8"]) == [
        f"SQNR {half.sqnr_db:.1f} dB < {QUANTIZED['int8'].sqnr_db:g} dB"]


@pytest.mark.fast
def test_permuted_classes_have_low_top1_and_cosine():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 10))
    out = np.roll(ref, 1, axis=1)  # every class moved to its neighbour
    q = quality(ref, out, scores=True)
    assert q.top1 < 0.02  # only rows whose top two the reference itself ties
    assert q.top5 < 0.8
    assert abs(q.cosine_mean) < 0.2
    failed = judge(q, QUANTIZED["dynamic_int8"])
    assert any(f.startswith("top-1 agreement 0.00") for f in failed)
    assert any(f.startswith("cosine") for f in failed)
    # fewer than 5 classes: no top-5
    assert quality(ref[:, :4], ref[:, :4], scores=True).top5 is None


@pytest.mark.fast
def test_a_flip_between_classes_the_reference_ties_is_no_disagreement():
    """Generated inputs give a classifier near-uniform scores: a flip between two classes
    the reference scores within 2% of the row's range is a tie, not a wrong answer."""
    ref = np.array([[1.0, 0.999, -3.0], [1.0, 0.5, -3.0]])
    out = np.array([[0.998, 1.0, -3.0], [0.4, 1.0, -3.0]])  # row 0: tie; row 1: wrong
    assert quality(ref, out, scores=True).top1 == 0.5


@pytest.mark.fast
def test_top5_overlap_ignores_tied_near_zero_classes_but_not_lost_or_permuted_ones():
    """int8 rounds a softmax's many ~0 probabilities to exactly tied zeros, whose
    order is arbitrary: top-5 overlap is judged over the classes that stand out,
    so a good int8 artifact passes, a permuted or class-losing one still fails."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 10)) * 6.0  # a confident classifier
    ref = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    step = 1.0 / 256  # int8 on [0, 1]: what the artifact's softmax output holds
    good = np.round((ref + rng.normal(scale=step / 4, size=ref.shape)) / step) * step
    good = np.clip(good, 0.0, 1.0)
    assert (good == 0).sum(axis=1).mean() > 4  # many exactly tied zeros per row
    # the plain top-5 sets of ties are arbitrary: this good artifact failed them
    plain = np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(
        np.argsort(-ref, axis=1, kind="stable"), np.argsort(-good, axis=1, kind="stable"),
        strict=True)])
    assert plain < QUANTIZED["int8"].top5
    q = quality(ref, good, scores=True)
    assert q.top1 > 0.99 and q.top5 > 0.99
    assert judge(q, QUANTIZED["int8"]) == []
    # permuted classes: the reference's standing classes are not the artifact's
    # (a random top-5 of 10 classes overlaps 0.5 on average)
    permuted = good[:, np.roll(np.arange(10), 3)]
    bad = quality(ref, permuted, scores=True)
    assert bad.top5 < 0.7 and any(f.startswith("top-5 overlap") for f in judge(
        bad, QUANTIZED["int8"]))
    # a class that carries probability must keep it: lost among the tied zeros it
    # gets only the share of the places left to them (2 places, 7 zeros)
    row = np.array([[0.6, 0.3, 0.1, 0, 0, 0, 0, 0, 0, 0]])
    assert top_overlap(row, row).tolist() == [1.0]
    lost = top_overlap(row, [[0.6, 0.0, 0.1, 0, 0, 0, 0, 0, 0, 0.3]])
    assert lost.tolist() == pytest.approx([(1 + 2 / 7 + 1) / 3])
    assert top_overlap(row, [[0.6, 0.2, 0.2, 0, 0, 0, 0, 0, 0, 0]]).tolist() == [1.0]
    assert top_overlap(np.full((1, 10), 0.1), row).tolist() == [1.0]  # nothing stands out
    # five classes: every class is in the top-5, as before
    five = rng.normal(size=(50, 5))
    assert top_overlap(five, five[:, ::-1]).tolist() == [1.0] * 50


@pytest.mark.fast
def test_zero_outputs_and_mismatches():
    z = np.zeros((3, 4))
    both = quality(z, z)
    assert both.sqnr_db == math.inf and both.cosine_min == 1.0
    noisy = quality(z, z + 1e-3)
    assert noisy.sqnr_db == -math.inf and noisy.cosine_min == 0.0
    assert quality(z, np.zeros((3, 5))) is None  # shapes differ
    assert quality(np.arange(3), np.arange(3)) is None  # not a float output
    assert quality(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) is None
    assert judge(None, QUANTIZED["int8"]) == ["no comparable output"]


@pytest.mark.fast
def test_quality_pools_over_cases_as_if_computed_at_once():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(10, 7))
    out = ref + rng.normal(scale=0.1, size=ref.shape)
    whole = quality(ref, out, scores=True)
    pooled = Quality.pooled([quality(ref[:3], out[:3], True), quality(ref[3:], out[3:], True)])
    assert pooled.sqnr_db == pytest.approx(whole.sqnr_db)
    assert pooled.cosine_min == pytest.approx(whole.cosine_min)
    assert pooled.cosine_mean == pytest.approx(whole.cosine_mean)
    assert (pooled.top1, pooled.top5) == pytest.approx((whole.top1, whole.top5))
    assert Quality.from_json(json.loads(json.dumps(whole.to_json()))) == whole


@pytest.mark.fast
def test_score_outputs_by_rule_or_by_name():
    probs = np.full((2, 5, 4), 0.25, dtype="float32")  # per-step probabilities
    assert is_scores(np.zeros((3, 10), "float32"))  # (batch, classes)
    assert is_scores(probs)
    assert not is_scores(np.random.default_rng(0).normal(size=(2, 5, 4)))  # hidden states
    assert not is_scores(np.zeros((3, 1), "float32"))  # one column: no classes
    assert not is_scores(np.zeros((3,), "float32")) and not is_scores(np.zeros((3, 4), "int32"))
    # the user's list wins, both ways
    assert is_scores(np.zeros((2, 5, 4)), "logits", ["logits"])
    assert not is_scores(np.zeros((3, 10)), "embedding", ["logits"])
    assert not is_scores(np.zeros((3, 10)), "embedding", [])


@pytest.mark.fast
def test_one_thresholds_table_for_every_mode():
    assert set(QUANTIZED) == set(QUANTIZATION_MODES) == {
        "float16", "bfloat16", "dynamic_int8", "int8"}
    for mode, t in QUANTIZED.items():
        assert t.mode == mode and Thresholds.from_json(t.to_json()) == t
    # looser as the mode gets coarser
    order = [QUANTIZED[m] for m in ("float16", "bfloat16", "dynamic_int8", "int8")]
    assert [t.sqnr_db for t in order] == sorted((t.sqnr_db for t in order), reverse=True)
    assert thresholds_for(None) is None and thresholds_for("int8") is QUANTIZED["int8"]
    assert quantization_mode({"quantization": "dynamic_int8"}) == "dynamic_int8"


def _report(thresholds, outputs):
    checks = []
    for case, (ref, out) in outputs.items():
        q = quality(ref, out, is_scores(ref))
        _, _, close = compare(ref, out, 0.05, 0.05)
        checks.append(OutputCheck("serve", "logits", case, {"x": [len(ref), 4]},
                                  list(ref.shape), list(out.shape), 0.0, 0.0, 0.05, 0.05,
                                  q is not None if thresholds else close, quality=q,
                                  scores=is_scores(ref)))
    return VerificationReport("litert", "int8", 0.05, 0.05, 0, checks,
                              quantization=thresholds.mode if thresholds else None,
                              thresholds=thresholds, inputs="data")


@pytest.mark.fast
def test_report_json_and_table_hold_metrics_and_thresholds():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(40, 10)) * 100
    good = ref + rng.normal(scale=1.0, size=ref.shape)  # ~40 dB
    report = _report(QUANTIZED["int8"], {"dyn=1": (ref[:1], good[:1]),
                                         "data=39": (ref[1:], good[1:])})
    assert report.ok
    data = json.loads(json.dumps(report.to_json()))
    assert data["quantization"] == "int8" and data["inputs"] == "data"
    assert data["thresholds"] == {"mode": "int8", "sqnr_db": QUANTIZED["int8"].sqnr_db,
                                  "cosine": QUANTIZED["int8"].cosine,
                                  "top1": QUANTIZED["int8"].top1, "top5": QUANTIZED["int8"].top5}
    (row,) = data["summary"]
    whole = quality(ref, good, True)
    assert row["samples"] == 40 and row["sqnr_db"] == pytest.approx(whole.sqnr_db)
    assert row["top1"] == whole.top1 and row["cosine_min"] == pytest.approx(whole.cosine_min)
    assert row["ok"] and row["failed"] == [] and row["scores"]
    assert {"sqnr_db", "cosine_min", "cosine_mean", "top1", "top5", "quality"} <= set(
        data["checks"][0])
    back = VerificationReport.from_json(data)
    assert back.thresholds == QUANTIZED["int8"] and back.checks == report.checks
    text = report.table()
    assert "quantized int8: judged by SQNR, cosine and top-k on data inputs" in text
    assert "SQNR dB" in text and f"{whole.sqnr_db:.1f}" in text
    assert "SQNR>=20 cos>=0.98 top1>=0.9 top5>=0.9" in text
    # permuted classes fail on the pooled numbers, and the table says why
    bad = _report(QUANTIZED["int8"], {"data=40": (ref, np.roll(ref, 1, axis=1))})
    assert not bad.ok and bad.failed_outputs == ["serve/logits"] and bad.failures == []
    assert "serve/logits below the int8 thresholds: SQNR" in bad.table()
    stored = bad.to_json()
    assert stored["ok"] is False and stored["summary"][0]["failed"]
    # identical outputs: SQNR inf is stored as a string and read back
    same = _report(QUANTIZED["float16"], {"dyn=3": (ref[:3], ref[:3])})
    assert json.loads(json.dumps(same.to_json()))["summary"][0]["sqnr_db"] == "inf"


@pytest.mark.fast
def test_float_report_keeps_the_allclose_verdict():
    ref = np.random.default_rng(4).normal(size=(3, 10))
    # outside atol=rtol=0.05 (atol in units of the output's scale, max |ref| < 3)
    report = _report(None, {"dyn=3": (ref, ref + 0.5)})
    assert not report.ok and report.thresholds is None
    assert report.summary()[0]["sqnr_db"] is not None  # shown all the same
    assert "tolerances for int8" in report.table()


# -- LiteRT int8 artifacts judged by the metrics (TensorFlow writes LiteRT natively) ---------

def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y


def _trained_classifier(scale):
    """A digits classifier (subclassed, no get_config, no training argument)
    whose logits are multiplied by ``scale``."""

    class Digits(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(32, activation="relu")
            self.logits = keras.layers.Dense(10)

        def call(self, x):
            return self.logits(self.hidden(x)) * scale

    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = Digits()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], epochs=8, batch_size=32, verbose=0)
    return model, x


def _run_fresh(fresh_process, path, x):
    """The artifact's only output on ``x``, run by the LiteRT interpreter in a fresh process."""
    (name,) = [i["name"] for i in read_litert_metadata(path)["endpoints"]["serve"]["inputs"]]
    (res,) = fresh_process("fresh_formats:litert_run", [(str(path), "serve", [{name: x}])])
    (out,) = res["outputs"][0].values()
    return out


def _half_last_layer(model):
    """The same classifier with its last layer's outputs halved: a wrong scale."""
    weights = [w.numpy() for w in model.logits.weights]
    model.logits.kernel.assign(weights[0] * 0.5)
    model.logits.bias.assign(weights[1] * 0.5)
    return weights


@pytest.mark.backends("tensorflow")
def test_broken_int8_artifact_is_refused_where_allclose_passed_it(tmp_path, fresh_process):
    model, x = _trained_classifier(0.01)  # small outputs: |logits| < 0.2
    calibration = [x[i:i + 1] for i in range(0, 400, 4)]
    weights = _half_last_layer(model)
    path = tmp_path / "broken.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="int8",
                          representative_dataset=calibration)
    model.logits.kernel.assign(weights[0])  # the model as it should be
    model.logits.bias.assign(weights[1])
    test = x[1400:1600]
    out = _run_fresh(fresh_process, path, test)
    ref = keras.ops.convert_to_numpy(model(test))
    assert np.allclose(out, ref, rtol=OLD_INT8[1], atol=OLD_INT8[0])  # the old check passed it
    report = kexport.verify(model, path, data=test, store=False)
    assert not report.ok
    (row,) = report.summary()
    assert row["sqnr_db"] < 8.0 and row["top1"] > 0.9  # argmax kept, scale wrong
    assert row["failed"][0].startswith("SQNR")
    with pytest.raises(VerificationError, match=r"below the int8 thresholds \(SQNR >= 20 dB"):
        raise_if_failed(report, path)


@pytest.mark.backends("tensorflow")
def test_good_int8_artifact_with_large_outputs_is_accepted_where_allclose_failed_it(
        tmp_path, fresh_process):
    model, x = _trained_classifier(100.0)  # large outputs: logits in the hundreds
    calibration = [x[i:i + 1] for i in range(0, 400, 4)]
    path = tmp_path / "good.tflite"
    # the export's own check runs on its calibration samples, stacked into one batch
    kexport.export_litert(model, path, verbose=False, quantization="int8",
                          representative_dataset=calibration, verify=True)
    test = x[1400:1600]
    out = _run_fresh(fresh_process, path, test)
    ref = keras.ops.convert_to_numpy(model(test))
    assert not np.allclose(out, ref, rtol=OLD_INT8[1], atol=OLD_INT8[0])  # the old check failed it
    report = kexport.verify(model, path, data=test)
    assert report.ok, report
    (row,) = report.summary()
    assert row["samples"] == 204 and row["cases"][-1] == "data=200"
    assert QUANTIZED["int8"].sqnr_db <= row["sqnr_db"] < math.inf
    assert row["top1"] >= QUANTIZED["int8"].top1 and row["top5"] >= QUANTIZED["int8"].top5
    data = json.loads(json.dumps(report.to_json()))
    assert data["thresholds"]["mode"] == "int8" and data["summary"][0]["top1"] == row["top1"]


@pytest.mark.backends("tensorflow")
def test_score_outputs_can_be_named(tmp_path):
    model, x = _trained_classifier(1.0)
    path = tmp_path / "d.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="dynamic_int8")
    report = kexport.verify(model, path, data=x[:50], scores=[], store=False)
    assert report.ok and report.summary()[0]["top1"] is None  # not judged as scores
    assert kexport.verify(model, path, data=x[:50], store=False).summary()[0]["top1"] >= 0.95
    with pytest.raises(SignatureError, match=r"Expected `scores` to be a list of output "
                                             r"names. Received: 'output_0'"):
        kexport.verify(model, path, scores="output_0")


@pytest.mark.backends("tensorflow")
def test_cli_verify_json_holds_metrics_and_thresholds(tmp_path):
    from test_cli import kexport as run_cli

    x, y = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,), name="pixels"),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, name="logits")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], epochs=5, verbose=0)
    model.save(tmp_path / "m.keras")
    path = tmp_path / "m.tflite"
    kexport.export_litert(model, path, verbose=False, quantization="dynamic_int8")
    np.savez(tmp_path / "data.npz", pixels=x[1400:1500])
    proc = run_cli("verify", tmp_path / "m.keras", path, "--data", tmp_path / "data.npz",
                   "--json", "--no-store")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["quantization"] == "dynamic_int8"
    assert data["inputs"] == "data"
    assert data["thresholds"] == QUANTIZED["dynamic_int8"].to_json()
    (row,) = data["summary"]
    assert row["samples"] == 104 and row["scores"] is True
    assert row["sqnr_db"] >= QUANTIZED["dynamic_int8"].sqnr_db
    assert row["top1"] >= QUANTIZED["dynamic_int8"].top1
    # the text form shows the same numbers
    text = run_cli("verify", tmp_path / "m.keras", path, "--data", tmp_path / "data.npz",
                   "--no-store", "--scores", "")
    assert text.returncode == 0, text.stderr[-3000:]
    assert "quantized dynamic_int8: judged by SQNR, cosine and top-k on data inputs" in \
        text.stdout
    assert f"{row['sqnr_db']:.1f}" in text.stdout


# -- int8 artifacts are verified on their calibration data (issue #16 item 3) --------------

def _fit_pixels(model):
    """``model`` trained briefly on raw digits pixels in [0, 16] (not standardised,
    as many image pipelines feed them); returns (pixels, labels)."""
    x, y = _digits()
    keras.utils.set_random_seed(0)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(16.0 * x[:1200], y[:1200], epochs=6, batch_size=32, verbose=0)
    return 16.0 * x, y


@pytest.mark.backends("tensorflow")
def test_export_verify_runs_on_positional_calibration_data_not_generated_inputs(tmp_path):
    """``export_model(..., quantization="int8", calibration_data=..., verify=True)``
    judges the artifact on its calibration data (here a ``.npz``-like dict keyed
    ``arr_0``, read positionally by ONNX as by every format); generated
    standard-normal inputs, far from pixels in [0, 16], give meaningless errors."""

    class Pixels(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(64, activation="relu")
            self.probs = keras.layers.Dense(10, activation="softmax")

        def call(self, pixels):
            return self.probs(self.hidden(pixels))

    model = Pixels()
    x, _ = _fit_pixels(model)
    path = tmp_path / "q.onnx"
    kexport.export_model(model, path, format="onnx", verbose=False, quantization="int8",
                         calibration_data={"arr_0": x[:256]}, verify=True)
    stored = kexport.load(path).verification
    assert stored["ok"] is True and stored["inputs"] == "calibration"
    (row,) = stored["summary"]
    assert row["cases"][-1] == "data=256" and row["top1"] >= QUANTIZED["int8"].top1
    # the same artifact on generated inputs: what the check ran on before
    generated = kexport.verify(model, path, store=False)
    assert generated.inputs == "generated" and not generated.ok
    # the user's data wins over the calibration data
    held_out = kexport.verify(model, path, data=x[1400:1500], calibration_data=x[:256],
                              store=False)
    assert held_out.ok and held_out.inputs == "data"
    assert held_out.summary()[0]["cases"][-1] == "data=100"


@pytest.mark.backends("tensorflow")
def test_cli_int8_litert_reads_unnamed_npz_and_verifies_on_it(tmp_path):
    """``kexport export --quantize int8 --calibration F.npz`` on LiteRT with a
    file saved without names (``np.savez(f, x)``: ``arr_0``); the CLI verifies
    on that data, and a good int8 softmax (many probabilities rounded to tied
    zeros) passes top-5."""
    from test_cli import kexport as run_cli

    model = keras.Sequential([keras.Input((64,), name="pixels"),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax", name="probs")])
    x, _ = _fit_pixels(model)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "cal.npz", x[:256])
    out = tmp_path / "q.tflite"
    proc = run_cli("export", tmp_path / "m.keras", "-f", "litert", "-o", out, "--quantize",
                   "int8", "--calibration", tmp_path / "cal.npz", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["verification"]["inputs"] == "calibration"
    (row,) = data["verification"]["summary"]
    assert row["cases"][-1] == "data=256" and row["failed"] == []
    assert row["top5"] >= QUANTIZED["int8"].top5
    assert read_litert_metadata(out)["quantization"] == "int8"
    # verify and report later, from the files alone: on generated inputs the
    # artifact fails and the table says why; with --calibration both judge it as
    # the export did
    blind = run_cli("verify", tmp_path / "m.keras", out, "--no-store")
    assert blind.returncode == 1, blind.stdout[-3000:] + blind.stderr[-3000:]
    assert "int8 artifact was judged on generated inputs" in blind.stdout
    assert "--calibration" in blind.stdout
    again = run_cli("verify", tmp_path / "m.keras", out, "--no-store", "--calibration",
                    tmp_path / "cal.npz", "--json")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads(again.stdout)["inputs"] == "calibration"
    page = tmp_path / "r.html"
    rep = run_cli("report", tmp_path / "m.keras", out, "-o", page, "--calibration",
                  tmp_path / "cal.npz", "--batch", "1", "--seconds", "0.05", "--json")
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    (section,) = json.loads(rep.stdout)["artifacts"]
    assert section["ok"] and section["verification"]["inputs"] == "calibration"
    assert section["localization"] is None
    assert "calibration inputs" in page.read_text(encoding="utf-8")

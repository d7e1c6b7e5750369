"""One model, one verdict: the public ``kexport.verify`` and the exports' own checks agree.

The export's checks (the ONNX Runtime acceptance of a fast converter's graph,
the re-host check before an artifact is placed) and ``kexport.verify`` are one
path: each gathers its cases and calls :func:`kexport.check.verdict.verdict`,
which returns the one report type. Here they judge the same model and
artifact (and the same pairs of outputs) and must give the same answer, and
each is shown to decide through that one function.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kexport
from kexport.check.live import live_reference
from kexport.check.report import VerificationReport
from kexport.check.tolerance import TOLERANCES
from kexport.context import ExportContext
from kexport.formats.onnx._accept import Acceptance, NotTraceable


def _lookup_model() -> keras.Model:
    """Ids into an Embedding of vocabulary 2 (a generator drawing wider ids breaks it)."""
    ids = keras.Input((4,), dtype="int32", name="ids")
    x = keras.Input((6,), name="x")
    e = keras.layers.Flatten()(keras.layers.Embedding(2, 3)(ids))
    h = keras.layers.Concatenate()([e, x])
    return keras.Model([ids, x], keras.layers.Dense(2, name="y")(h))


def _shifted(model: keras.Model, delta: float) -> keras.Model:
    other = keras.models.clone_model(model)
    other.set_weights([w + delta for w in model.get_weights()])
    return other


def _accepted(model: keras.Model, path) -> bool:
    """The ONNX acceptance's verdict on the graph at ``path`` for ``model``."""
    artifact = kexport.load(path)
    endpoint = artifact.endpoints[artifact.default_endpoint]
    names = endpoint.input_names
    reference = live_reference(model, names)
    check = Acceptance(names, endpoint.inputs,
                       lambda flat: reference(dict(zip(names, flat, strict=True))),
                       ExportContext())
    try:
        check(str(path))
    except NotTraceable:
        return False
    return True


@pytest.fixture(scope="module")
def lookup_onnx(tmp_path_factory):
    model = _lookup_model()
    path = tmp_path_factory.mktemp("agree") / "lookup.onnx"
    kexport.export_onnx(model, path, verbose=False)
    return model, path


@pytest.mark.parametrize(("delta", "verdict"), [(0.0, True), (1e-7, True), (0.5, False)])
def test_onnx_acceptance_and_verify_agree(lookup_onnx, delta, verdict):
    model, path = lookup_onnx
    live = model if delta == 0.0 else _shifted(model, delta)
    report = kexport.verify(live, path, store=False)
    assert report.ok is verdict, report.table()
    assert _accepted(live, path) is verdict
    # both ran the same cases: batch 1 and 3
    assert sorted({c.input_shapes["ids"][0] for c in report.checks}) == [1, 3]


def _live(feeds: dict, want: np.ndarray):
    from kexport.rehost.cases import LiveCase

    return {"serve": [LiveCase("serve__b0", len(want) if want.ndim else 1, feeds, [want],
                               True)]}


def _rehost_report(feeds: dict, want: np.ndarray, got: np.ndarray,
                   quantized: str | None = None) -> VerificationReport:
    """The re-host check's report on the child's output ``got``."""
    from kexport.rehost.cases import report_on

    tolerances = TOLERANCES["int8" if quantized else "float32"]
    return report_on(_live(feeds, want), {"out__serve__b0__0": got}, "tf_saved_model",
                     *tolerances, quantized)


def _verify_report(info, feeds: dict, want: np.ndarray, got: np.ndarray,
                   report: VerificationReport) -> VerificationReport:
    """``kexport.verify``'s judgement of one case, as verify_on makes it."""
    from kexport.verify import _checked

    return _checked(report, {"serve": info}, {"k": ("serve", "dyn=1", feeds)},
                    {"serve": lambda _: [want]}, {"k/y": got}, {}, None)


def _verify_verdict(want: np.ndarray, got: np.ndarray) -> bool:
    from kexport.runtime import EndpointInfo, TensorInfo

    info = EndpointInfo("serve", (TensorInfo("x", (None,), "float32"),),
                        (TensorInfo("y", tuple(want.shape), str(want.dtype)),))
    report = VerificationReport("onnx", "float32", *TOLERANCES["float32"], 0)
    return _verify_report(info, {"x": np.zeros(1, "float32")}, want, got, report).ok


def _rehost_verdict(want: np.ndarray, got: np.ndarray) -> bool:
    return _rehost_report({"x": np.zeros(1, "float32")}, want, got).ok


def _acceptance_verdict(want: np.ndarray, got: np.ndarray, monkeypatch) -> bool:
    """The ONNX acceptance's judgement of ``got`` (the graph's output) against ``want``."""
    from kexport.formats.onnx import _accept

    class Session:  # stands for ONNX Runtime: the graph's output is ``got``
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            return [got]

    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    try:
        n = len(_accept.CASE_SIZES)  # one case per size, as the acceptance runs them
        _accept._run_in_onnxruntime(b"", ["x"], [[np.zeros(1, "float32")]] * n,
                                    lambda: [[want]] * n, True)
    except NotTraceable:
        return False
    return True


_F = np.array([[1.0, -2.0, 50.0]], "float32")
PAIRS = {
    "equal": (_F, _F.copy(), True),
    "within float32 tolerance": (_F, _F + np.float32(1e-5), True),
    "outside": (_F, _F + np.float32(0.1), False),
    "NaN at the same place": (np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), True),
    "NaN elsewhere": (np.array([np.nan, 1.0]), np.array([1.0, np.nan]), False),
    "shape": (_F, _F.reshape(3, 1), False),
    "ids off by one": (np.array([1000], "int64"), np.array([1001], "int64"), False),
    "mask flipped": (np.array([True, False]), np.array([True, True]), False),
}


@pytest.mark.parametrize("case", list(PAIRS))
def test_rehost_check_acceptance_and_verify_decide_alike(case, monkeypatch):
    want, got, verdict = PAIRS[case]
    assert _verify_verdict(want, got) is verdict
    assert _rehost_verdict(want, got) is verdict
    assert _acceptance_verdict(want, got, monkeypatch) is verdict


def test_the_three_checks_decide_through_the_one_verdict(monkeypatch):
    """verify, the re-host check and the ONNX acceptance each call
    kexport.check.verdict.verdict, and only it: replaced by one that fails every
    case, all three fail a pair they otherwise pass."""
    import importlib

    import kexport.check.verdict as one
    from kexport.formats.onnx import _accept

    calls = []
    real = one.verdict

    def failing(report, cases, scores=None):
        calls.append(report.format)
        real(report, cases, scores)
        report.error = "failed by the test"
        return report

    want = np.array([[1.0, 2.0]], "float32")
    assert _verify_verdict(want, want) and _rehost_verdict(want, want)
    assert _acceptance_verdict(want, want, monkeypatch)
    # verify's cases are judged in kexport._verify_cases (imported by its name)
    modules = [importlib.import_module(n) for n in ("kexport._verify_cases",
                                                    "kexport.rehost.cases")]
    for module in (*modules, _accept):
        assert module.verdict is real  # each calls the one function
        monkeypatch.setattr(module, "verdict", failing)
    assert not _verify_verdict(want, want)
    assert not _rehost_verdict(want, want)
    assert not _acceptance_verdict(want, want, monkeypatch)
    assert calls == ["onnx", "tf_saved_model", "onnx"]
    assert _verify_verdict(want, want + 1) is _rehost_verdict(want, want + 1) is False


_RNG = np.random.default_rng(5)
_LOGITS = (_RNG.normal(size=(40, 10)) * 100).astype("float32")
QUANTIZED_PAIRS = {  # int8: judged by SQNR, cosine and top-k, not atol/rtol
    "large outputs, ~40 dB": (_LOGITS, _LOGITS + _RNG.normal(size=_LOGITS.shape).astype("f"),
                              True),
    "wrong scale": (_LOGITS, _LOGITS * 0.5, False),
    "permuted classes": (_LOGITS, np.roll(_LOGITS, 1, axis=1), False),
    "small outputs, wrong scale": (_LOGITS * 1e-3, _LOGITS * 5e-4, False),
}


@pytest.mark.parametrize("case", list(QUANTIZED_PAIRS))
def test_rehost_check_and_verify_judge_quantized_alike(case):
    from kexport.check.tolerance import QUANTIZED
    from kexport.runtime import EndpointInfo, TensorInfo

    want, got, verdict = QUANTIZED_PAIRS[case]
    info = EndpointInfo("serve", (TensorInfo("x", (None,), "float32"),),
                        (TensorInfo("y", (None, 10), "float32"),))
    feeds = {"x": np.zeros(40, "float32")}
    report = _verify_report(info, feeds, want, got, VerificationReport(
        "litert", "int8", *TOLERANCES["int8"], 0, quantization="int8",
        thresholds=QUANTIZED["int8"]))
    assert report.ok is verdict, report.table()
    rehosted = _rehost_report(feeds, want, got, quantized="int8")
    assert rehosted.ok is verdict, rehosted.table()
    assert rehosted.thresholds == report.thresholds


_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "int32")
_SEQ = np.random.default_rng(7).normal(size=(2, 5, 4)).astype("float32")
PADDED_PAIRS = {  # (batch, length, features) outputs under a padding mask
    "differs only where padded": (0, 4, True),
    "differs at a real position": (1, 4, False),
}


@pytest.mark.parametrize("case", list(PADDED_PAIRS))
def test_rehost_check_and_verify_leave_out_padded_positions_alike(case):
    """Positions the padding mask pads are undefined: neither check compares them
    (kexport.check.padding), and both still see a difference at a real one."""
    from kexport.runtime import EndpointInfo, TensorInfo

    row, position, verdict = PADDED_PAIRS[case]
    got = _SEQ.copy()
    got[row, position] += 5.0
    feeds = {"padding_mask": _MASK, "x": np.zeros((2, 5), "float32")}
    info = EndpointInfo("serve", (TensorInfo("padding_mask", (None, None), "int32"),
                                  TensorInfo("x", (None, None), "float32")),
                        (TensorInfo("y", (None, None, 4), "float32"),))
    report = _verify_report(info, feeds, _SEQ, got, VerificationReport(
        "onnx", "float32", *TOLERANCES["float32"], 0))
    assert report.ok is verdict and report.checks[0].padded == 2
    rehosted = _rehost_report(feeds, _SEQ, got)
    assert rehosted.ok is verdict and rehosted.checks[0].padded == 2

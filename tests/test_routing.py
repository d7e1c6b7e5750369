"""Fast tier: the route tables and the loop over one cell's routes (no export).

Everything here runs in seconds on any backend: routes are looked up, checked
against models and run with stand-in export functions.
"""

from __future__ import annotations

import keras
import pytest

import kexport
from kexport import artifact, routing
from kexport.context import ExportContext, Printer
from kexport.errors import CaptureError, RouteRefused, UnsupportedRouteError
from kexport.routing import table

pytestmark = pytest.mark.fast


#: the export context every route of a cell receives, as it was built
CONTEXT = ExportContext(overwrite=True)
QUIET = ExportContext(overwrite=True, printer=Printer(on=False))


def _route(name, calls, *, fails=None, kind="native", packages=("keras",), check=None):
    def export(model, filepath, *, context, input_signature=None, **options):
        assert context is CONTEXT or context is QUIET  # passed down, not rebuilt nor read from ambient state
        calls.append((name, options))
        if fails is not None:
            raise fails

    return routing.Route("tensorflow", "onnx", kind, f"route {name}", export, packages,
                         "extra", check=check)


def test_every_cell_is_a_known_backend_and_format_and_natives_come_first():
    cells = routing.matrix()
    assert set(cells) == {(b, f) for b in artifact.BACKENDS for f in artifact.FORMATS}
    for (backend, fmt), found in cells.items():
        assert all(r.backend == backend and r.format == fmt for r in found)
        kinds = [r.kind for r in found]
        assert kinds == sorted(kinds, key=["native", "rehost"].index)
        for r in found:
            assert callable(r.export)
            assert (r.host is not None) == (r.kind == "rehost")
            assert r.host != backend
    assert kexport.routes() == routing.routes()


def test_a_refused_route_hands_over_to_the_next_and_says_so(capsys):
    calls = []
    first = _route("a", calls, fails=RouteRefused("cannot carry it"))
    second = _route("b", calls, kind="rehost")
    routing.export([first, second], object(), "out", context=CONTEXT, opset_version=17)
    assert calls == [("a", {"opset_version": 17}), ("b", {"opset_version": 17})]
    assert "kexport: trying the next route: route b" in capsys.readouterr().out
    calls.clear()
    routing.export([first, second], object(), "out", context=QUIET)
    assert capsys.readouterr().out == ""


def test_the_last_refusal_and_any_other_error_propagate():
    calls = []
    refused = _route("a", calls, fails=RouteRefused("no"))
    with pytest.raises(RouteRefused, match="no"):
        routing.export([refused], object(), "out", context=QUIET)
    assert issubclass(RouteRefused, CaptureError)
    broken = _route("b", calls, fails=ValueError("a real bug"))
    never = _route("c", calls)
    calls.clear()
    with pytest.raises(ValueError, match="a real bug"):
        routing.export([broken, never], object(), "out", context=QUIET)
    assert [c for c, _ in calls] == ["b"]


def test_usable_skips_routes_that_cannot_carry_the_model(monkeypatch):
    calls = []
    picky = _route("a", calls, check=lambda model: "it has a lookup layer" if model else "")
    missing = _route("b", calls, packages=("kexport_no_such_pkg",))
    fine = _route("c", calls)
    monkeypatch.setattr(table, "_ROUTES", [picky, missing, fine])
    assert routing.usable("tensorflow", "onnx", None) == [picky, fine]
    assert routing.usable("tensorflow", "onnx", "model") == [fine]
    assert routing.resolve("tensorflow", "onnx", "model") is fine
    monkeypatch.setattr(table, "_ROUTES", [picky, missing])
    with pytest.raises(UnsupportedRouteError,
                       match=r"native \(route a\): it has a lookup layer; native \(route b\): "
                             r"missing kexport_no_such_pkg: pip install 'kexport\[extra\]'"):
        routing.usable("tensorflow", "onnx", "model")


def test_unknown_format_and_backend_are_typed_errors():
    with pytest.raises(UnsupportedRouteError, match=r"format='onx'\. Did you mean 'onnx'\?"):
        routing.resolve("tensorflow", "onx")
    with pytest.raises(UnsupportedRouteError, match="from the mxnet backend is not available"):
        routing.resolve("mxnet", "onnx")
    with pytest.raises(UnsupportedRouteError, match="ExportArchive is not available on the mxnet"):
        routing.capture_for("mxnet")


def test_archive_hosts_never_point_at_themselves_and_need_no_second_hop():
    for b in artifact.BACKENDS:
        for fmt in artifact.FORMATS:
            host = routing.archive_host(b, fmt)
            assert host != b and (host is None or routing.archive_host(host, fmt) is None)
    assert routing.capture_host("torch") == "tensorflow"
    assert routing.capture_host(keras.backend.backend()) in (None, "tensorflow")


def test_step_labels_come_from_the_pipeline_and_output_from_the_printer(capsys):
    from kexport.context import PIPELINE, step_label

    assert PIPELINE == ("plan", "capture", "convert", "finish", "check", "place")
    assert step_label("capture", "jax backend") == "Step 2/6 (capture, jax backend)"
    assert step_label("place") == "Step 6/6 (place)"
    with pytest.raises(ValueError):
        step_label("write")  # not a step of the pipeline: no label typed by hand
    assert Printer.resolve(None).on and Printer.resolve(True).on
    assert not Printer.resolve(False).on and Printer(on=False).say is None
    Printer(on=False)("hidden")
    Printer.resolve(None)("shown")
    assert capsys.readouterr().out == "shown\n"


def test_a_route_gives_an_outcome_and_every_refusal_is_named():
    """A route's refusal is its result (the reason, as its typed error); when every
    route of the cell refused, the last one's error is raised, its type kept and
    every earlier reason in its message."""
    from kexport.errors import DynamicAxisError

    calls = []
    served = _route("a", calls)
    outcome = served.run(object(), "out", context=QUIET, opset_version=17)
    assert outcome.ok and outcome.by is served and outcome.refused is None
    first = _route("a", calls, fails=RouteRefused("no names for the layers\nmore detail"))
    second = _route("b", calls, kind="rehost",
                    fails=DynamicAxisError("axis 0 was fixed", axes=[("x", 0)]))
    outcome = first.run(object(), "out", context=QUIET)
    assert not outcome.ok and outcome.reason == "no names for the layers"
    with pytest.raises(DynamicAxisError,
                       match=r"^axis 0 was fixed\nRefused before it: native \(route a\): "
                             r"no names for the layers$") as info:
        routing.export([first, second], object(), "out", context=QUIET)
    assert info.value.axes == [("x", 0)]

"""The report's HTML page, rendered from its JSON data alone.

One self-contained file: inline CSS, inline SVG, no script, no font or image
to fetch, and a Content-Security-Policy that forbids any load, so the page
opens the same offline. Every text from the data is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from kexport._summary import human_size
from kexport.reporting.svg import histogram_svg

__all__ = ["fmt_error", "fmt_ms", "fmt_size", "render_html"]

#: Operators listed per endpoint (the rest are summed up).
TOP_OPERATORS = 24

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #d7dce5}
h3{font-size:15px;margin:16px 0 4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d7dce5;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#11702f;font-weight:600}.fail{color:#b3261e;font-weight:600}
.muted{color:#5b6475}.box{border:1px solid #d7dce5;border-radius:6px;padding:8px 12px;margin:8px 0}
.finding{border-color:#b3261e;background:#fff6f5}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.hists{display:flex;flex-wrap:wrap;gap:8px}
svg.hist rect.bin{fill:#4a78c2}svg.hist rect.exact{fill:#8fb26b}svg.hist rect.bad{fill:#b3261e}
svg.hist .axis{stroke:#5b6475}svg.hist .tol{stroke:#b3261e;stroke-dasharray:4 3}
svg.hist text{font-size:10px;fill:#1d2330;text-anchor:middle}
svg.hist text.tollabel{fill:#b3261e;text-anchor:start}svg.hist text.caption{text-anchor:start}
"""

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'")


def fmt_error(value: Any) -> str:
    """An error or metric as the page prints it (``'1.23e-07'``, ``'inf'``, ``'-'``)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{float(value):.3g}"


def fmt_ms(value: Any) -> str:
    """Milliseconds as the page prints them (``'0.125'``)."""
    return "-" if value is None else f"{float(value):.3f}"


def fmt_size(n: Any) -> str:
    """A size as the page prints it: ``'10.5 KiB (10727 bytes)'``."""
    return "-" if n is None else f"{human_size(int(n))} ({int(n)} bytes)"


def _e(value: Any) -> str:
    return escape("-" if value is None else str(value), quote=True)


def _pass_label(ok: bool) -> str:
    return '<span class="pass">PASS</span>' if ok else '<span class="fail">FAIL</span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()
           ) -> str:
    """A table of already-escaped cells; ``numeric`` columns align right."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _shape(shape: Sequence[Any]) -> str:
    dims = ["None" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _max_abs(section: Mapping[str, Any]) -> Any:
    rows = (section.get("verification") or {}).get("summary") or []
    values = [r["max_abs"] for r in rows]
    if any(isinstance(v, str) for v in values):
        return next(v for v in values if isinstance(v, str))
    return max(values) if values else None


def _quantization(section: Mapping[str, Any]) -> str:
    record = section.get("quantization")
    if not record:
        return "float (not quantized)"
    calib = record.get("calibration_samples")
    return f"{record.get('mode')} (compute {record.get('precision')}" + (
        f", calibrated on {calib} rows" if calib else "") + ")"


def render_html(data: Mapping[str, Any]) -> str:
    """The page for a report's data (:func:`kexport.reporting.gather.collect`)."""
    model = data.get("model", {})
    sections = data.get("artifacts", [])
    title = f"kexport report: {model.get('name')}"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="muted">{_e(model.get("class_name"))} on the {_e(model.get("backend"))} '
            f'backend (Keras {_e(model.get("keras_version"))}), '
            f'{_e(model.get("parameters"))} parameters'
            + (f', from <code>{_e(model.get("file"))}</code>' if model.get("file") else "")
            + f'. Generated {_e(data.get("generated"))} by kexport '
            f'{_e(data.get("producer_version"))}. Overall: {_pass_label(bool(data.get("ok")))}</p>',
            _overview(data), _keras_latency(data)]
    for i, section in enumerate(sections):
        body.append(_artifact(i, section))
    settings = data.get("settings", {})
    body.append(f'<p class="muted">Inputs: {_e(settings.get("inputs"))} (seed '
                f'{_e(settings.get("seed"))}); histograms on {_e(settings.get("histogram_rows"))}'
                f' rows; latency: one warm-up call, then at least 3 calls and up to '
                f'{_e(settings.get("seconds"))} s per runner and batch size; runtimes in '
                f'{_e(settings.get("precision"))}. The data of this page: '
                f'<code>kexport report ... --json FILE</code>.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _overview(data: Mapping[str, Any]) -> str:
    rows = []
    for i, s in enumerate(data.get("artifacts", [])):
        latency = s.get("latency") if isinstance(s.get("latency"), list) else []
        first = latency[0] if latency else {}
        rows.append([f'<a href="#artifact-{i}">{_e(s.get("name"))}</a>', _e(s.get("format")),
                     _e((s.get("route") or {}).get("text")), _e(fmt_size(s.get("size"))),
                     _e(_quantization(s)), _e(fmt_error(_max_abs(s))),
                     _e(f"{fmt_ms(first.get('p50_ms'))} (batch {first.get('batch')})"
                        if first else "-"),
                     _pass_label(bool(s.get("ok")))])
    return "<h2>Artifacts</h2>" + _table(
        ["artifact", "format", "route", "size", "precision", "max abs err", "p50 ms",
         "verification"], rows, numeric=(5, 6))


def _keras_latency(data: Mapping[str, Any]) -> str:
    rows = [[_e(r.get("batch")), _e(fmt_ms(r.get("p50_ms"))), _e(fmt_ms(r.get("p90_ms"))),
             _e(r.get("runs"))] for r in data.get("keras_latency", [])]
    if not rows:
        return ""
    backend = (data.get("model") or {}).get("backend")
    return (f"<h3>Live Keras model ({_e(backend)} backend)</h3>"
            + _table(["batch", "p50 ms", "p90 ms", "runs"], rows, numeric=(0, 1, 2, 3)))


def _artifact(i: int, s: Mapping[str, Any]) -> str:
    out = [f'<section id="artifact-{i}"><h2>{_e(s.get("name"))} ({_e(s.get("format"))}) '
           f"{_pass_label(bool(s.get('ok')))}</h2>"]
    route = s.get("route") or {}
    out.append(_table(["route", "size", "precision / quantization", "runtime computes in",
                       "default endpoint"],
                      [[_e(route.get("text")), _e(fmt_size(s.get("size"))),
                        _e(_quantization(s)), _e(s.get("runtime_precision")),
                        _e(s.get("default_endpoint"))]]))
    if s.get("error"):
        out.append(f'<p class="fail">{_e(s["error"])}</p>')
    out.append(_verification(s.get("verification") or {}))
    out.append(_localization(s.get("localization")))
    out.append(_histograms(s.get("histograms")))
    out.append(_latency(s.get("latency")))
    out.append(_endpoints(s.get("endpoints") or []))
    out.append(_operators(s.get("operators")))
    files = s.get("files") or []
    out.append(f"<h3>Files ({len(files)})</h3>" + _table(
        ["file", "bytes"], [[f"<code>{_e(f['name'])}</code>", _e(f["bytes"])] for f in files],
        numeric=(1,)))
    out.append("</section>")
    return "\n".join(out)


def _verification(v: Mapping[str, Any]) -> str:
    t = v.get("thresholds")
    if t:
        rule = (f"quantized {_e(v.get('quantization'))}: judged by SQNR &gt;= "
                f"{_e(t.get('sqnr_db'))} dB, cosine &gt;= {_e(t.get('cosine'))}, top-1 &gt;= "
                f"{_e(t.get('top1'))}")
    else:
        rule = (f"tolerances for {_e(v.get('precision'))}: atol {_e(v.get('atol'))}, "
                f"rtol {_e(v.get('rtol'))}")
    head = (f"<h3>Verification {_pass_label(bool(v.get('ok')))}</h3><p class=\"muted\">"
            f"{_e(v.get('format'))}, runtime {_e(v.get('runtime_precision'))}, {rule}, on "
            f"{_e(v.get('inputs'))} inputs (seed {_e(v.get('seed'))}), in a fresh process.</p>")
    rows = []
    for r in v.get("summary", []):
        tol = ("exact" if not r.get("atol") and not r.get("rtol")
               else f"atol={r.get('atol')} rtol={r.get('rtol')}")
        rows.append([_e(r.get("endpoint")), _e(r.get("output")), _e(" ".join(r.get("cases", []))),
                     "ok" if r.get("shape_match") else '<span class="fail">MISMATCH</span>',
                     _e(fmt_error(r.get("max_abs"))), _e(fmt_error(r.get("max_rel"))),
                     _e(fmt_error(r.get("sqnr_db"))), _e(fmt_error(r.get("cosine_min"))),
                     _e(fmt_error(r.get("top1"))), _e(tol), _pass_label(bool(r.get("ok")))])
    table = _table(["endpoint", "output", "cases", "shape", "max abs err", "max rel err",
                    "SQNR dB", "cos min", "top-1", "tolerance", "result"], rows,
                   numeric=(4, 5, 6, 7, 8))
    notes = []
    if v.get("error"):
        notes.append(f'<p class="fail">error: {_e(v["error"])}</p>')
    for r in v.get("summary", []):
        if r.get("failed"):
            notes.append(f'<p class="fail">{_e(r["endpoint"])}/{_e(r["output"])}: '
                         f'{_e("; ".join(r["failed"]))}</p>')
    for c in v.get("checks", []):
        if not c.get("ok") and c.get("error"):
            notes.append(f'<p class="fail">{_e(c["endpoint"])}/{_e(c["output"])} '
                         f'[{_e(c["case"])}]: {_e(c["error"])}</p>')
    return head + (table if rows else "") + "".join(notes)


def _fmt_tolerance(value: Any) -> str:
    """A layer's tolerance (``{"atol", "rtol"}``, or a quantized mode's
    thresholds) as ``'atol 1e-05, rtol 1e-05'``."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {v if isinstance(v, str) else fmt_error(v)}"
                         for k, v in value.items() if v is not None)
    return fmt_error(value)


def _localization(f: Mapping[str, Any] | None) -> str:
    if not f:
        return ""
    out = [f'<div class="box finding"><h3>Where it goes wrong</h3><p>{_e(f.get("message"))}'
           "</p>"]
    rows = []
    for r in f.get("layers", []):
        mark = "&#9654; " if r.get("path") == f.get("culprit") else ""
        rows.append([mark + f"<code>{_e(r.get('path'))}</code>", _e(r.get("class_name")),
                     _e(fmt_error(r.get("input_error"))), _e(fmt_error(r.get("output_error"))),
                     _e(_fmt_tolerance(r.get("tolerance"))),
                     _pass_label(bool(r.get("ok"))), _e(r.get("origin")),
                     _e(", ".join(str(o) for o in (r.get("ops") or [])))])
    if rows:
        total = f.get("total_layers")
        how = ("read from the artifact's own intermediate values"
               if f.get("method") == "artifact" else "from a fresh probe export of the model")
        out.append(f'<p class="muted">{len(rows)} of {_e(total)} layers, in the model\'s '
                   f"order, {how}:</p>")
        out.append(_table(["layer", "class", "input error", "output error", "tolerance",
                           "result", "origin", "first ops in the artifact"], rows,
                          numeric=(2, 3, 4)))
    out.append("</div>")
    return "".join(out)


def _histograms(hists: Any) -> str:
    if isinstance(hists, Mapping):
        return f'<h3>Error histograms</h3><p class="fail">{_e(hists.get("error"))}</p>'
    if not hists:
        return ""
    parts = ['<h3>Error histograms</h3><p class="muted">|artifact - model| per output of '
             'the default endpoint, every element of one batch; the dashed line is the '
             'absolute tolerance.</p><div class="hists">']
    for h in hists:
        if h.get("error"):
            parts.append(f'<p class="fail">{_e(h.get("output"))}: {_e(h["error"])}</p>')
            continue
        parts.append(f'<figure><figcaption>{_e(h.get("output"))}: max '
                     f'{_e(fmt_error(h.get("max_abs")))}, {_e(h.get("exact"))} of '
                     f'{_e(h.get("elements"))} exact</figcaption>{histogram_svg(h)}</figure>')
    parts.append("</div>")
    return "".join(parts)


def _latency(rows: Any) -> str:
    if isinstance(rows, Mapping):
        return f'<h3>Latency</h3><p class="fail">{_e(rows.get("error"))}</p>'
    if not rows:
        return ""
    body = [[_e(r.get("batch")), _e(fmt_ms(r.get("p50_ms"))), _e(fmt_ms(r.get("p90_ms"))),
             _e(fmt_ms(r.get("keras_p50_ms"))), _e(fmt_ms(r.get("keras_p90_ms"))),
             _e(r.get("runs"))] for r in rows]
    return "<h3>Latency (default endpoint)</h3>" + _table(
        ["batch", "p50 ms", "p90 ms", "Keras p50 ms", "Keras p90 ms", "runs"], body,
        numeric=(0, 1, 2, 3, 4, 5))


def _endpoints(endpoints: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for e in endpoints:
        name = _e(e.get("name")) + (" (default)" if e.get("default") else "")
        for role in ("inputs", "outputs"):
            for t in e.get(role, []):
                rows.append([name, role[:-1], f"<code>{_e(t.get('name'))}</code>",
                             _e(t.get("dtype")), _e(_shape(t.get("shape", [])))])
    return "<h3>Endpoints</h3>" + _table(["endpoint", "", "tensor", "dtype", "shape"], rows)


def _operators(ops: Any) -> str:
    if not ops:
        return '<h3>Operators</h3><p class="muted">not listed by this format\'s runtime</p>'
    if "error" in ops and isinstance(ops["error"], str):
        return f'<h3>Operators</h3><p class="fail">{_e(ops["error"])}</p>'
    parts = ["<h3>Operators</h3>"]
    for endpoint, counts in ops.items():
        items = list(counts.items())
        shown = items[:TOP_OPERATORS]
        rest = sum(n for _, n in items[TOP_OPERATORS:])
        rows = [[f"<code>{_e(op)}</code>", _e(n)] for op, n in shown]
        if rest:
            rows.append([f"{len(items) - TOP_OPERATORS} more kinds", _e(rest)])
        parts.append(f"<p>{_e(endpoint)}: {sum(counts.values())} operators, {len(items)} "
                     "kinds</p>" + _table(["operator", "count"], rows, numeric=(1,)))
    return "".join(parts)

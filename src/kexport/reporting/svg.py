"""The error histogram of one output as inline SVG (a few rects, no script).

Input is a histogram of :func:`kexport.reporting.gather.histogram`; every
text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["histogram_svg"]

_W, _H = 460, 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 36, 10, 22, 38


def _decade(e: int) -> str:
    return f"1e{e}"


def histogram_svg(h: Mapping[str, Any]) -> str:
    """An SVG bar chart of ``|artifact - model|`` by decade, with the absolute
    tolerance marked (a dashed line); zero errors in a bar of their own."""
    bars: list[tuple[str, int, str]] = []  # label, count, css class
    if h.get("exact"):
        bars.append(("0", int(h["exact"]), "exact"))
    bins = list(h.get("bins", []))
    if h.get("below"):
        first = bins[0]["exponent"] if bins and bins[0]["exponent"] is not None else 0
        bars.append((f"<{_decade(first)}", int(h["below"]), "bin"))
    first_bin = len(bars)
    for b in bins:
        label = "inf" if b["exponent"] is None else _decade(b["exponent"])
        bars.append((label, int(b["count"]), "bin"))
    if h.get("nan"):
        bars.append(("nan", int(h["nan"]), "bad"))
    title = f"|artifact - model| of output {h.get('output')}: {h.get('elements', 0)} values"
    if not bars:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="40" '
                f'role="img"><title>{escape(title)}</title><text x="4" y="24">no values'
                f'</text></svg>')
    width = (_W - _LEFT - _RIGHT) / len(bars)
    plot_h = _H - _TOP - _BOTTOM
    top = max(c for _, c, _ in bars) or 1
    atol = float(h.get("atol") or 0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
             f'viewBox="0 0 {_W} {_H}" role="img" class="hist">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" '
             f'y2="{_TOP + plot_h}" class="axis"/>']
    for i, (label, count, css) in enumerate(bars):
        x = _LEFT + i * width
        bar_h = plot_h * count / top
        y = _TOP + plot_h - bar_h
        parts.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{max(width - 4, 1):.1f}" '
                     f'height="{bar_h:.1f}" class="{css}"><title>{escape(label)}: {count}'
                     f'</title></rect>')
        if count:
            parts.append(f'<text x="{x + width / 2:.1f}" y="{y - 3:.1f}" class="count">'
                         f'{count}</text>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{_TOP + plot_h + 14}" '
                     f'class="tick">{escape(label)}</text>')
    exponents = [b["exponent"] for b in bins if b["exponent"] is not None]
    if atol > 0 and exponents:
        at = math.log10(atol) - exponents[0]
        if 0 <= at <= len(exponents):
            x = _LEFT + (first_bin + at) * width
            parts.append(f'<line x1="{x:.1f}" y1="{_TOP - 8}" x2="{x:.1f}" '
                         f'y2="{_TOP + plot_h}" class="tol"/>')
            parts.append(f'<text x="{x + 3:.1f}" y="{_TOP - 10}" class="tollabel">'
                         f'atol {atol:g}</text>')
    parts.append(f'<text x="{_LEFT}" y="{_H - 6}" class="caption">|error| by decade '
                 f'(lower edge), {int(h.get("elements", 0))} values</text>')
    parts.append("</svg>")
    return "".join(parts)

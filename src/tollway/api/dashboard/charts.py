"""Bar charts as inline SVG, drawn on the server: no script, no chart library, nothing to build.

Each chart has a y axis with round ticks and gridlines, labels along the x axis, a ``<title>`` on every bar for
the browser's tooltip, and the figures as data attributes (``data-total`` on the chart, ``data-value`` on each
bar) for whatever reads the page other than a person. Stacked series share a bar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 210
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 26


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]
    tone: str
    """A CSS class: s-main, s-alt, s-bad."""


def nice_ticks(top: float, count: int = 4, whole: bool = False) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to at least ``top``; ``whole``: no step below
    1, for things that come in whole numbers."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if whole:
        step = max(1, math.ceil(step))
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def bar_chart(name: str, labels: Sequence[str], series: Sequence[Series], fmt: Callable[[float], str],
              tick_fmt: Callable[[float], str], label_every: int = 1, whole: bool = True) -> Markup:
    count = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    ticks = nice_ticks(max(totals, default=0), whole=whole)
    scale = (HEIGHT - TOP - BOTTOM) / ticks[-1]
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / max(count, 1)
    bar_w = max(1.0, slot * 0.72)
    base_y = HEIGHT - BOTTOM
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" data-chart="{escape(name)}" '
             f'data-total="{_num(sum(totals))}" aria-label="{escape(name)}: {escape(fmt(sum(totals)))} in all">']
    for tick in ticks:
        y = base_y - tick * scale
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 3.5:.1f}" text-anchor="end">'
                     f'{escape(tick_fmt(tick))}</text>')
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        y = base_y
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = max(value * scale, 1.0)
            y -= h
            parts.append(f'<rect class="bar {s.tone}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'data-series="{escape(s.name)}" data-label="{escape(label)}" data-value="{_num(value)}">'
                         f'<title>{escape(label)} · {escape(s.name)}: {escape(fmt(value))}</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text class="label" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                         f'{escape(label)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base_y}" y2="{base_y}"/></svg>')
    return Markup("".join(parts))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"

"""Line charts on logarithmic axes as plain SVG text: no dependency, and the
same figures always give the same bytes (so a chart under version control
changes only when its numbers do)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

FONT = "font-family:DejaVu Sans,Arial,sans-serif"
PANEL_WIDTH, PANEL_HEIGHT = 400, 300
MARGIN_LEFT, MARGIN_TOP, MARGIN_BOTTOM = 64, 40, 46
LEGEND_WIDTH = 300


@dataclass
class Series:
    """One line; a point drawn hollow marks something the reader should notice."""

    label: str
    color: str
    points: list[tuple[float, float, bool]]  # x, y, filled
    dashed: bool = False


@dataclass
class Reference:
    """A horizontal line across a panel: a target or a floor."""

    y: float
    label: str


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    references: list[Reference] = field(default_factory=list)
    x_ticks: list[float] = field(default_factory=list)  # default: 1-2-5 per decade


@dataclass
class Row:
    """Panels side by side, with one legend (its series are drawn in each panel)."""

    panels: list[Panel]
    legend: list[Series]
    note: str = ""


def _n(value: float) -> str:
    """A coordinate: two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


class LogAxis:
    """Maps values onto pixels, logarithmically, over whole 1-2-5 steps."""

    def __init__(self, values: list[float], start: float, end: float) -> None:
        positive = [v for v in values if v > 0] or [1.0]
        self.low = _step_below(min(positive))
        self.high = _step_above(max(positive))
        if self.high <= self.low:
            self.high = _step_above(self.low * 1.01)
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        value = min(max(value, self.low), self.high)
        share = math.log(value / self.low) / math.log(self.high / self.low)
        return self.start + share * (self.end - self.start)

    def ticks(self) -> list[float]:
        found = self._ticks((1, 2, 5))
        if self.high / self.low <= 10:  # a narrow range: finer steps
            found = self._ticks((1, 1.2, 1.5, 2, 3, 5, 7))
        if len(found) > 7:  # a wide one: the decades only
            found = [v for v in found if math.isclose(10 ** round(math.log10(v)), v)]
        return found

    def _ticks(self, steps: tuple[float, ...]) -> list[float]:
        found = []
        decade = 10.0 ** math.floor(math.log10(self.low))
        while decade <= self.high:
            for step in steps:
                value = round(step * decade, 12)
                if self.low * 0.999 <= value <= self.high * 1.001:
                    found.append(value)
            decade *= 10
        return found


def _steps_around(value: float) -> list[float]:
    decade = 10.0 ** math.floor(math.log10(value))
    return [step * decade for step in (0.5, 1, 2, 5, 10, 20)]


def _step_below(value: float) -> float:
    return max(s for s in _steps_around(value) if s <= value * 1.0001)


def _step_above(value: float) -> float:
    return min(s for s in _steps_around(value) if s >= value * 0.9999)


def _panel(panel: Panel, left: float, top: float) -> list[str]:
    plot_left, plot_top = left + MARGIN_LEFT, top + MARGIN_TOP
    plot_right = left + PANEL_WIDTH - 12
    plot_bottom = top + PANEL_HEIGHT - MARGIN_BOTTOM
    xs = [x for s in panel.series for x, _, _ in s.points] + panel.x_ticks
    ys = [y for s in panel.series for _, y, _ in s.points] + [r.y for r in panel.references]
    x_axis = LogAxis(xs, plot_left, plot_right)
    y_axis = LogAxis(ys, plot_bottom, plot_top)
    out = [
        f'<text x="{_n(left + PANEL_WIDTH / 2)}" y="{_n(top + 18)}" text-anchor="middle"'
        f' font-size="13" font-weight="bold">{escape(panel.title)}</text>',
        f'<rect x="{_n(plot_left)}" y="{_n(plot_top)}" width="{_n(plot_right - plot_left)}"'
        f' height="{_n(plot_bottom - plot_top)}" fill="none" stroke="#999"/>',
    ]
    for value in panel.x_ticks or x_axis.ticks():
        x = x_axis(value)
        out += [
            f'<line x1="{_n(x)}" y1="{_n(plot_top)}" x2="{_n(x)}" y2="{_n(plot_bottom)}"'
            ' stroke="#eee"/>',
            f'<text x="{_n(x)}" y="{_n(plot_bottom + 14)}" text-anchor="middle"'
            f' font-size="10">{_label(value)}</text>',
        ]
    for value in y_axis.ticks():
        y = y_axis(value)
        out += [
            f'<line x1="{_n(plot_left)}" y1="{_n(y)}" x2="{_n(plot_right)}" y2="{_n(y)}"'
            ' stroke="#eee"/>',
            f'<text x="{_n(plot_left - 4)}" y="{_n(y + 3)}" text-anchor="end"'
            f' font-size="10">{_label(value)}</text>',
        ]
    out += [
        f'<text x="{_n((plot_left + plot_right) / 2)}" y="{_n(plot_bottom + 32)}"'
        f' text-anchor="middle" font-size="11">{escape(panel.x_label)}</text>',
        f'<text transform="translate({_n(left + 14)},{_n((plot_top + plot_bottom) / 2)})'
        f' rotate(-90)" text-anchor="middle" font-size="11">{escape(panel.y_label)}</text>',
    ]
    for reference in panel.references:
        y = y_axis(reference.y)
        out += [
            f'<line x1="{_n(plot_left)}" y1="{_n(y)}" x2="{_n(plot_right)}" y2="{_n(y)}"'
            ' stroke="#000" stroke-width="0.8" stroke-dasharray="2,3"/>',
            f'<text x="{_n(plot_right - 3)}" y="{_n(y - 3)}" text-anchor="end"'
            f' font-size="9">{escape(reference.label)}</text>',
        ]
    for series in panel.series:
        points = [(x_axis(x), y_axis(y), filled) for x, y, filled in series.points if y > 0]
        if not points:
            continue
        dash = ' stroke-dasharray="6,3"' if series.dashed else ""
        path = " ".join(f"{_n(x)},{_n(y)}" for x, y, _ in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{series.color}"'
            f' stroke-width="1.6"{dash}/>'
        )
        for x, y, filled in points:
            fill = series.color if filled else "#fff"
            out.append(
                f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{fill}"'
                f' stroke="{series.color}" stroke-width="1.2"/>'
            )
    return out


def _legend(row: Row, left: float, top: float) -> list[str]:
    out = []
    y = top + MARGIN_TOP + 4
    for series in row.legend:
        dash = ' stroke-dasharray="6,3"' if series.dashed else ""
        out += [
            f'<line x1="{_n(left)}" y1="{_n(y)}" x2="{_n(left + 22)}" y2="{_n(y)}"'
            f' stroke="{series.color}" stroke-width="1.6"{dash}/>',
            f'<circle cx="{_n(left + 11)}" cy="{_n(y)}" r="3" fill="{series.color}"/>',
            f'<text x="{_n(left + 28)}" y="{_n(y + 4)}" font-size="10">'
            f"{escape(series.label)}</text>",
        ]
        y += 15
    if row.note:
        for line in row.note.split("\n"):
            y += 13
            out.append(
                f'<text x="{_n(left)}" y="{_n(y)}" font-size="9" fill="#555">{escape(line)}</text>'
            )
    return out


def render(title: str, rows: list[Row], footer: str = "") -> str:
    """The SVG document: ``rows`` of panels, each row with its legend on the right."""
    columns = max(len(row.panels) for row in rows)
    width = columns * PANEL_WIDTH + LEGEND_WIDTH
    height = 34 + len(rows) * PANEL_HEIGHT + (18 if footer else 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" style="{FONT}">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{_n(width / 2)}" y="20" text-anchor="middle" font-size="14">'
        f"{escape(title)}</text>",
    ]
    for index, row in enumerate(rows):
        top = 30 + index * PANEL_HEIGHT
        for column, panel in enumerate(row.panels):
            out += _panel(panel, column * PANEL_WIDTH, top)
        out += _legend(row, columns * PANEL_WIDTH + 6, top)
    if footer:
        out.append(
            f'<text x="8" y="{_n(height - 6)}" font-size="9" fill="#555">{escape(footer)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"

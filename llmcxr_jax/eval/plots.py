"""Small scientific plots drawn with Pillow alone: `line_plot_png`.

Why: the repository's figures (e.g. learning curves of the demo runs) need a plot with axes,
ticks, error bars and a legend, but matplotlib is not a dependency and should not become one
for a handful of PNGs; Pillow already is. The geometry is kept in pure functions
(`data_to_pixel`, `nice_step`, `nice_ticks`) so tests can check the pixels exactly: markers are
centred on `round(data_to_pixel(...))` and error-bar caps lie on the rounded pixel row of lo/hi.

Series are dicts: `{"label": str, "points": [(x, y, lo, hi), ...]}` with lo/hi None for no
error bar, optional `"line": True` to join the points, and optional `"annotations"` (one str or
None per point) drawn in small type beside the markers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
Box = tuple[int, int, int, int]  # left, top, right, bottom pixel of the plot area

SIZE = (900, 560)
# Fixed margins, so the plot area (and therefore every data pixel) is known in advance: left
# holds the rotated y label and the tick labels, bottom the tick labels and the x label.
MARGINS = (92, 52, 24, 66)  # left, top, right, bottom
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
COLOURS: tuple[Colour, ...] = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
)
MARKERS = ("circle", "square", "triangle", "diamond", "triangle_down")
MARKER_R = 6  # marker half-size, px
CAP_HALF = 6  # error-bar cap half-width, px
BAR_WIDTH = 2  # whisker and cap thickness, px
BLACK: Colour = (0, 0, 0)
GREY: Colour = (110, 110, 110)
GRID: Colour = (232, 232, 232)
WHITE: Colour = (255, 255, 255)


@dataclass(frozen=True)
class Layout:
    """Where a plot was drawn: the plot area in pixels and its data limits (for tests)."""

    box: Box
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    size: tuple[int, int]


def data_to_pixel(
    x: float, y: float, *, box: Box, xlim: tuple[float, float], ylim: tuple[float, float]
) -> tuple[float, float]:
    """Data coordinates to (unrounded) pixel coordinates; y grows upwards in data, down in px.

    xlim[0] maps to the box's left edge, xlim[1] to its right; ylim[0] to the bottom edge and
    ylim[1] to the top. Drawing rounds the result to the nearest pixel.
    """
    left, top, right, bottom = box
    px = left + (x - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)
    py = bottom - (y - ylim[0]) / (ylim[1] - ylim[0]) * (bottom - top)
    return px, py


def nice_step(span: float, max_ticks: int = 6) -> float:
    """The smallest step of 1, 2 or 5 x 10^k that cuts `span` into at most `max_ticks` parts.

    Why: tick labels at such steps (0.1, 0.2, 5, 10...) are what a reader can interpolate.
    """
    if not span > 0 or not math.isfinite(span):
        raise ValueError(f"span must be positive and finite, got {span}")
    raw = span / max_ticks
    base = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 5.0, 10.0):
        step = mult * base
        if step >= raw * (1 - 1e-9):
            return step
    return 10.0 * base  # unreachable: 10 * base > raw always


def _decimals(step: float) -> int:
    """Digits after the point needed to write multiples of `step` exactly."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """The multiples of `nice_step(hi - lo)` that lie within [lo, hi], rounded for display."""
    step = nice_step(hi - lo, max_ticks)
    digits = _decimals(step) + 1
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, digits) for k in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as the step needs (0.5, 0.6... or 10, 20...)."""
    return f"{value:.{_decimals(step)}f}"


def auto_limits(values: Iterable[float], max_ticks: int = 6) -> tuple[float, float]:
    """Limits that enclose `values`, widened outwards to whole nice steps."""
    vals = [float(v) for v in values]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, max_ticks)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` where this Pillow supports sizes (>= 10.1), else default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: no size argument
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def _marker(draw: ImageDraw.ImageDraw, kind: str, cx: int, cy: int, colour: Colour) -> None:
    """A filled marker centred on (cx, cy); its centre pixel is always `colour`."""
    r = MARKER_R
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        s = r - 1
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r - 1), (cx + r + 1, cy + r), (cx - r - 1, cy + r)], fill=colour)
    elif kind == "triangle_down":
        draw.polygon([(cx, cy + r + 1), (cx + r + 1, cy - r), (cx - r - 1, cy - r)], fill=colour)
    else:  # diamond
        d = r + 1
        draw.polygon([(cx, cy - d), (cx + d, cy), (cx, cy + d), (cx - d, cy)], fill=colour)


def _hbar(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, colour: Colour) -> None:
    """A horizontal bar BAR_WIDTH px thick whose first row is y (so row y is always covered)."""
    draw.rectangle((x0, y, x1, y + BAR_WIDTH - 1), fill=colour)


def _error_bar(draw: ImageDraw.ImageDraw, cx: int, y_lo: int, y_hi: int, colour: Colour) -> None:
    """Vertical whisker from y_hi to y_lo (pixel rows) with caps on both rows."""
    top, bottom = min(y_lo, y_hi), max(y_lo, y_hi)
    draw.rectangle(
        (cx - BAR_WIDTH // 2, top, cx - BAR_WIDTH // 2 + BAR_WIDTH - 1, bottom), fill=colour
    )
    _hbar(draw, cx - CAP_HALF, cx + CAP_HALF, y_lo, colour)
    _hbar(draw, cx - CAP_HALF, cx + CAP_HALF, y_hi, colour)


def _dashed_hline(
    draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, colour: Colour, dash: int = 8, gap: int = 5
) -> None:
    x = x0
    while x <= x1:
        draw.line((x, y, min(x + dash - 1, x1), y), fill=colour, width=1)
        x += dash + gap


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _annotate(
    draw: ImageDraw.ImageDraw,
    note: str,
    cx: int,
    cy: int,
    box: Box,
    occupied: Sequence[Box],
    font: Any,
) -> Box:
    """Write `note` beside the marker at (cx, cy) where it stays in the plot area and covers
    the fewest drawn things: right, left, above, then below. Returns the text's box.

    Why: neighbouring points and reference-line labels would otherwise be overwritten.
    """
    gap = MARKER_R + 5
    candidates = (
        ((cx + gap, cy), "lm"),
        ((cx - gap, cy), "rm"),
        ((cx, cy - gap + 1), "md"),
        ((cx, cy + gap - 1), "ma"),
    )
    best: tuple[int, Box, tuple[int, int], str] | None = None
    for pos, anchor in candidates:
        bb = tuple(int(v) for v in draw.textbbox(pos, note, font=font, anchor=anchor))
        inside = bb[0] >= box[0] + 2 and bb[2] <= box[2] - 2 and bb[1] >= box[1] + 2
        inside = inside and bb[3] <= box[3] - 2
        cost = sum(_overlaps(bb, o) for o in occupied) + (0 if inside else 100)
        if best is None or cost < best[0]:
            best = (cost, bb, pos, anchor)  # type: ignore[assignment]
        if cost == 0:
            break
    assert best is not None
    _, bb, pos, anchor = best
    draw.text(pos, note, fill=GREY, font=font, anchor=anchor)
    return bb


def line_plot(
    series: Sequence[Mapping[str, Any]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    xlim: tuple[float, float] | None = None,
    hlines: Sequence[tuple[float, str]] = (),
    size: tuple[int, int] = SIZE,
) -> tuple[Image.Image, Layout]:
    """Draw the plot in memory (see `line_plot_png`); returns the image and its `Layout`.

    Why separate: a figure of several panels pastes these images side by side before saving.
    """
    w, h = size
    box: Box = (MARGINS[0], MARGINS[1], w - MARGINS[2], h - MARGINS[3])
    left, top, right, bottom = box
    pts = [p for s in series for p in s["points"]]
    if xlim is None:
        xlim = auto_limits(p[0] for p in pts)
    if ylim is None:
        ys = [v for p in pts for v in (p[1], p[2], p[3]) if v is not None]
        ylim = auto_limits([*ys, *(y for y, _ in hlines)])
    xlim = (float(xlim[0]), float(xlim[1]))
    ylim = (float(ylim[0]), float(ylim[1]))

    def to_px(x: float, y: float) -> tuple[int, int]:
        px, py = data_to_pixel(x, y, box=box, xlim=xlim, ylim=ylim)
        return round(px), round(py)

    img = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(img)
    f_title, f_label, f_tick, f_small = load_font(20), load_font(16), load_font(14), load_font(12)

    # grid and ticks
    xstep, ystep = nice_step(xlim[1] - xlim[0]), nice_step(ylim[1] - ylim[0])
    for xv in nice_ticks(*xlim):
        px, _ = to_px(xv, ylim[0])
        draw.line((px, top, px, bottom), fill=GRID)
        draw.line((px, bottom, px, bottom + 6), fill=BLACK, width=1)
        draw.text((px, bottom + 9), tick_label(xv, xstep), fill=BLACK, font=f_tick, anchor="mt")
    for yv in nice_ticks(*ylim):
        _, py = to_px(xlim[0], yv)
        draw.line((left, py, right, py), fill=GRID)
        draw.line((left - 6, py, left, py), fill=BLACK, width=1)
        draw.text((left - 9, py), tick_label(yv, ystep), fill=BLACK, font=f_tick, anchor="rm")
    draw.rectangle(box, outline=BLACK, width=1)

    # title, axis labels (the y label rotated onto its own small image)
    draw.text(((left + right) // 2, top // 2), title, fill=BLACK, font=f_title, anchor="mm")
    draw.text(((left + right) // 2, h - 14), xlabel, fill=BLACK, font=f_label, anchor="md")
    tw, th = _text_size(draw, ylabel, f_label)
    label_img = Image.new("RGB", (tw + 4, th + 8), WHITE)
    ImageDraw.Draw(label_img).text((2, 2), ylabel, fill=BLACK, font=f_label)
    label_img = label_img.rotate(90, expand=True)
    img.paste(label_img, (10, (top + bottom) // 2 - label_img.height // 2))

    # reference lines: dashed, labelled at the right end just above the line
    occupied: list[Box] = []
    for yv, label in hlines:
        _, py = to_px(xlim[0], yv)
        _dashed_hline(draw, left + 1, right - 1, py, GREY)
        occupied.append((left, py - 1, right, py + 1))  # so annotations avoid crossing it
        tw, th = _text_size(draw, label, f_small)
        draw.text((right - 6, py - 3), label, fill=GREY, font=f_small, anchor="rb")
        occupied.append((right - 6 - tw, py - 3 - th - 2, right - 6, py))

    # series: error bars first, then lines and markers on top, then annotations
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        marker = MARKERS[i % len(MARKERS)]
        centres = [to_px(p[0], p[1]) for p in s["points"]]
        for (x, _, lo, hi), (cx, _cy) in zip(s["points"], centres, strict=True):
            if lo is not None and hi is not None:
                _error_bar(draw, cx, to_px(x, lo)[1], to_px(x, hi)[1], colour)
                occupied.append((cx - CAP_HALF, to_px(x, hi)[1], cx + CAP_HALF, to_px(x, lo)[1]))
        if s.get("line") and len(centres) > 1:
            draw.line(centres, fill=colour, width=2)
        for cx, cy in centres:
            _marker(draw, marker, cx, cy, colour)
            occupied.append(
                (cx - MARKER_R - 1, cy - MARKER_R - 1, cx + MARKER_R + 1, cy + MARKER_R)
            )
    for s in series:
        for note, (x, y, *_) in zip(s.get("annotations") or (), s["points"], strict=False):
            if note:
                cx, cy = to_px(x, y)
                occupied.append(_annotate(draw, note, cx, cy, box, occupied, f_small))

    # legend: in whichever inner corner covers the fewest drawn things
    if series:
        rows = [str(s["label"]) for s in series]
        row_h = 22
        text_w = max(_text_size(draw, r, f_tick)[0] for r in rows)
        lw, lh = 40 + text_w + 12, row_h * len(rows) + 10
        corners = [
            (left + 10, top + 10),
            (right - 10 - lw, top + 10),
            (left + 10, bottom - 10 - lh),
            (right - 10 - lw, bottom - 10 - lh),
        ]
        lx, ly = min(
            corners,
            key=lambda c: sum(_overlaps((c[0], c[1], c[0] + lw, c[1] + lh), o) for o in occupied),
        )
        draw.rectangle((lx, ly, lx + lw, ly + lh), fill=WHITE, outline=GREY, width=1)
        for i, row in enumerate(rows):
            colour = COLOURS[i % len(COLOURS)]
            cy = ly + 5 + row_h * i + row_h // 2
            if series[i].get("line"):
                draw.line((lx + 8, cy, lx + 32, cy), fill=colour, width=2)
            _marker(draw, MARKERS[i % len(MARKERS)], lx + 20, cy, colour)
            draw.text((lx + 40, cy), row, fill=BLACK, font=f_tick, anchor="lm")

    return img, Layout(box=box, xlim=xlim, ylim=ylim, size=size)


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write `img` as an optimised PNG to a temporary name beside `path`, then rename it.

    Why: a reader (or a crashed run) never sees a half-written figure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        img.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def line_plot_png(
    series: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    hlines: Sequence[tuple[float, str]] = (),
    xlim: tuple[float, float] | None = None,
    size: tuple[int, int] = SIZE,
) -> Layout:
    """Plot `series` (module docstring) with dashed `hlines` ((y, label) pairs) to a PNG file.

    Limits not given are widened from the data to whole nice steps. Returns the `Layout`, so a
    caller or a test can find any data point's pixel with `data_to_pixel`.
    """
    img, layout = line_plot(
        series,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        ylim=ylim,
        xlim=xlim,
        hlines=hlines,
        size=size,
    )
    save_png(img, path)
    return layout

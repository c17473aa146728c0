"""Pillow plots: the data-to-pixel mapping and nice ticks by hand, then pixels of a written PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from llmcxr_jax.eval.plots import (
    CAP_HALF,
    COLOURS,
    MARGINS,
    SIZE,
    auto_limits,
    data_to_pixel,
    line_plot_png,
    nice_step,
    nice_ticks,
    tick_label,
)

ROOT = Path(__file__).resolve().parents[1]
WHITE = (255, 255, 255)


def test_data_to_pixel_hand_computed():
    box, xlim, ylim = (100, 50, 900, 450), (0.0, 10.0), (0.5, 1.0)
    m = lambda x, y: data_to_pixel(x, y, box=box, xlim=xlim, ylim=ylim)
    assert m(0.0, 0.5) == pytest.approx((100, 450))  # lower-left corner of the box
    assert m(10.0, 1.0) == pytest.approx((900, 50))  # upper-right corner
    assert m(2.5, 0.6) == pytest.approx((300, 370))  # 100 + 0.25*800, 450 - 0.2*400
    assert m(5.0, 0.75) == pytest.approx((500, 250))
    assert m(12.0, 0.4) == pytest.approx((1060, 530))  # outside the limits: extrapolates


@pytest.mark.parametrize(
    ("lo", "hi", "step"),
    [
        (0.5, 0.9, 0.1),  # span 0.4 / 6 = 0.067 -> 0.1
        (0.45, 0.95, 0.1),  # 0.5 / 6 = 0.083 -> 0.1
        (7.3, 27.5, 5.0),  # 20.2 / 6 = 3.4 -> 5
        (0.0, 1.0, 0.2),  # 0.167 -> 0.2
        (0.0, 100.0, 20.0),  # 16.7 -> 20
        (0.0, 3.0, 0.5),  # exactly 0.5: 0.5 is allowed
        (0.0, 6.0, 1.0),  # exactly 1
        (-3.0, 4.0, 2.0),  # 1.17 -> 2
        (0.001, 0.004, 0.0005),
    ],
)
def test_nice_step(lo, hi, step):
    assert nice_step(hi - lo) == pytest.approx(step)


def test_nice_ticks_and_labels():
    assert nice_ticks(0.5, 0.9) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert nice_ticks(0.45, 0.95) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert nice_ticks(5.0, 30.0) == [5, 10, 15, 20, 25, 30]
    assert nice_ticks(-3.0, 4.0) == [-2, 0, 2, 4]
    assert [tick_label(v, 0.1) for v in nice_ticks(0.5, 0.9)] == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    assert nice_ticks(0.5, 0.7) == [0.5, 0.55, 0.6, 0.65, 0.7]  # 0.2 / 6 = 0.033 -> 0.05
    assert [tick_label(v, 0.05) for v in nice_ticks(0.5, 0.6)][:2] == ["0.50", "0.52"]  # 0.02
    assert [tick_label(v, 0.05) for v in nice_ticks(0.5, 0.7)][:2] == ["0.50", "0.55"]
    assert tick_label(10.0, 5.0) == "10"
    assert tick_label(0.0015, 0.0005) == "0.0015"
    assert auto_limits([7.3, 27.5]) == pytest.approx((5.0, 30.0))
    assert auto_limits([0.729, 0.848]) == pytest.approx((0.72, 0.86))  # step 0.02
    with pytest.raises(ValueError):
        nice_step(0.0)


def test_png_points_and_error_bar_pixels(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")  # replaced, not appended to
    series = [
        {"label": "A", "points": [(2.0, 0.3, None, None), (7.0, 0.5, 0.35, 0.73)]},
        {"label": "B", "points": [(4.0, 0.9, None, None)], "line": True},
    ]
    layout = line_plot_png(
        series,
        path,
        title="t",
        xlabel="x",
        ylabel="y",
        xlim=(0, 10),
        ylim=(0, 1),
        hlines=[(0.8, "bar")],
    )
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == SIZE == (900, 560)
        img = im.convert("RGB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no temp file left

    # plot area: x 92..876 (784 px wide), y 52..494 (442 px high)
    assert layout.box == (MARGINS[0], MARGINS[1], 900 - MARGINS[2], 560 - MARGINS[3])
    assert layout.box == (92, 52, 876, 494)
    m = lambda x, y: data_to_pixel(x, y, box=layout.box, xlim=layout.xlim, ylim=layout.ylim)
    assert m(2.0, 0.3) == pytest.approx((92 + 0.2 * 784, 494 - 0.3 * 442))  # (248.8, 361.4)

    blue, vermillion = COLOURS[0], COLOURS[1]
    assert img.getpixel((249, 361)) == blue  # (2, 0.3)
    assert img.getpixel((406, 96)) == vermillion  # (4, 0.9): 92 + 313.6, 494 - 397.8
    assert img.getpixel((330, 200)) == WHITE  # nothing drawn there

    # error bar of (7, 0.5, lo 0.35, hi 0.73): x 92 + 548.8 -> 641;
    # lo row 494 - 154.7 -> 339, hi row 494 - 322.66 -> 171
    cx, y_lo, y_hi = 641, 339, 171
    assert round(m(7.0, 0.35)[1]) == y_lo and round(m(7.0, 0.73)[1]) == y_hi
    for y in (y_lo, y_hi):
        for x in (cx - CAP_HALF, cx + CAP_HALF):
            assert img.getpixel((x, y)) == blue, (x, y)  # cap ends
        assert img.getpixel((cx + CAP_HALF, y - 3)) == WHITE  # just above the cap
        assert img.getpixel((cx + CAP_HALF + 2, y)) == WHITE  # just past the cap's end
    assert img.getpixel((cx, (y_lo + 281) // 2)) == blue  # whisker, between marker and lo cap
    assert img.getpixel((cx + CAP_HALF, (y_lo + y_hi) // 2 + 30)) == WHITE  # no cap mid-bar

    # dashed reference line at 0.8 -> row 494 - 353.6 -> 140: grey dashes, not solid
    row = [img.getpixel((x, 140)) for x in range(300, 400)]
    assert any(p == (110, 110, 110) for p in row) and any(p != (110, 110, 110) for p in row)


def _script():
    spec = importlib.util.spec_from_file_location(
        "learning_curve", ROOT / "scripts" / "learning_curve.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_learning_curve_series_from_demo_runs():
    mod = _script()
    runs = json.loads((ROOT / "docs" / "demo_runs.json").read_text())
    assert len(runs) == 6
    c2r = mod.series_for(runs, "cxr_to_report")
    assert [s["label"] for s in c2r] == ["2-core Intel Xeon", "2-core AMD EPYC"]
    assert [p[0] for p in c2r[0]["points"]] == [7.3, 9.2, 14.5]  # sorted by minutes
    assert c2r[1]["points"][-1] == (27.5, 0.770, 0.714, 0.834)
    assert c2r[1]["points"][0][2:] == (None, None)
    assert not c2r[0]["line"]
    assert c2r[1]["annotations"] == ["10 ep", "10 ep, shared", "15 ep, grey"]
    r2c = mod.series_for(runs, "report_to_cxr")
    assert r2c[1]["points"][-1] == (27.5, 0.816, 0.758, 0.870)
    assert mod.draw(runs).size == (2 * SIZE[0], SIZE[1] + 30)

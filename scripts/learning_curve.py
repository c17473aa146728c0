"""Plot the demo's measured runs as a learning curve: docs/demo_runs.json -> learning_curve.png.

Why: the demo's micro AUROC (both directions) against the minutes of LM stage-1 training shows
at a glance how far each run is from the 0.80 bar and from chance, and that the two 2-core
machine kinds differ. The runs' configurations differ too (VQ-GAN, epochs), so points are not
joined; each carries its epoch count. Error bars are the 95% bootstrap intervals, where a run
measured them.

    .venv/bin/python scripts/learning_curve.py [--runs docs/demo_runs.json]
        [--out docs/learning_curve.png]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from llmcxr_jax.eval.plots import SIZE, line_plot, load_font, save_png

MACHINES = ("2-core Intel Xeon", "2-core AMD EPYC")
PANELS = (
    ("cxr_to_report", "CXR-to-report: micro AUROC"),
    ("report_to_cxr", "Report-to-CXR: micro AUROC"),
)
HLINES = ((0.80, "bar 0.80"), (0.5, "chance 0.5"))
YLIM = (0.45, 0.95)
XLABEL = "LM stage-1 training minutes"
FOOTNOTE = (
    "One point per demo run; configurations differ (VQ-GAN, epochs), so points are not joined. "
    "Error bars: 95% bootstrap interval, where measured."
)


def note(config: str) -> str:
    """Short label beside a marker: the epoch count, plus what else set the run apart."""
    m = re.search(r"(\d+)\s*epochs?", config)
    parts = [f"{m.group(1)} ep" if m else config]
    if "grey" in config:
        parts.append("grey")
    if "shared" in config:
        parts.append("shared")
    return ", ".join(parts)


def series_for(runs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One unjoined series per machine kind, in MACHINES order, of (minutes, AUROC, lo, hi)."""
    out = []
    for machine in MACHINES:
        mine = sorted((r for r in runs if r["machine"] == machine), key=lambda r: r["lm_minutes"])
        mine = [r for r in mine if r.get(key) is not None]
        if not mine:
            continue
        points = []
        for r in mine:
            ci = r.get(f"{key}_ci") or (None, None)
            points.append((r["lm_minutes"], r[key], ci[0], ci[1]))
        out.append(
            {
                "label": machine,
                "points": points,
                "line": False,
                "annotations": [note(r["config"]) for r in mine],
            }
        )
    return out


def draw(runs: list[dict[str, Any]]) -> Image.Image:
    """Both panels side by side, with a footnote strip below."""
    panels = [
        line_plot(
            series_for(runs, key),
            title=title,
            xlabel=XLABEL,
            ylabel="micro AUROC",
            ylim=YLIM,
            hlines=HLINES,
        )[0]
        for key, title in PANELS
    ]
    w, h = SIZE
    foot = 30
    fig = Image.new("RGB", (w * len(panels), h + foot), (255, 255, 255))
    for i, panel in enumerate(panels):
        fig.paste(panel, (i * w, 0))
    ImageDraw.Draw(fig).text(
        (fig.width // 2, h + foot // 2 - 4),
        FOOTNOTE,
        fill=(80, 80, 80),
        font=load_font(14),
        anchor="mm",
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="docs/demo_runs.json")
    ap.add_argument("--out", default="docs/learning_curve.png")
    args = ap.parse_args()
    runs = json.loads(Path(args.runs).read_text(encoding="utf-8"))
    # few colours in a plot: a palette image is a fraction of the RGB file's size
    fig = draw(runs).quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = save_png(fig, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

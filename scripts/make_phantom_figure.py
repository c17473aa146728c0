"""Draw the README figure of the embedded CXR phantoms: docs/phantoms.png.

Why: the phantom data set replaces real chest X-rays in the demo, so readers should see what it
looks like. One patient's anatomy (same seed) is shown normal and with each finding, at its
sides and severities, so the differences are the findings' alone; two other patients show the
variation between cases. Pixel noise is turned off (the data set has 1-3%) and the grid is
stored as a 64-level grey PNG of 224 px tiles, to keep the file under 150 KB.

    .venv/bin/python scripts/make_phantom_figure.py [--out docs/phantoms.png] [--res 224]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from llmcxr_jax.data import phantoms
from llmcxr_jax.data.phantoms import Finding

PANELS: tuple[tuple[str, tuple[Finding, ...], int], ...] = (
    ("normal (PA)", (), 0),
    ("normal, another patient", (), 5),
    ("cardiomegaly, mild", (Finding("cardiomegaly", severity="mild"),), 0),
    ("cardiomegaly, severe", (Finding("cardiomegaly", severity="severe"),), 0),
    ("effusion R, small", (Finding("pleural_effusion", "right", severity="small"),), 0),
    ("effusion L, large", (Finding("pleural_effusion", "left", severity="large"),), 0),
    (
        "effusions, bilat. moderate",
        (Finding("pleural_effusion", "bilateral", None, "moderate"),),
        0,
    ),
    ("pneumothorax R, moderate", (Finding("pneumothorax", "right", severity="moderate"),), 0),
    ("pneumothorax L, large", (Finding("pneumothorax", "left", severity="large"),), 0),
    ("consolidation RLL, severe", (Finding("consolidation", "right", "lower", "severe"),), 0),
    ("consolidation LUL, moderate", (Finding("consolidation", "left", "upper", "moderate"),), 0),
    ("edema, moderate", (Finding("edema", severity="moderate"),), 0),
    (
        "CHF: heart + edema + effusions",
        (
            Finding("cardiomegaly", severity="moderate"),
            Finding("pleural_effusion", "bilateral", None, "small"),
            Finding("edema", severity="severe"),
        ),
        0,
    ),
    ("nodule R upper", (Finding("lung_lesion", "right", "upper", "small"),), 0),
    ("mass L lower", (Finding("lung_lesion", "left", "lower", "large"),), 0),
    ("normal (AP), third patient", (), 11),
)


def draw(res: int, ncols: int = 4, caption: int = 20, pad: int = 4) -> Image.Image:
    """The labelled grid as a grey PIL image."""
    tiles = []
    for i, (_, findings, seed) in enumerate(PANELS):
        case = phantoms.make_case(findings, seed=seed, air_bronchograms=True)
        case = dataclasses.replace(case, noise=0.0, view="AP" if "(AP)" in PANELS[i][0] else "PA")
        tiles.append(phantoms.render(case, res, np.random.default_rng(i)))
    nrows = -(-len(tiles) // ncols)
    w, h = ncols * res + (ncols - 1) * pad, nrows * (res + caption) + (nrows - 1) * pad
    grid = Image.new("L", (w, h), 255)
    pen = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(10, caption - 6))
    for i, (tile, (label, _, _)) in enumerate(zip(tiles, PANELS, strict=True)):
        r, c = divmod(i, ncols)
        x, y = c * (res + pad), r * (res + caption + pad)
        grid.paste(Image.fromarray(tile, "L"), (x, y))
        pen.text((x + res // 2, y + res + caption // 2), label, fill=0, font=font, anchor="mm")
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/phantoms.png")
    ap.add_argument("--res", type=int, default=224)
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 64 grey levels compress far better and look the same at this size
    grid = draw(args.res).point(lambda x: (x // 4) * 4 + 2 if x < 252 else 255)
    grid.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

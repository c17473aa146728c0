"""Random-access sources of images (Grain's data-source protocol: `len` and `[i]`).

Each record is a dict with `id` (str, stable across runs), `image` (float32 [res, res, 3] in
[-1, 1]) and, where the source has them, `labels` (float32 [num_labels], 1 = present). A file
that cannot be used does not stop a run: its record carries `error` (naming the file and the
reason) and no image, and consumers count and report it.

- `FolderSource`: every JPEG/PNG/DICOM under a directory (ids: paths relative to it), sorted.
- `SyntheticSource`: labelled procedural images for tests and smoke runs.
- `PhantomImageSource` (`phantoms:N[:SEED]`): the embedded phantom chest X-rays (data/phantoms/),
  with labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from llmcxr_jax.data import images, phantoms
from llmcxr_jax.data.labels import PAPER_CLASSES, POSITIVE, paper_labels
from llmcxr_jax.errors import InputError, MissingInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm", ".dicom")


class FolderSource:
    def __init__(self, root: str | os.PathLike, resolution: int, *, allow_upscale: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingInputError(f"{root}: no such directory")
        self.paths = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise MissingInputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.resolution = resolution
        self.allow_upscale = allow_upscale
        self.num_labels = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        rid = str(path.relative_to(self.root))
        try:
            image = images.load_cxr(path, self.resolution, allow_upscale=self.allow_upscale)
        except images.ImageError as e:
            return {"id": rid, "error": str(e)}
        return {"id": rid, "image": image}


class SyntheticSource:
    """Grey discs on a noisy background; label k says whether disc k is drawn.

    Deterministic per (seed, index). Enough structure for a VQ-GAN to learn and for a classifier
    to separate, in a few hundred steps on a CPU.
    """

    def __init__(self, size: int, resolution: int, *, num_labels: int = 3, seed: int = 0):
        self.size, self.resolution, self.num_labels, self.seed = size, resolution, num_labels, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        r = self.resolution
        yy, xx = np.mgrid[0:r, 0:r] / r
        img = 0.15 * rng.standard_normal((r, r)) - 0.6
        labels = (rng.random(self.num_labels) < 0.5).astype(np.float32)
        for k in range(self.num_labels):
            if labels[k]:
                # disc k lives in its own sector, so labels are visually separable
                angle = 2 * np.pi * k / self.num_labels
                cy, cx = 0.5 + 0.28 * np.sin(angle), 0.5 + 0.28 * np.cos(angle)
                radius = 0.1 + 0.03 * rng.random()
                img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, 0.8, img)
        img = np.clip(img, -1, 1).astype(np.float32)
        return {
            "id": f"synthetic-{self.seed}-{i:07d}",
            "image": np.repeat(img[..., None], 3, axis=-1),
            "labels": labels,
        }


class PhantomImageSource:
    """Grain random-access source of phantom films with the paper's six classes as labels.

    Record i is `phantoms.generate(offset + i, seed=seed)`: image float32 [res, res, 3] in
    [-1, 1] (`x / 127.5 - 1`, grey repeated, as `images.preprocess`), labels float32 [6] over
    `labels.PAPER_CLASSES`, 1.0 where the report's label is positive, else 0.0 (uncertain
    counts as 0, "U-zeros").
    """

    num_labels = len(PAPER_CLASSES)

    def __init__(
        self,
        size: int,
        resolution: int,
        *,
        seed: int = 0,
        offset: int = 0,
        sampler: phantoms.CaseSampler | None = None,
    ):
        if size < 0 or offset < 0:
            raise InputError(f"size and offset must be >= 0, got {size}, {offset}")
        self.size, self.resolution, self.seed, self.offset = size, resolution, seed, offset
        self.sampler = sampler

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(i)
        r = phantoms.generate(
            self.offset + i, seed=self.seed, resolution=self.resolution, sampler=self.sampler
        )
        grey = r["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        paper = paper_labels(r["labels"])
        return {
            "id": r["id"],
            "image": np.repeat(grey[:, :, None], 3, axis=2),
            "labels": (paper == POSITIVE).astype(np.float32),
        }


class CachedSource:
    """Keeps every record it has served (in memory): a second epoch reads instead of decoding or
    rendering again. For small data sets (the demo's 2,400 phantoms at 64x64 are 118 MB)."""

    def __init__(self, source: Any):
        self.source = source
        self.num_labels = getattr(source, "num_labels", 0)
        self._records: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self._records.get(i)
        if record is None:
            record = self._records[i] = self.source[i]
        return record


def from_config(data: ml_collections.ConfigDict, resolution: int) -> Any:
    """The source of a training config's `data` (`source`, `allow_upscale`, `cache_in_memory`)."""
    kwargs = {}
    if data.source.startswith("folder:"):
        kwargs["allow_upscale"] = bool(data.get("allow_upscale", False))
    source = make_source(data.source, resolution, **kwargs)
    return CachedSource(source) if data.get("cache_in_memory") else source


def make_source(spec: str, resolution: int, **kwargs: Any):
    """A source from a short spec: `folder:/path`, `synthetic:N` (N images)."""
    kind, _, arg = spec.partition(":")

    def count(text: str, default: int) -> int:
        try:
            return int(text or default)
        except ValueError:
            raise InputError(f"image source {spec!r}: {text!r} is not a whole number") from None

    if kind == "folder":
        return FolderSource(arg, resolution, **kwargs)
    if kind == "synthetic":
        return SyntheticSource(count(arg, 1024), resolution, **kwargs)
    if kind == "phantoms":  # phantoms:N or phantoms:N:SEED (the embedded data set's images)
        size, _, seed = arg.partition(":")
        return PhantomImageSource(count(size, 2000), resolution, seed=count(seed, 0))
    raise InputError(f"unknown image source {spec!r}; use folder:DIR, phantoms:N or synthetic:N")

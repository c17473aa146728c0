"""The embedded CXR phantom data set (data/phantoms/) as a TFDS builder of the shared schema.

Why: MIMIC-CXR is credentialed and Open-i may not be redistributed, so the demo, the tests and
smoke runs need data that can be made anywhere with no download: procedural chest X-ray
phantoms with reports and ground-truth labels. Preparing them through TFDS like the real data
sets means the rest of the pipeline cannot tell the difference.

Configs by resolution: `64` (the demo; default sizes train 2000 / validate 200 / test 400) and
`256` (the VQ-GAN's resolution; train 500 / validate 50 / test 100). Images are always stored.
Builder kwargs: `seed` (default 0), `train_size`, `validate_size`, `test_size` (default: the
config's), `codes_dir` (codes looked up by phantom id). Split index ranges are disjoint and in
order: train [0, n), validate [n', n' + m), test [m', m' + k), where n' is n moved forward past
the rest of the studies of the patient at index n - 1 (the generator gives a patient up to
three consecutive indices), so that no patient is in two splits; m' likewise. Growing a split
never changes the records of the splits before it. The kwargs are not part of the prepared
data's path: prepare different sizes or seeds into different data dirs.
Records: label_source "ground_truth", details the generator's finding details (JSON),
image_path "".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from llmcxr_jax.data.tfds import common
from llmcxr_jax.errors import InputError, positive_int


class CxrPhantoms(common.CxrBuilder):
    """Synthetic chest X-ray phantoms with reports and ground-truth labels."""

    BUILDER_CONFIGS = [
        common.CxrConfig(
            name="64",
            resolution=64,
            split_sizes=(("train", 2000), ("validate", 200), ("test", 400)),
            description="64x64 phantoms (the demo).",
        ),
        common.CxrConfig(
            name="256",
            resolution=256,
            split_sizes=(("train", 500), ("validate", 50), ("test", 100)),
            description="256x256 phantoms (the VQ-GAN resolution).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "64"
    DESCRIPTION = "Procedural chest X-ray phantoms with reports and ground-truth labels."

    def __init__(
        self,
        *,
        seed: int = 0,
        train_size: int | None = None,
        validate_size: int | None = None,
        test_size: int | None = None,
        **kwargs: Any,
    ):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
        self.seed = seed
        sizes = {"train": train_size, "validate": validate_size, "test": test_size}
        self._sizes = {
            split: None if n is None else positive_int(n, f"{split}_size")
            for split, n in sizes.items()
        }
        super().__init__(**kwargs)

    def _subject(self, index: int) -> str:
        from llmcxr_jax.data import phantoms

        # the patient does not depend on the resolution: ask at a tiny one, it is cheap
        return str(phantoms.generate(index, seed=self.seed, resolution=16)["subject_id"])

    def split_ranges(self) -> dict[str, range]:
        """Index range of each split: disjoint, in order, no patient in two splits."""
        defaults = dict(self.builder_config.split_sizes)
        ranges, start = {}, 0
        for split in self.SPLITS:
            n = self._sizes[split] if self._sizes[split] is not None else defaults[split]
            while start > 0 and self._subject(start) == self._subject(start - 1):
                start += 1  # the previous split's last patient has more studies: skip them
            ranges[split] = range(start, start + n)
            start += n
        return ranges

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # nothing to download
        ranges = self.split_ranges()
        codes = self._load_codes()
        skips = self._start_skips(list(ranges))
        return self._non_empty(
            {
                s: self._generate_examples(split=s, indices=r, codes=codes, skips=skips)
                for s, r in ranges.items()
            }
        )

    def _generate_examples(
        self,
        *,
        split: str,
        indices: range,
        codes: common.Codes | None,
        skips: common.SkipLog,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from llmcxr_jax.data import phantoms

        assert self.resolution is not None
        for i in indices:
            r = phantoms.generate(i, seed=self.seed, resolution=self.resolution)
            pid = str(r["id"])
            if (
                not str(r.get("findings") or "").strip()
                and not str(r.get("impression") or "").strip()
            ):
                skips.skip(split, "empty_report", pid, "no FINDINGS and no IMPRESSION")
                continue
            rec_codes = None
            if codes is not None:
                rec_codes, reason = codes.lookup(pid)
                if reason:
                    skips.skip(split, reason, pid)
                    continue
            yield (
                pid,
                common.make_record(
                    id=pid,
                    subject_id=r.get("subject_id", pid),
                    study_id=r.get("study_id", pid),
                    view=str(r.get("view", "")).upper(),
                    study_datetime=r.get("study_datetime", ""),
                    findings=r.get("findings", ""),
                    impression=r.get("impression", ""),
                    report=r.get("report", ""),
                    labels=np.asarray(r["labels"], np.int8),
                    label_source="ground_truth",
                    details=r.get("details", "{}"),
                    image_path="",
                    codes=rec_codes,
                    image=common.png_bytes(np.asarray(r["image"], np.uint8)),
                ),
            )

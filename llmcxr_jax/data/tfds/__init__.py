"""TFDS builders for the CXR data sets, all in one record schema (`common.py`).

Importing this package registers the builders with TFDS, so prepared data can be opened by
name: `tfds.data_source("cxr_phantoms/64", data_dir=..., split="train")`.

- `mimic_cxr_jpg` (configs `paths`, `images256`): MIMIC-CXR-JPG + MIMIC-CXR reports, manual.
- `open_i` (configs `paths`, `images256`): Indiana University CXR (Open-i) archives, manual.
- `cxr_phantoms` (configs `64`, `256`): the embedded synthetic data set, no download.

`skip_counts(builder)` returns what preparation skipped, per split and reason.
"""

from llmcxr_jax.data.tfds.common import (
    SKIP_REASONS,
    CxrBuilder,
    CxrConfig,
    features,
    skip_counts,
)
from llmcxr_jax.data.tfds.cxr_phantoms import CxrPhantoms
from llmcxr_jax.data.tfds.mimic_cxr_jpg import MimicCxrJpg
from llmcxr_jax.data.tfds.open_i import OpenI

__all__ = [
    "SKIP_REASONS",
    "CxrBuilder",
    "CxrConfig",
    "CxrPhantoms",
    "MimicCxrJpg",
    "OpenI",
    "features",
    "skip_counts",
]

"""Procedural chest X-ray phantoms with radiology reports: the embedded default data set.

Why this package exists: MIMIC-CXR is credentialed and Open-i may not be redistributed, yet the
demo must train a VQ-GAN and an LLM, and evaluate them with the labeler and a CXR classifier, on
a 2-core CPU in minutes with no download. So the data are drawn here, deterministically from
(seed, index): frontal chest films whose findings change the picture the way they do on a real
film, and reports about them whose CheXpert labels are known exactly.

- `cases.py`: findings and cases, and how they are drawn (`sample_case`, `CaseSampler`,
  `make_case`);
- `render.py`: the film of a case (`render`, numpy only, a few ms at 256 px);
- `reports.py`: the report of a case and the labels it asserts (`write_report`, `full_report`);
- `dataset.py`: the records of the data set (`generate`): patients, study dates, views.

The films as a labelled image source (VQ-GAN and classifier training) are
`image_sources.PhantomImageSource` (`phantoms:N[:SEED]`).
"""

from llmcxr_jax.data.phantoms.cases import (
    AP_MAGNIFICATION,
    CTR_RANGES,
    DEFAULT_PREVALENCE,
    FINDING_NAMES,
    SEVERITIES,
    SIDES,
    ZONED,
    ZONES,
    Case,
    CaseSampler,
    Finding,
    cardiothoracic_ratio,
    make_case,
    random_finding,
    sample_anatomy,
    sample_case,
)
from llmcxr_jax.data.phantoms.dataset import generate
from llmcxr_jax.data.phantoms.render import render
from llmcxr_jax.data.phantoms.reports import full_report, write_report

__all__ = [
    "AP_MAGNIFICATION",
    "CTR_RANGES",
    "DEFAULT_PREVALENCE",
    "FINDING_NAMES",
    "SEVERITIES",
    "SIDES",
    "ZONED",
    "ZONES",
    "Case",
    "CaseSampler",
    "Finding",
    "cardiothoracic_ratio",
    "full_report",
    "generate",
    "make_case",
    "random_finding",
    "render",
    "sample_anatomy",
    "sample_case",
    "write_report",
]

"""The records of the phantom data set: `generate(index, seed=...)`, deterministic.

Indices come in blocks of three that belong to one to three patients, so about half the
patients have 2-3 studies on distinct dates (earliest-study selection is meaningful); 85% PA
views, 15% AP. A record holds ids, view, date, FINDINGS, IMPRESSION, the whole report, the
labels (int8 [14], `labels.py`), the findings' details (JSON) and the film (uint8).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import numpy as np

from llmcxr_jax.data.phantoms.cases import (
    CaseSampler,
    cardiothoracic_ratio,
    sample_anatomy,
    sample_case,
)
from llmcxr_jax.data.phantoms.render import render
from llmcxr_jax.data.phantoms.reports import full_report, write_report

_PARTITIONS = ((3,), (2, 1), (1, 2), (1, 1, 1))
_PARTITION_P = (0.3, 0.2, 0.2, 0.3)


def _subject(index: int, seed: int) -> tuple[int, int, int]:
    """(first index of the subject, number of its studies, position of `index` among them)."""
    block = index // 3
    parts = _PARTITIONS[int(np.random.default_rng([seed, block, 7]).choice(4, p=_PARTITION_P))]
    pos, start = index % 3, block * 3
    for n in parts:
        if pos < n:
            return start, n, pos
        pos -= n
        start += n
    raise AssertionError("unreachable")


def generate(
    index: int, *, seed: int = 0, resolution: int = 256, sampler: CaseSampler | None = None
) -> dict[str, Any]:
    """Record `index` of the phantom data set `seed` (deterministic in (seed, index))."""
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    sampler = sampler or CaseSampler()
    first, n_studies, pos = _subject(index, seed)
    srng = np.random.default_rng([seed, first, 1])
    anatomy = sample_anatomy(srng)
    base = datetime.datetime(2012, 1, 1) + datetime.timedelta(days=int(srng.integers(0, 8 * 365)))
    days = [0] + sorted(int(d) for d in srng.choice(np.arange(30, 1500), n_studies - 1, False))
    order = srng.permutation(n_studies)
    case_rng = np.random.default_rng([seed, index, 2])
    when = base + datetime.timedelta(
        days=days[int(order[pos])], seconds=int(case_rng.integers(6 * 3600, 22 * 3600))
    )
    case = sample_case(case_rng, sampler, anatomy=anatomy)
    image = render(case, resolution, np.random.default_rng([seed, index, 3]))
    report_rng = np.random.default_rng([seed, index, 4])
    findings, impression, labels = write_report(case, report_rng, hedge=sampler.hedge)
    details = {
        "findings": [dataclasses.asdict(f) for f in case.findings],
        "ctr": round(cardiothoracic_ratio(case), 3),
        "view": case.view,
    }
    return {
        "id": f"phantom-{seed}-{index:07d}",
        "subject_id": f"phantom-{seed}-p{first:07d}",
        "study_id": f"phantom-{seed}-s{index:07d}",
        "view": case.view,
        "study_datetime": when.strftime("%Y%m%dT%H%M%S"),
        "findings": findings,
        "impression": impression,
        "report": full_report(findings, impression, report_rng, case.view),
        "labels": labels,
        "details": json.dumps(details, sort_keys=True),
        "image": image,
    }
